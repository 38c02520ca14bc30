"""Connection factories for NATS JetStream and Redis: ping, retry a bounded number of times, then raise."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from kitrelay.shared.names import dead_letter_stream, dead_letter_subject, turns_stream, turns_subject
from kitrelay.shared.redact import redact_url, redact_urls
from kitrelay.shared.redis_connection import PromptWriteConnection, PromptWriteSentinelConnection
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
        # After the first connection, nats-py reconnects on its own, forever, with the buffered publishes kept; to
        # another server of the cluster when its own has gone (the servers of NATS_URL, and those they announce).
        return await nats.connect(
            settings.nats_servers,
            name=name,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
        )

    return await _with_retries(f"NATS at {redact_urls(settings.NATS_URL)}", settings, connect)


REDIS_COMMAND_RETRIES = 3
REDIS_RETRY_BASE_S = 0.05
REDIS_RETRY_CAP_S = 0.5
REDIS_CLUSTER_RETRIES = 5


async def connect_redis(settings: Settings, *, max_connections: int | None = None) -> aioredis.Redis:
    """A client of the Redis that REDIS_URL names, of the primary that REDIS_SENTINELS know (following it through a
    failover), or of the Redis Cluster that REDIS_CLUSTER says REDIS_URL belongs to."""
    options: dict[str, Any] = {
        "health_check_interval": 30,
        "socket_keepalive": True,
        # After a Redis restart (or a failover) every pooled connection is dead, and a command sent on one fails
        # with "Connection closed by server": reconnect and send it again (a few times, backing off) instead of
        # failing a request. Only connection errors: a timeout may mean the command ran.
        "retry": Retry(ExponentialBackoff(cap=REDIS_RETRY_CAP_S, base=REDIS_RETRY_BASE_S), REDIS_COMMAND_RETRIES),
        "retry_on_error": [RedisConnectionError],
    }
    plain = settings.REDIS_URL.startswith("redis://")
    if settings.redis_sentinels:
        client = _sentinel_primary(settings, options, max_connections, prompt=plain)
        where = f"the primary {settings.REDIS_SENTINEL_MASTER!r} of Sentinels {settings.REDIS_SENTINELS}"
    elif settings.REDIS_CLUSTER:
        client = _cluster(settings, options)
        where = f"the Redis Cluster of {redact_url(settings.REDIS_URL)}"
    else:
        # TLS (rediss://) and Unix sockets keep redis-py's own connection classes.
        connection: dict[str, Any] = {"connection_class": PromptWriteConnection} if plain else {}
        client = aioredis.Redis.from_url(settings.REDIS_URL, **connection, **options, max_connections=max_connections)
        where = f"Redis at {redact_url(settings.REDIS_URL)}"

    async def ping() -> aioredis.Redis:
        await client.ping()
        return client

    return await _with_retries(where, settings, ping)


def _sentinel_primary(
    settings: Settings, options: dict[str, Any], max_connections: int | None, *, prompt: bool
) -> aioredis.Redis:
    # The database, user and password of the primary come from REDIS_URL; its address from the Sentinels.
    url = urlsplit(settings.REDIS_URL)
    database = int(url.path.strip("/") or 0) if url.path.strip("/").isdigit() else 0
    sentinel_password = (
        settings.REDIS_SENTINEL_PASSWORD.get_secret_value() if settings.REDIS_SENTINEL_PASSWORD else None
    )
    sentinel = Sentinel(
        settings.redis_sentinels,
        sentinel_kwargs={"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "password": sentinel_password},
        socket_connect_timeout=2.0,
    )
    connection_class = PromptWriteSentinelConnection if prompt else SentinelManagedConnection
    primary: aioredis.Redis = sentinel.master_for(
        settings.REDIS_SENTINEL_MASTER,
        redis_class=aioredis.Redis,
        connection_class=connection_class,
        db=database,
        username=url.username,
        password=url.password,
        max_connections=max_connections,
        **options,
    )
    return primary


def _cluster(settings: Settings, options: dict[str, Any]) -> aioredis.Redis:
    cluster = RedisCluster.from_url(
        settings.REDIS_URL,
        health_check_interval=options["health_check_interval"],
        socket_keepalive=True,
        # A failover moves slots: the cluster's map is read again, and the command retried, a few times (backing
        # off) before it fails.
        retry=Retry(ExponentialBackoff(cap=REDIS_RETRY_CAP_S, base=REDIS_RETRY_BASE_S), REDIS_CLUSTER_RETRIES),
    )
    # Every command kitrelay sends a single Redis (keyed commands, pipelines, scripts whose keys share a hash tag)
    # a Redis Cluster takes too; the few that must reach one node (a stream hub's reads) ask for it
    # (gateway/relay.py, `cluster_of`).
    return cast(aioredis.Redis, cluster)


def cluster_of(redis: aioredis.Redis) -> RedisCluster | None:
    """The Redis Cluster client behind `redis`, or None for a single Redis (or Sentinel's primary)."""
    return redis if isinstance(redis, RedisCluster) else None  # type: ignore[unreachable]


def _turns_stream_config(namespace: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=turns_stream(namespace),
        subjects=[turns_subject(namespace, kind) for kind in AGENT_KINDS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        # The turn id is the Nats-Msg-Id: a gateway retrying a publish never creates a second turn.
        duplicate_window=120.0,
    )


def _dead_letter_config(namespace: str, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=dead_letter_stream(namespace),
        subjects=[dead_letter_subject(namespace, kind) for kind in AGENT_KINDS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        # Kept for an operator, not forever.
        max_age=14 * 24 * 3600.0,
    )


# What this version sets on its streams, and so what it compares with a stream that exists.
_COMPARED = ("retention", "storage", "num_replicas", "duplicate_window", "max_age")


def stream_differences(existing: StreamConfig, wanted: StreamConfig) -> list[str]:
    """How an existing stream differs from what this version would create, in words (none: []). Subjects count
    only when one this version publishes to is missing."""
    differences = []
    missing = sorted(set(wanted.subjects or []) - set(existing.subjects or []))
    if missing:
        differences.append(f"subjects {', '.join(missing)} missing")
    for name in _COMPARED:
        have, want = getattr(existing, name), getattr(wanted, name)
        # Unset (None, or nats-py's 0) means the server's default: nothing to compare.
        if want and have != want and not (name == "num_replicas" and (have or 1) == want):
            differences.append(f"{name} is {_shown(have)}, this version would set {_shown(want)}")
    return differences


def _shown(value: object) -> str:
    return str(value.value) if hasattr(value, "value") else str(value)


async def ensure_turns_stream(js: JetStreamContext, namespace: str, *, replicas: int = 1) -> int:
    """Create the work-queue stream that carries every turn request (and the dead-letter stream) where it is
    missing, with `replicas` copies (TURNS_STREAM_REPLICAS). An existing stream is never rewritten, whichever
    version made it or however it was changed since (an operator's R3, a longer duplicate window): what differs
    from this version's config is logged. Returns the turns stream's replicas, which its consumers then take.

    Work-queue retention deletes a turn once a worker acks it, and allows exactly one consumer per subject.
    Gateways and workers both call this at start-up, so either may start first.
    """
    have_replicas = replicas
    names = (turns_stream(namespace), dead_letter_stream(namespace))
    configs = (_turns_stream_config(namespace, replicas), _dead_letter_config(namespace, replicas))
    for name, wanted in zip(names, configs, strict=True):
        try:
            existing = (await js.stream_info(name)).config
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                continue
            except BadRequestError:
                # Another process created it a moment ago (with its own settings): compare with that one.
                existing = (await js.stream_info(name)).config
        if differences := stream_differences(existing, wanted):
            missing = any("missing" in difference for difference in differences)
            log.log(
                logging.ERROR if missing else logging.WARNING,
                "JetStream stream %s differs from what this version would create: %s. It is left as it is; "
                "change it with the nats CLI (`nats stream edit`, docs/deployment.md) if that is not intended",
                name,
                "; ".join(differences),
            )
        if name == names[0]:
            have_replicas = existing.num_replicas or 1
    return have_replicas
