"""The watch keys of the turns a gateway process relays. A worker under DETACHED_TURN_POLICY=cancel stops a turn
whose watch key has expired: no client followed it for DETACHED_GRACE_S (services/worker.py).

One task refreshes the keys of every followed turn in one pipelined round trip per tick. A SET per stream per
tick, each a command of its own, was thousands of round trips a minute at thousands of open streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import redis.asyncio as aioredis
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class WatchKeys:
    """`watch(key)` when a stream starts following a turn, `unwatch(key)` when it stops; `close()` at shutdown.
    A key lives `ttl_s` after its last refresh, and is refreshed every `every_s` (less than `ttl_s`) while any
    stream of this process follows its turn."""

    def __init__(self, redis: aioredis.Redis, *, ttl_s: float, every_s: float) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._every_s = every_s
        # Streams following each turn (a turn may have several clients on one gateway).
        self._watched: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        return len(self._watched)

    async def watch(self, key: str) -> None:
        """Set the key at once (a worker may look right away), then keep it while the turn is followed."""
        self._watched[key] += 1
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name="watch key refresher")
        # Untraced, as the refreshes: they belong to no turn's trace.
        with suppress_instrumentation():
            try:
                await self._redis.set(key, b"1", px=self._ttl_ms)
            except RedisError as exc:
                log.warning("could not set watch key %s: %s", key, exc)  # the next refresh sets it
        _raise_if_cancelled()

    def unwatch(self, key: str) -> None:
        """The key is no longer refreshed once no stream of this process follows its turn: it expires by itself."""
        self._watched[key] -= 1
        if self._watched[key] <= 0:
            del self._watched[key]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        with suppress_instrumentation():
            while True:
                await asyncio.sleep(self._every_s)
                try:
                    await self.refresh()
                except RedisError as exc:
                    # A Redis restart: the next tick tries again, well within the keys' lifetime.
                    log.warning("could not refresh %d watch keys: %s", len(self._watched), exc)
                _raise_if_cancelled()

    async def refresh(self) -> None:
        """Push out the expiry of every watched key, in one round trip."""
        if not self._watched:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._watched:
                pipe.set(key, b"1", px=self._ttl_ms)
            await pipe.execute()


def _raise_if_cancelled() -> None:
    """redis-py may swallow a cancellation that comes while a command waits for its reply (it takes it for a lost
    connection, reconnects and sends the command again): the task was still cancelled (a client that left, a
    shutdown) and must end, not carry on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
