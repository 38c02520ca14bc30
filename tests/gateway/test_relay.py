"""The stream hub and a turn's reader (TurnReader) against a real Redis: many turns read through one connection, a
new follower served at once (not after the hub's block), and the reader's semantics (resume, superseded runs,
deadlines, kept by the hub's ticks when no timer of the follower's own is armed)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from chatkit.types import ProgressUpdateEvent

from kitrelay.gateway.relay import HUB_BATCH, REDIS_RETRY_S, StreamHub, Timeouts, TurnReader, TurnTimeoutError
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, EntryView, HandoffEntry, TurnEnd, TurnEntry
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.turn_bus import append_entry
from tests.infra import cleanup_redis_namespace
from tests.polling import until

TIMEOUTS = Timeouts(start_s=5, handoff_s=5, idle_s=5, block_ms=200)


# The hub reads XREAD replies as hiredis returns them: a map under RESP3 (redis-py's default), pairs under RESP2.
@pytest.fixture(params=[3, 2], ids=["resp3", "resp2"])
async def redis(redis_url: str, namespace: str, request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, protocol=request.param)
    yield client
    await asyncio.wait_for(client.aclose(), timeout=30)
    cleanup_redis_namespace(redis_url, f"{namespace}hub")


@pytest.fixture
async def hub(redis: aioredis.Redis) -> AsyncIterator[StreamHub]:
    # A long block: a follower that had to wait for it would show.
    hub = StreamHub(redis, block_ms=10_000)
    hub.start()
    yield hub
    # Bounded: a stop that hangs fails the test instead of the whole run.
    await asyncio.wait_for(hub.stop(), timeout=30)


def _progress(turn_id: str, seq: int, text: str, *, hop: int = 0, attempt: int = 1) -> TurnEntry:
    body = ChatKitEntry(event=ProgressUpdateEvent(text=text))
    return TurnEntry(turn_id=turn_id, hop=hop, attempt=attempt, seq=seq, body=body)


def _end(turn_id: str, seq: int, *, hop: int = 0, attempt: int = 1) -> TurnEntry:
    return TurnEntry(turn_id=turn_id, hop=hop, attempt=attempt, seq=seq, body=TurnEnd(status="completed"))


async def _texts(
    hub: StreamHub, redis: aioredis.Redis, ns: str, turn_id: str, *, after: str = "0-0", timeouts: Timeouts = TIMEOUTS
) -> list[tuple[str, EntryView]]:
    """The turn's entries up to its end, read as the relay reads them (turn_relay.FollowedTurn)."""
    got: list[tuple[str, EntryView]] = []
    reader = TurnReader(hub, ns, turn_id, first_agent="triage", timeouts=timeouts)
    try:
        await reader.open(redis, after)
        while True:
            batch = reader.poll()
            if batch is None:
                await reader.ready()
                continue
            got.extend(batch)
            if batch and batch[-1][1].is_terminal:
                return got
    finally:
        reader.close()


def _text(entry: EntryView) -> str:
    assert entry.event is not None
    return str(json.loads(entry.event)["text"])


async def test_many_turns_are_read_through_one_hub_each_getting_only_its_entries(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    ns = f"{namespace}hub"
    turns = [new_id("turn") for _ in range(20)]
    readers = [asyncio.create_task(_texts(hub, redis, ns, turn_id)) for turn_id in turns]
    await asyncio.sleep(0.05)  # most are following before the first entry, some may come later: both work
    for seq in range(3):
        for turn_id in turns:
            await append_entry(redis, ns, _progress(turn_id, seq, f"{turn_id} {seq}"), ttl_s=60)
    for turn_id in turns:
        await append_entry(redis, ns, _end(turn_id, 3), ttl_s=60)
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=10)
    for turn_id, entries in zip(turns, results, strict=True):
        assert [_text(e) for _, e in entries[:-1]] == [f"{turn_id} {seq}" for seq in range(3)]
        assert entries[-1][1].is_terminal
    assert hub.followed == 0


