"""Reads a turn's Redis stream (XREAD BLOCK) from a given entry id until the turn's terminal entry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import cast

import redis.asyncio as aioredis

from kitrelay.shared.messages import ENTRY_FIELD, TurnEntry, decode_entry
from kitrelay.shared.names import turn_stream_key

# What XREAD returns for one key with decode_responses off: [(key, [(entry id, {field: value})])].
XReadResponse = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class TurnTimeoutError(Exception):
    """No entry arrived in time: no worker took the turn (started=False), or the worker went quiet."""

    def __init__(self, turn_id: str, *, started: bool) -> None:
        super().__init__(f"turn {turn_id} {'went quiet' if started else 'was not picked up'}")
        self.started = started


async def read_turn(
    redis: aioredis.Redis,
    namespace: str,
    turn_id: str,
    *,
    after: str = "0-0",
    start_timeout_s: float,
    idle_timeout_s: float,
    block_ms: int,
) -> AsyncIterator[tuple[str, TurnEntry]]:
    """Yield (entry id, entry) in stream order. Entries of an attempt older than the newest seen are dropped:
    a redelivered turn supersedes what its dead attempt wrote."""
    key = turn_stream_key(namespace, turn_id)
    last_id = after
    started = False
    newest_attempt = 0
    deadline = time.monotonic() + start_timeout_s
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise TurnTimeoutError(turn_id, started=started)
        response = cast(
            XReadResponse, await redis.xread({key: last_id}, count=256, block=max(1, min(block_ms, remaining_ms)))
        )
        if not response:
            continue
        for raw_id, fields in response[0][1]:
            last_id = raw_id.decode()
            entry = decode_entry(fields[ENTRY_FIELD])
            if entry.attempt < newest_attempt:
                continue
            newest_attempt = entry.attempt
            yield last_id, entry
            if entry.is_terminal:
                return
        started = True
        deadline = time.monotonic() + idle_timeout_s
