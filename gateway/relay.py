"""Reads a turn's Redis stream (XREAD BLOCK) from a given entry id until the turn's terminal entry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kitrelay.shared.messages import ENTRY_FIELD, HandoffEntry, TurnEntry, decode_entry
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import AgentKind

log = logging.getLogger(__name__)

# What XREAD returns for one key with decode_responses off: [(key, [(entry id, {field: value})])].
XReadResponse = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class TurnTimeoutError(Exception):
    """No entry arrived in time: no worker of `waiting_for` took the turn, or (None) a running worker went quiet."""

    def __init__(self, turn_id: str, *, waiting_for: AgentKind | None, last_run: tuple[int, int]) -> None:
        what = f"was not picked up by a {waiting_for} worker" if waiting_for else "went quiet"
        super().__init__(f"turn {turn_id} {what}")
        self.waiting_for = waiting_for
        self.last_run = last_run


@dataclass(frozen=True)
class Timeouts:
    start_s: float  # until the first entry
    handoff_s: float  # after a handoff, until the next kind's first entry
    idle_s: float  # between two entries of a running worker
    block_ms: int


async def read_turn(
    redis: aioredis.Redis,
    namespace: str,
    turn_id: str,
    *,
    first_agent: AgentKind,
    timeouts: Timeouts,
    after: str = "0-0",
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[str, TurnEntry]]:
    """Yield (entry id, entry) in stream order, the terminal entry last.

    Entries of a run older than the newest seen are dropped: a redelivered (or handed-off) turn supersedes what
    an earlier run wrote. `on_tick` runs before every read (at least every `block_ms`). A Redis that goes away
    for a moment is waited for, within the same deadlines."""
    key = turn_stream_key(namespace, turn_id)
    last_id = after
    newest_run = (0, 0)
    waiting_for: AgentKind | None = first_agent
    if after != "0-0":
        # Resuming: the entry the client last saw tells which run it was following.
        seen = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(key, min=after, max=after))
        if seen:
            newest_run = decode_entry(seen[0][1][ENTRY_FIELD]).run
            waiting_for = None
    deadline = time.monotonic() + timeouts.start_s
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise TurnTimeoutError(turn_id, waiting_for=waiting_for, last_run=newest_run)
        block = max(1, min(timeouts.block_ms, remaining_ms))
        try:
            if on_tick is not None:
                await on_tick()
            response = cast(XReadResponse, await redis.xread({key: last_id}, count=256, block=block))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("reading turn %s: %s; retrying", turn_id, exc)
            await asyncio.sleep(0.5)
            continue
        if not response:
            continue
        for raw_id, fields in response[0][1]:
            last_id = raw_id.decode()
            entry = decode_entry(fields[ENTRY_FIELD])
            if entry.run < newest_run:
                continue
            newest_run = entry.run
            yield last_id, entry
            if entry.is_terminal:
                return
            if isinstance(entry.body, HandoffEntry):
                waiting_for = entry.body.to
                deadline = time.monotonic() + timeouts.handoff_s
            else:
                waiting_for = None
                deadline = time.monotonic() + timeouts.idle_s