async def test_a_new_follower_does_not_wait_for_the_hubs_blocked_read(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    ns = f"{namespace}hub"
    # The hub is blocked (10 s) on a turn that stays quiet.
    quiet = asyncio.create_task(_texts(hub, redis, ns, new_id("turn")))
    await asyncio.sleep(0.3)
    turn_id = new_id("turn")
    await append_entry(redis, ns, _progress(turn_id, 0, "already there"), ttl_s=60)
    started = time.monotonic()
    reader = asyncio.create_task(_texts(hub, redis, ns, turn_id))
    await asyncio.sleep(0.05)
    await append_entry(redis, ns, _end(turn_id, 1), ttl_s=60)
    entries = await asyncio.wait_for(reader, timeout=5)
    assert time.monotonic() - started < 2
    assert [_text(e) for _, e in entries[:1]] == ["already there"]
    quiet.cancel()


async def test_followers_joining_a_stream_others_are_reading_get_it_from_their_own_start(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    # Tabs open on a turn while another tab (or a re-attached client) is already reading it and the worker keeps
    # writing: a read the hub asked for from the first tab's position must not be what a new tab starts from.
    ns = f"{namespace}hub"
    for _ in range(15):
        turn_id = new_id("turn")
        for seq in range(3):
            await append_entry(redis, ns, _progress(turn_id, seq, f"early {seq}"), ttl_s=60)
        first = asyncio.create_task(_texts(hub, redis, ns, turn_id))
        await asyncio.sleep(0.02)  # it has read the early entries; the hub reads on from there
        tabs = [asyncio.create_task(_texts(hub, redis, ns, turn_id)) for _ in range(3)]
        for seq in range(3, 8):
            await append_entry(redis, ns, _progress(turn_id, seq, f"late {seq}"), ttl_s=60)
        await append_entry(redis, ns, _end(turn_id, 8), ttl_s=60)
        everyone = await asyncio.wait_for(asyncio.gather(first, *tabs), timeout=10)
        expected = [f"early {n}" for n in range(3)] + [f"late {n}" for n in range(3, 8)]
        for entries in everyone:
            assert [_text(e) for _, e in entries[:-1]] == expected


async def test_resuming_after_an_entry_and_dropping_superseded_runs(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    ns = f"{namespace}hub"
    turn_id = new_id("turn")
    first = await append_entry(redis, ns, _progress(turn_id, 0, "a1"), ttl_s=60)
    await append_entry(redis, ns, _progress(turn_id, 1, "a2"), ttl_s=60)
    # A redelivered attempt takes over; the dead attempt's late entry is dropped.
    await append_entry(redis, ns, _progress(turn_id, 0, "b1", attempt=2), ttl_s=60)
    await append_entry(redis, ns, _progress(turn_id, 2, "a3 (late)"), ttl_s=60)
    handoff = TurnEntry(turn_id=turn_id, attempt=2, seq=1, body=HandoffEntry(to="task"))
    await append_entry(redis, ns, handoff, ttl_s=60)
    await append_entry(redis, ns, _progress(turn_id, 0, "c1", hop=1), ttl_s=60)
    await append_entry(redis, ns, _end(turn_id, 1, hop=1), ttl_s=60)

    everything = await _texts(hub, redis, ns, turn_id)
    assert [_text(e) if e.kind == "chatkit" else e.kind for _, e in everything] == [
        "a1", "a2", "b1", "handoff", "c1", "end",
    ]  # fmt: skip
    resumed = await _texts(hub, redis, ns, turn_id, after=first)
    assert [_text(e) if e.kind == "chatkit" else e.kind for _, e in resumed] == ["a2", "b1", "handoff", "c1", "end"]
    # Two followers of the same turn on one hub, from different places.
    both = await asyncio.gather(_texts(hub, redis, ns, turn_id), _texts(hub, redis, ns, turn_id, after=first))
    assert [len(entries) for entries in both] == [6, 5]


async def test_a_turn_nobody_starts_times_out_naming_the_kind_it_waits_for(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    ns = f"{namespace}hub"
    turn_id = new_id("turn")
    quick = Timeouts(start_s=0.5, handoff_s=0.5, idle_s=0.5, block_ms=100)
    with pytest.raises(TurnTimeoutError) as raised:
        await _texts(hub, redis, ns, turn_id, timeouts=quick)
    assert raised.value.waiting_for == "triage"
    handoff = TurnEntry(turn_id=turn_id, attempt=1, seq=0, body=HandoffEntry(to="research"))
    await append_entry(redis, ns, handoff, ttl_s=60)
    with pytest.raises(TurnTimeoutError) as raised:
        await _texts(hub, redis, ns, turn_id, timeouts=quick)
    assert raised.value.waiting_for == "research"
    assert raised.value.last_run == (0, 1)
    assert await redis.exists(turn_stream_key(ns, turn_id))


async def test_the_hubs_ticks_keep_a_deadline_no_timer_of_the_followers_own_watches(
    redis: aioredis.Redis, namespace: str
) -> None:
    """A wait limit longer than a tick arms no timer: the hub's next tick wakes the follower to look at its
    deadline. Without the ticks, nothing would ever wake it (the block is an hour)."""
    ns = f"{namespace}hub"
    hub = StreamHub(redis, block_ms=10_000, tick_s=0.05)
    hub.start()
    try:
        slow_limit = Timeouts(start_s=0.3, handoff_s=0.3, idle_s=0.3, block_ms=3_600_000)
        started = time.monotonic()
        with pytest.raises(TurnTimeoutError):
            async with asyncio.timeout(5):
                await _texts(hub, redis, ns, new_id("turn"), timeouts=slow_limit)
        assert 0.3 <= time.monotonic() - started < 2
    finally:
        await hub.stop()


async def test_a_follower_that_does_not_keep_up_leaves_the_backlog_in_redis(
    hub: StreamHub, redis: aioredis.Redis, namespace: str
) -> None:
    ns = f"{namespace}hub"
    turn_id = new_id("turn")
    for seq in range(1500):
        await append_entry(redis, ns, _progress(turn_id, seq, str(seq)), ttl_s=60)
    await append_entry(redis, ns, _end(turn_id, 1500), ttl_s=60)
    follower = hub.add_follower(turn_stream_key(ns, turn_id), "0-0")
    try:
        # One batch (at most HUB_BATCH entries) waits for it; the rest stays in Redis until it takes that one,
        # however long the hub then goes on reading (its ticks, other reads).
        await until(lambda: follower.held is not None, timeout_s=10)
        await asyncio.sleep(0.3)
        assert follower.held is not None
        assert len(follower.held) == HUB_BATCH
        seen = 0
        while seen < 1501:
            await follower.arm(5)
            batch = follower.take()
            assert batch is not None, "no batch within 5 s"
            hub.taken(follower)
            seen += len(batch)
        assert seen == 1501
    finally:
        hub.remove_follower(follower)


async def test_a_hub_whose_connection_redis_dropped_reconnects_at_once_and_quietly(
    hub: StreamHub, redis: aioredis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a Redis restart every idle hub's connection is dead, found on its next read: that read is sent again
    on a new connection at once, with no warning (one per hub used to be logged, minutes after the restart, and
    its turn waited half a second)."""
    ns = f"{namespace}hub"
    warm = new_id("turn")
    await append_entry(redis, ns, _end(warm, 0), ttl_s=60)
    assert len(await _texts(hub, redis, ns, warm)) == 1
    client_id = hub._client_id
    assert client_id is not None
    await redis.client_kill_filter(_id=str(client_id))
    turn_id = new_id("turn")
    await append_entry(redis, ns, _end(turn_id, 0), ttl_s=60)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="kitrelay.gateway.relay"):
        assert len(await _texts(hub, redis, ns, turn_id)) == 1
    assert time.monotonic() - started < REDIS_RETRY_S
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert hub._client_id not in (None, client_id)
