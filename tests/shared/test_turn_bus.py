"""A turn's claims on real Redis: a worker run opens the turn unless it is over or another run has it, and the
gateway gives a turn up only where no worker runs it. The two are one step each, so they cannot both win."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import HandoffEntry, TurnEnd, TurnEntry
from kitrelay.shared.names import thread_active_key, turn_stream_key
from kitrelay.shared.turn_bus import append_entry, claim_thread, give_up_turn, last_entry, open_run

TTL_S = 60


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _end(turn_id: str, hop: int = 1) -> TurnEntry:
    return TurnEntry(turn_id=turn_id, hop=hop, attempt=1, seq=0, body=TurnEnd(status="failed", error="given up"))


async def _give_up(redis: aioredis.Redis, ns: str, turn_id: str, *, hop: int | None, thread_id: str = "thr") -> bool:
    return await give_up_turn(
        redis, ns, _end(turn_id), thread_id=thread_id, unless_running_hop=hop, ttl_s=TTL_S, closed_ttl_s=TTL_S
    )


async def test_a_run_opens_a_new_turn_and_a_newer_attempt_takes_it_over(
    redis: aioredis.Redis, unique_namespace: str
) -> None:
    ns, turn = unique_namespace, new_id("turn")
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "open"
    assert await open_run(redis, ns, turn, hop=0, attempt=2, ttl_s=TTL_S) == "open"
    # The first attempt, late (a duplicate delivery still in flight), finds a newer one running.
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "stale"


async def test_a_hop_that_handed_on_finds_the_next_hop_running(redis: aioredis.Redis, unique_namespace: str) -> None:
    ns, turn = unique_namespace, new_id("turn")
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "open"
    await append_entry(
        redis, ns, TurnEntry(turn_id=turn, hop=0, attempt=1, seq=0, body=HandoffEntry(to="task")), ttl_s=TTL_S
    )
    assert await open_run(redis, ns, turn, hop=1, attempt=1, ttl_s=TTL_S) == "open"
    # Hop 0's message lost its ack: its redelivery must not run triage again.
    assert await open_run(redis, ns, turn, hop=0, attempt=2, ttl_s=TTL_S) == "later"


async def test_a_turn_that_ended_is_over_for_any_run(redis: aioredis.Redis, unique_namespace: str) -> None:
    ns, turn = unique_namespace, new_id("turn")
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "open"
    await append_entry(redis, ns, _end(turn, hop=0), ttl_s=TTL_S)
    assert await open_run(redis, ns, turn, hop=0, attempt=2, ttl_s=TTL_S) == "over"


async def test_a_turn_given_up_before_any_run_never_opens(redis: aioredis.Redis, unique_namespace: str) -> None:
    ns, turn, thread = unique_namespace, new_id("turn"), new_id("thr")
    assert await claim_thread(redis, ns, thread, turn, ttl_s=TTL_S)
    assert await _give_up(redis, ns, turn, hop=0, thread_id=thread)
    last = await last_entry(redis, ns, turn)
    assert last is not None and last.is_terminal
    assert await redis.get(thread_active_key(ns, thread)) is None, "the thread is free for the next message"
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "over"
    # Even once the stream itself is gone (expired, or Redis lost it), the closed run key still says so.
    await redis.delete(turn_stream_key(ns, turn))
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "over"


async def test_a_running_turn_is_not_given_up_unless_forced(redis: aioredis.Redis, unique_namespace: str) -> None:
    ns, turn = unique_namespace, new_id("turn")
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "open"
    assert not await _give_up(redis, ns, turn, hop=0), "hop 0 runs: not given up"
    assert await last_entry(redis, ns, turn) is None, "and nothing written"
    # Waiting for hop 1 (a handoff nobody took), hop 0's run does not count.
    assert await _give_up(redis, ns, turn, hop=1)


async def test_a_forced_end_ends_a_running_turn(redis: aioredis.Redis, unique_namespace: str) -> None:
    ns, turn = unique_namespace, new_id("turn")
    assert await open_run(redis, ns, turn, hop=0, attempt=1, ttl_s=TTL_S) == "open"
    assert await _give_up(redis, ns, turn, hop=None)
    assert await open_run(redis, ns, turn, hop=0, attempt=2, ttl_s=TTL_S) == "over"


async def test_a_give_up_and_a_run_racing_for_a_turn_never_both_win(
    redis: aioredis.Redis, unique_namespace: str
) -> None:
    for _ in range(50):
        turn = new_id("turn")
        opened, given_up = await asyncio.gather(
            open_run(redis, unique_namespace, turn, hop=0, attempt=1, ttl_s=TTL_S),
            _give_up(redis, unique_namespace, turn, hop=0),
        )
        assert (opened == "open") != given_up, (opened, given_up)
