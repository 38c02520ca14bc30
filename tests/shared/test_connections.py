"""Connections to clustered servers, on real ones: the streams a process creates where missing and never rewrites,
NATS_URL as a cluster's servers, Redis through Sentinel following a failover, and a database that is away being
recognised as an outage (not a failure of the request)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kitrelay.services.devservers import DevServerError, free_port
from kitrelay.shared.connections import connect_nats, connect_redis, ensure_turns_stream
from kitrelay.shared.names import turns_stream, turns_subject
from kitrelay.shared.settings import AGENT_KINDS, Settings
from kitrelay.shared.store.engine import is_unavailable, make_engine
from tests.clusters import NatsCluster, RedisSentinels, start_nats_cluster, start_redis_sentinels


async def test_a_missing_stream_is_created_and_an_existing_one_is_never_rewritten(
    nats_url: str, unique_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        assert await ensure_turns_stream(js, unique_namespace) == 1
        made = (await js.stream_info(turns_stream(unique_namespace))).config
        assert made.retention == RetentionPolicy.WORK_QUEUE and made.duplicate_window == 120.0

        # An operator (or another version) changed it: kitrelay says what differs and leaves it.
        changed = StreamConfig(
            name=turns_stream(unique_namespace),
            subjects=[turns_subject(unique_namespace, kind) for kind in AGENT_KINDS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=300.0,
        )
        await js.update_stream(changed)
        with caplog.at_level(logging.WARNING, logger="kitrelay.shared.connections"):
            assert await ensure_turns_stream(js, unique_namespace) == 1
        kept = (await js.stream_info(turns_stream(unique_namespace))).config
        assert kept.duplicate_window == 300.0, "not rewritten"
        assert "duplicate_window is 300.0, this version would set 120.0" in caplog.text
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = start_nats_cluster(tmp_path_factory.mktemp("nats-cluster"))
    yield cluster
    cluster.stop()


async def test_on_a_nats_cluster_the_stream_and_its_consumers_keep_three_copies_and_outlive_a_node(
    nats_cluster: NatsCluster,
) -> None:
    settings = Settings(_env_file=None, NATS_URL=nats_cluster.url, TURNS_STREAM_REPLICAS=3, NAMESPACE="krcluster")
    nc = await connect_nats(settings, name="test")
    try:
        js = nc.jetstream()
        assert await ensure_turns_stream(js, "krcluster", replicas=3) == 3
        info = await js.stream_info(turns_stream("krcluster"))
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        leader = nats_cluster.node(str(info.cluster.leader))
        leader.kill()
        # The client moves to another server, and the stream (now led elsewhere) takes turns again.
        for _ in range(100):
            try:
                await js.publish(turns_subject("krcluster", "triage"), b"{}", timeout=1)
                break
            except nats.errors.Error:
                await asyncio.sleep(0.2)
        else:
            pytest.fail("the stream took no message after its leader died")
        moved = await js.stream_info(turns_stream("krcluster"))
        assert moved.cluster is not None and moved.cluster.leader != leader.name
        nats_cluster.restart(leader)
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinels]:
    group = start_redis_sentinels(tmp_path_factory.mktemp("sentinels"), master="krtest")
    yield group
    group.stop()


async def test_redis_through_sentinel_follows_a_failover(sentinels: RedisSentinels) -> None:
    settings = Settings(
        _env_file=None,
        REDIS_URL="redis://127.0.0.1:6379/0",
        REDIS_SENTINELS=sentinels.sentinel_addresses,
        REDIS_SENTINEL_MASTER="krtest",
    )
    redis = await connect_redis(settings)
    try:
        await redis.set("before", "1")
        primary = sentinels.primary()
        await asyncio.to_thread(_replicated, sentinels)
        primary.kill()
        # Commands fail while the Sentinels agree (a few seconds), then reach the promoted replica.
        for _ in range(300):
            try:
                await redis.set("after", "2")
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("no Redis primary after the failover")
        assert sentinels.primary_port() != primary.port
        assert await redis.get("before") == b"1", "the replica had it"
        await asyncio.to_thread(sentinels.restart, primary)
    finally:
        await redis.aclose()


def _replicated(sentinels: RedisSentinels) -> None:
    """Until the replica has every write so far (on a loaded machine it may still be syncing)."""
    import redis as sync_redis  # noqa: PLC0415

    primary = sync_redis.Redis(port=sentinels.primary_port())
    for _ in range(100):
        if primary.wait(1, 200) == 1:
            return
    pytest.fail("the replica did not catch up within 20 s")


async def test_a_database_that_is_away_is_an_outage_and_a_bad_statement_is_not(tmp_path: Path) -> None:
    closed = make_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    try:
        with pytest.raises(OSError) as refused:
            async with closed.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert is_unavailable(refused.value)
    finally:
        await closed.dispose()
    sqlite = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(DBAPIError) as bad:
            async with sqlite.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not is_unavailable(bad.value)
    finally:
        await sqlite.dispose()
    assert not is_unavailable(DevServerError("not a database error"))
    assert not is_unavailable(ConnectionRefusedError(111, "a socket error outside the database layer"))
