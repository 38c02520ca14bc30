"""Watch keys against a real Redis: set at once when a turn is followed, kept alive past their TTL while it is,
left to expire once no stream follows it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from kitrelay.gateway.watch_keys import WatchKeys
from tests.infra import cleanup_redis_namespace

TTL_S = 0.6
EVERY_S = 0.2


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
    cleanup_redis_namespace(redis_url, f"{namespace}watch")


@pytest.fixture
async def watch_keys(redis: aioredis.Redis) -> AsyncIterator[WatchKeys]:
    keys = WatchKeys(redis, ttl_s=TTL_S, every_s=EVERY_S)
    yield keys
    await keys.close()


async def test_a_followed_turn_keeps_its_key_past_its_ttl_and_loses_it_after(
    redis: aioredis.Redis, watch_keys: WatchKeys, namespace: str
) -> None:
    key = f"{namespace}watch:turn:1"
    await watch_keys.watch(key)
    assert await redis.exists(key), "set at once: a worker may look right away"
    await asyncio.sleep(TTL_S * 3)
    assert await redis.exists(key), "refreshed while followed"
    watch_keys.unwatch(key)
    await asyncio.sleep(TTL_S + EVERY_S * 2)
    assert not await redis.exists(key), "expired once nobody follows the turn"


async def test_a_key_lives_while_any_of_its_streams_follows(
    redis: aioredis.Redis, watch_keys: WatchKeys, namespace: str
) -> None:
    key = f"{namespace}watch:turn:2"
    await watch_keys.watch(key)
    await watch_keys.watch(key)  # a second client of the same turn on this gateway
    watch_keys.unwatch(key)
    await asyncio.sleep(TTL_S * 2)
    assert await redis.exists(key)
    watch_keys.unwatch(key)
    assert watch_keys.watched == 0


async def test_a_refresh_sets_every_watched_key_and_none_other(
    redis: aioredis.Redis, watch_keys: WatchKeys, namespace: str
) -> None:
    keys = [f"{namespace}watch:turn:many:{n}" for n in range(500)]
    for key in keys:
        await watch_keys.watch(key)
    watch_keys.unwatch(keys[0])
    await redis.delete(*keys)  # as if they had all expired
    await watch_keys.refresh()
    assert not await redis.exists(keys[0])
    assert await redis.exists(*keys[1:]) == len(keys) - 1
    assert 0 < await redis.pttl(keys[1]) <= TTL_S * 1000


async def test_closing_ends_the_refresher_even_in_the_middle_of_a_refresh(
    redis: aioredis.Redis, namespace: str
) -> None:
    # A refresher that swallowed its cancellation (redis-py may report a cancelled read as a Redis error) would
    # keep a gateway from shutting down.
    for attempt in range(10):
        keys = WatchKeys(redis, ttl_s=TTL_S, every_s=0.001)
        for n in range(300):
            await keys.watch(f"{namespace}watch:turn:closing:{n}")
        await asyncio.sleep(0.002 * attempt)
        async with asyncio.timeout(5):
            await keys.close()
