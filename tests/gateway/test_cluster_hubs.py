"""A gateway's stream hubs on a Redis Cluster of its own (three primaries, a replica each): every shard of turn
streams is read in one XREAD on the node that serves it, turns spread over every primary, and a hub follows its
shard to the replica that takes over when its primary dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from kitrelay.gateway.relay import StreamHubs, Timeouts, TurnReader
from kitrelay.shared.connections import cluster_of, connect_redis
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import TurnEnd, TurnEntry
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import Settings
from kitrelay.shared.turn_bus import append_entry, open_run
from tests.clusters import RedisCluster, start_redis_cluster

NS = "krhubs"
TIMEOUTS = Timeouts(start_s=60, handoff_s=60, idle_s=60, block_ms=200)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    group = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield group
    group.stop()


@pytest.fixture
async def redis(cluster: RedisCluster) -> AsyncIterator[aioredis.Redis]:
    client = await connect_redis(Settings(_env_file=None, REDIS_URL=cluster.url, REDIS_CLUSTER=True))
    yield client
    await client.aclose()


def _end(turn_id: str) -> TurnEntry:
    return TurnEntry(turn_id=turn_id, attempt=1, seq=0, body=TurnEnd(status="completed"))


async def _read_to_end(reader: TurnReader) -> int:
    seen = 0
    while True:
        batch = reader.poll()
        if batch is None:
            await reader.ready()
            continue
        seen += len(batch)
        if batch and batch[-1][1].is_terminal:
            return seen


async def test_turns_spread_over_every_primary_and_each_shard_is_one_xread(
    cluster: RedisCluster, redis: aioredis.Redis
) -> None:
    client = cluster_of(redis)
    assert client is not None
    turns = [new_id("turn") for _ in range(60)]
    nodes = {client.get_node_from_key(turn_stream_key(NS, turn)).name for turn in turns}  # type: ignore[union-attr]
    assert len(nodes) == 3, "every primary holds turn streams"
    hubs = StreamHubs(redis, block_ms=200, tick_s=0.1)
    readers = [
        TurnReader(hubs.for_key(turn_stream_key(NS, t)), NS, t, first_agent="triage", timeouts=TIMEOUTS) for t in turns
    ]
    try:
        for reader in readers:
            await reader.open(redis)
        # The scripts and pipelines a turn runs work on a Redis Cluster: its keys share its shard's slot.
        for turn in turns:
            assert await open_run(redis, NS, turn, hop=0, attempt=1, ttl_s=60) == "open"
            await append_entry(redis, NS, _end(turn), ttl_s=60)
        async with asyncio.timeout(20):
            counts = await asyncio.gather(*(_read_to_end(reader) for reader in readers))
        assert counts == [1] * len(turns)
        assert hubs.connected <= 64, "a hub per shard, not per stream"
    finally:
        for reader in readers:
            reader.close()
        await hubs.stop()


async def test_a_hub_follows_its_shard_to_the_replica_that_takes_over(
    cluster: RedisCluster, redis: aioredis.Redis
) -> None:
    turn = new_id("turn")
    key = turn_stream_key(NS, turn)
    hubs = StreamHubs(redis, block_ms=200, tick_s=0.1)
    reader = TurnReader(hubs.for_key(key), NS, turn, first_agent="triage", timeouts=TIMEOUTS)
    try:
        await reader.open(redis)
        primary = await asyncio.to_thread(cluster.primary_of, key)
        primary.kill()
        # The cluster promotes the replica (node timeout 2 s); the turn's worker writes there once it has.
        async with asyncio.timeout(40):
            while True:
                try:
                    await append_entry(redis, NS, _end(turn), ttl_s=60)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            assert await _read_to_end(reader) == 1, "the entry written on the promoted replica reached the reader"
        await asyncio.to_thread(cluster.restart, primary)
    finally:
        reader.close()
        await hubs.stop()
