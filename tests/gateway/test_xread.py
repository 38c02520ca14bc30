"""The hubs' XREAD (gateway/xread.py) on a real Redis: packed as redis-py packs it, answered as redis-py's own
XREAD is, blocking until the block runs out, and a read cut short leaves the connection usable."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from kitrelay.gateway.xread import XreadConnection, pack_xread


def test_the_command_is_packed_as_redis_py_packs_it() -> None:
    streams = {b"ns:turn:{a}:events": "0-0", b"ns:turn:{b}:events": "1700000000000-3"}
    ours = pack_xread(streams, count=64, block_ms=2000)
    theirs = b"".join(
        Connection().pack_command("XREAD", "COUNT", 64, "BLOCK", 2000, "STREAMS", *streams, *streams.values())
    )
    assert ours == theirs


async def test_replies_are_redis_pys_and_a_cut_read_leaves_the_connection_usable(
    redis_url: str, namespace: str
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    raw = aioredis.Redis.from_url(redis_url)
    raw.set_response_callback("XREAD", lambda response, **_: response)
    reader = XreadConnection(redis)
    key = f"{namespace}xread:{{k}}"
    try:
        assert await reader.client_id() > 0
        first = await redis.xadd(key, {"e": "1"})
        second = await redis.xadd(key, {"e": "2"})
        assert isinstance(second, bytes)
        streams = {key.encode(): "0-0"}
        reply = await reader.xread(streams, count=10, block_ms=100)
        assert reply == await raw.xread({key: "0-0"}, count=10, block=100)
        assert [entry[0] for entry in next(iter(reply.values()))] == [first, second]

        started = asyncio.get_running_loop().time()
        assert await reader.xread({key.encode(): second.decode()}, count=10, block_ms=200) is None
        assert asyncio.get_running_loop().time() - started >= 0.19

        blocked = asyncio.create_task(reader.xread({key.encode(): "$"}, count=10, block_ms=5000))
        await asyncio.sleep(0.05)
        blocked.cancel()
        await asyncio.gather(blocked, return_exceptions=True)
        third = await redis.xadd(key, {"e": "3"})
        reply = await reader.xread({key.encode(): second.decode()}, count=10, block_ms=100)
        assert [entry[0] for entry in next(iter(reply.values()))] == [third]
    finally:
        await reader.aclose()
        await redis.delete(key)
        await redis.aclose()
        await raw.aclose()
