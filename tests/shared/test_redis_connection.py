"""The Redis connection kitrelay's processes use (shared/redis_connection.py), against a real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis

from kitrelay.shared.connections import connect_redis
from kitrelay.shared.redis_connection import PromptWriteConnection
from kitrelay.shared.settings import Settings

# Time enough for loopback Redis to have run a command written before it.
SETTLE_S = 0.05


def _hold_the_loop(seconds: float) -> None:
    # Synchronous work, as a worker's SQLite read of a conversation runs on the event loop's thread: nothing else
    # on the loop runs meanwhile.
    time.sleep(seconds)


@pytest.fixture
def plain_url(redis_url: str) -> str:
    if not redis_url.startswith("redis://"):
        pytest.skip("the prompt connection is used for redis:// URLs only")
    return redis_url


async def test_a_command_is_written_before_the_loop_runs_other_work(plain_url: str, unique_namespace: str) -> None:
    sync = redis.Redis.from_url(plain_url)

    async def written_first(client: aioredis.Redis, key: str) -> bool:
        seen: list[object] = []

        async def other_work() -> None:
            _hold_the_loop(SETTLE_S)
            seen.append(sync.get(key))

        await asyncio.gather(client.set(key, "sent", ex=60), other_work())
        return seen == [b"sent"]

    prompt = aioredis.Redis.from_url(plain_url, connection_class=PromptWriteConnection)
    stock = aioredis.Redis.from_url(plain_url)
    try:
        await prompt.ping()  # connected: a command's only wait is then its write
        await stock.ping()
        assert await written_first(prompt, f"{unique_namespace}:prompt")
        # redis-py's own connection, with its default socket timeout (5 s), writes from a task of its own: after.
        assert not await written_first(stock, f"{unique_namespace}:stock")
    finally:
        await prompt.aclose()
        await stock.aclose()
        sync.close()


async def test_kitrelay_processes_connect_with_it(plain_url: str) -> None:
    client = await connect_redis(Settings(_env_file=None, REDIS_URL=plain_url))
    try:
        assert client.connection_pool.connection_class is PromptWriteConnection
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_closed_connection_is_reported_and_replaced(plain_url: str, unique_namespace: str) -> None:
    client = aioredis.Redis.from_url(plain_url, connection_class=PromptWriteConnection)
    try:
        await client.set(f"{unique_namespace}:k", "1", ex=60)
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        assert isinstance(connection, PromptWriteConnection)
        assert connection._writer is not None
        connection._writer.transport.abort()  # the server went away under a pooled connection
        await asyncio.sleep(0)
        with pytest.raises(redis.ConnectionError, match="closed"):
            await connection.send_command("GET", f"{unique_namespace}:k")
        await client.connection_pool.release(connection)
        # The pool's next command reconnects.
        assert await client.get(f"{unique_namespace}:k") == b"1"
    finally:
        await client.aclose()
