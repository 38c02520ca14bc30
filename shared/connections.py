"""Connection factories for NATS JetStream and Redis: ping, retry a bounded number of times, then raise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from kitrelay.shared.names import dead_letter_stream, dead_letter_subject, turns_stream, turns_subject
from kitrelay.shared.redis_connection import PromptWriteConnection
from kitrelay.shared.settings import AGENT_KINDS, Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


async def _with_retries(what: str, settings: Settings, connect: Callable[[], Awaitable[T]]) -> T:
    retries = settings.CONNECT_RETRIES
    while True:
        try:
            return await connect()
        except (OSError, TimeoutError, nats.errors.Error, aioredis.ConnectionError) as exc:
            if retries <= 0:
                raise
            log.warning("cannot connect to %s (%s), %d retries remaining", what, exc, retries)
            retries -= 1
            await asyncio.sleep(settings.CONNECT_RETRY_DELAY_S)


async def connect_nats(settings: Settings, *, name: str) -> NATS:
    async def connect() -> NATS:
        # After the first connection, nats-py reconnects on its own, forever, with the buffered publishes kept.
        return await nats.connect(
            settings.NATS_URL,
            name=name,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
        )

    return await _with_retries(f"NATS at {settings.NATS_URL}", settings, connect)


REDIS_COMMAND_RETRIES = 3
REDIS_RETRY_BASE_S = 0.05
REDIS_RETRY_CAP_S = 0.5


async def connect_redis(settings: Settings, *, max_connections: int | None = None) -> aioredis.Redis:
    # TLS (rediss://) and Unix sockets keep redis-py's own connection classes.
    connection: dict[str, Any] = (
        {"connection_class": PromptWriteConnection} if settings.REDIS_URL.startswith("redis://") else {}
    )
    client = aioredis.Redis.from_url(
        settings.REDIS_URL,
        **connection,
        max_connections=max_connections,
        health_check_interval=30,
        socket_keepalive=True,
        # After a Redis restart every pooled connection is dead, and a command sent on one fails with "Connection
        # closed by server": reconnect and send it again (a few times, backing off) instead of failing a request.
        # Only connection errors: a timeout may mean the command ran.
        retry=Retry(ExponentialBackoff(cap=REDIS_RETRY_CAP_S, base=REDIS_RETRY_BASE_S), REDIS_COMMAND_RETRIES),
        retry_on_error=[RedisConnectionError],
    )

    async def ping() -> aioredis.Redis:
        await client.ping()
        return client

    return await _with_retries(f"Redis at {settings.REDIS_URL}", settings, ping)


async def ensure_turns_stream(js: JetStreamContext, namespace: str) -> None:
    """Create (or bring up to date) the work-queue stream that carries every turn request.

    Work-queue retention deletes a turn once a worker acks it, and allows exactly one consumer per subject.
    Gateways and workers both call this at start-up, so either may start first.
    """
    config = StreamConfig(
        name=turns_stream(namespace),
        subjects=[turns_subject(namespace, kind) for kind in AGENT_KINDS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        # The turn id is the Nats-Msg-Id: a gateway retrying a publish never creates a second turn.
        duplicate_window=120.0,
    )
    dead = StreamConfig(
        name=dead_letter_stream(namespace),
        subjects=[dead_letter_subject(namespace, kind) for kind in AGENT_KINDS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        # Kept for an operator, not forever.
        max_age=14 * 24 * 3600.0,
    )
    for stream in (config, dead):
        try:
            await js.add_stream(stream)
        except BadRequestError:
            # It exists with another config (e.g. an older version): update what may be updated.
            await js.update_stream(stream)
