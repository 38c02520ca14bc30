"""Reads turns' Redis streams for one gateway process: one hub XREADs every followed stream at once, and each
follower reads its turn from the hub, from a given entry id until the turn's terminal entry.

One blocking XREAD per open stream would hold one Redis connection (and its buffers) per stream: at thousands of
streams that is most of the gateway's memory and a system call per event. The hub holds one connection, asks
for all followed keys in each XREAD, and hands each follower its entries in batches."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import AskError, ClusterDownError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kitrelay.gateway.xread import XreadConnection
from kitrelay.shared.connections import cluster_of
from kitrelay.shared.messages import EntryView, peek_entry, peek_fields
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import AgentKind

log = logging.getLogger(__name__)

# An entry as hiredis returns it: its id and its fields, flat ([name, value, name, value, ...]); XREAD's reply is
# [(key, [entry, ...])]. Entries are passed on in that shape: reshaping each one (a dict of its fields) was a
# tenth of the gateway's CPU at 2,000 streams.
RawEntry = tuple[bytes, list[bytes]]
RawEntries = list[RawEntry]
XReadResponse = list[tuple[bytes, RawEntries]]
# How long the hub's XREAD blocks when nothing comes; a new follower wakes it at once (CLIENT UNBLOCK).
HUB_BLOCK_MS = 2000
# Entries per stream per XREAD: what one follower holds at most while its client is slower than its worker (the
# rest waits in Redis), so it bounds the gateway's memory per open stream.
HUB_BATCH = 64
REDIS_RETRY_S = 0.5
# How often a hub wakes its waiting followers to look at their deadlines (a turn's relay sets its own).
HUB_TICK_S = 1.0
# Hubs per gateway process, each reading its share of the followed streams on a connection of its own (see
# `StreamHubs`). More hubs hand out smaller replies in turn: with 2,000 streams at 20 events/s each, a stream's
# longest gaps (p99) were 100-120 ms with 4 hubs, 98 with 8, 90 with 16, 91 with 32 (benchmarks/README.md).
HUB_SHARDS = 16
HUB_STOP_TIMEOUT_S = 5.0


class TurnTimeoutError(Exception):
    """No entry arrived in time: no worker of `waiting_for` took the turn, or (None) a running worker went quiet."""

    def __init__(self, turn_id: str, *, waiting_for: AgentKind | None, last_run: tuple[int, int]) -> None:
        what = f"was not picked up by a {waiting_for} worker" if waiting_for else "went quiet"
        super().__init__(f"turn {turn_id} {what}")
        self.waiting_for = waiting_for
        self.last_run = last_run


@dataclass(frozen=True)
class Timeouts:
    start_s: float  # until the first entry
    handoff_s: float  # after a handoff, until the next kind's first entry
    idle_s: float  # between two entries of a running worker
    block_ms: int  # the longest a follower waits before it checks its deadline (and a watch key's refresh period)
    # A turn quiet this long is told to its client ("still working"), once per silence: a worker died and its turn
    # waits for redelivery, or a tool or the model is slow. None: never.
    quiet_notice_s: float | None = None


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def split_event_id(event_id: str) -> tuple[str, int]:
    """An SSE event id as (entry id, how many of the entry's events it covers beyond the first): "<entry id>" is
    a whole entry, "<entry id>.<n>" event n of a pack (0 for an id that is a whole entry)."""
    entry_id, _, index = event_id.partition(".")
    return entry_id, int(index) + 1 if index else 0


def entry_before(entry_id: str) -> str:
    """The greatest stream id below `entry_id`: reading after it reads `entry_id` itself again."""
    ms, seq = _id_key(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms > 0 else "0-0"


@dataclass(eq=False)
class _Follower:
    """One reader of a turn stream. It holds at most one batch: the hub gives it the next only once it has taken
    this one (`take`), and wakes it when a batch comes, and at each of its ticks. A bare future per wait, awaited as
    it is (`arm`), not an asyncio.Queue, an asyncio.timeout or a coroutine around the future: each cost a relay a
    microsecond or more per event, at tens of thousands of events a second; so did a timer per wait, which only a
    deadline nearer than the hub's next tick needs."""

    key: bytes
    last_id: str
    held: RawEntries | None = None
    waiter: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None
    # Takes a batch the moment it is given, inside the hub's hand-out, and says whether it did (see `listen`).
    listener: Callable[[], bool] | None = None

    def give(self, batch: RawEntries) -> None:
        self.held = batch
        if self.listener is not None:
            try:
                if self.listener():
                    return
            except Exception:
                # The hub serves every stream of this process: one reader's failure must not stop it.
                log.exception("a turn stream's listener failed; its reader takes the batch")
        self.wake()

    def take(self) -> RawEntries | None:
        batch, self.held = self.held, None
        return batch

    def wake(self) -> None:
        if self.waiter is not None:
            _wake_waiter(self.waiter)

    def arm(self, timeout_s: float | None = None) -> asyncio.Future[None]:
        """A future done once a batch comes, at the hub's next tick, or when `timeout_s` passes (whichever first;
        it does not say which). Without `timeout_s` there is no timer of its own. A new `arm` replaces the wait."""
        self.disarm()
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        if self.held is not None:
            waiter.set_result(None)
        elif timeout_s is not None:
            self.timer = loop.call_later(timeout_s, _wake_waiter, waiter)
        return waiter

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiter = None


def _wake_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class StreamHub:
    """The gateway process's one reader of turn streams. `start()` in the lifespan, `stop()` at shutdown."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        block_ms: int = HUB_BLOCK_MS,
        batch: int = HUB_BATCH,
        tick_s: float = HUB_TICK_S,
        reconnect: Callable[[], Awaitable[aioredis.Redis]] | None = None,
    ) -> None:
        self._redis = redis
        # A Redis Cluster's hub (one shard's): the client of the node serving its shard now, asked when its node no
        # longer answers for it (it died and its replica took over, or the slot moved).
        self._reconnect = reconnect
        # Every tick, each waiting follower is woken to look at its deadline (see `_Follower`).
        self.tick_s = tick_s
        # A connection of its own: it sits in XREAD BLOCK, and CLIENT UNBLOCK names it. Its XREAD replies are read
        # as hiredis returns them (see `_xread_entries`): redis-py's own reshaping of every entry cost more than the
        # rest of the relay together, and its packing of every key 5 % of the gateway (gateway/xread.py).
        self._reader = XreadConnection(redis)
        self._block_ms = block_ms
        self._batch = batch
        self._followers: dict[bytes, list[_Follower]] = {}
        # Where the XREAD in flight reads each key from; a followed key missing here was left out (its followers
        # all held a batch) or came after the read was asked for.
        self._read_from: dict[bytes, str] = {}
        self._changed = asyncio.Event()
        self._generation = 0  # bumped by every new follower
        self._reading: int | None = None  # the generation an XREAD in flight was asked for
        self._between_reads = False  # a reply was just handed out; the next read is not asked for yet
        self._client_id: int | None = None
        self._failures = 0  # reads failed in a row
        self._waking: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="turn stream hub")
            self._ticker = asyncio.create_task(self._tick_forever(), name="turn stream hub ticks")

    async def stop(self) -> None:
        tasks = [task for task in (self._task, self._waking, self._ticker) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Not waited for past a bound: redis-py may take a cancellation for a lost connection and try again.
            await asyncio.wait(tasks, timeout=HUB_STOP_TIMEOUT_S)
        self._task = self._ticker = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader.aclose(), HUB_STOP_TIMEOUT_S)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for followers in list(self._followers.values()):
                for follower in followers:
                    follower.wake()

    @property
    def followed(self) -> int:
        return sum(len(followers) for followers in self._followers.values())

    def add_follower(self, key: str, after: str) -> _Follower:
        """A follower of `key` from after entry id `after`: it is given the entries in order, a batch at a time.
        `remove_follower` once done."""
        follower = _Follower(key.encode(), after)
        self._followers.setdefault(follower.key, []).append(follower)
        self._generation += 1
        self._changed.set()
        self._wake()
        return follower

    def remove_follower(self, follower: _Follower) -> None:
        follower.disarm()
        followers = self._followers.get(follower.key, [])
        if follower in followers:
            followers.remove(follower)
        if not followers:
            self._followers.pop(follower.key, None)

    def _wake(self) -> None:
        """Interrupt an XREAD blocked on the keys of before: the new follower's entries must not wait for it."""
        if self._waking is None or self._waking.done():
            self._waking = asyncio.create_task(self._unblock())

    async def _unblock(self) -> None:
        # The XREAD may not have reached Redis yet (CLIENT UNBLOCK then answers 0): try again until the XREAD in
        # flight is one that already includes the new keys.
        with suppress_instrumentation():
            await self._unblock_untraced()

    async def _unblock_untraced(self) -> None:
        for _ in range(200):
            if self._reading is None or self._reading == self._generation or self._client_id is None:
                return
            try:
                if await self._redis.client_unblock(self._client_id):
                    return
            except RedisError:
                return  # the reader rides out what broke Redis, and reads again soon
            await asyncio.sleep(0.001)

    async def _run(self) -> None:
        # The hub's reads belong to no turn: a span for each (hundreds a second) would be a trace of its own.
        with suppress_instrumentation():
            # Its connection is made now, not on the way to the first event of the first turn it follows.
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                self._client_id = await self._reader.client_id()
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError  # redis-py reports a cancelled read as a timeout
            await self._read_forever()

    @property
    def connected(self) -> bool:
        return self._client_id is not None

    async def _follow_the_slot(self) -> None:
        """A Redis Cluster hub: read from the node that serves its shard now (the same, or its replica promoted)."""
        assert self._reconnect is not None
        try:
            redis = await self._reconnect()
        except (RedisError, OSError) as exc:
            log.warning("finding the node of a shard of turn streams: %s", exc)
            return
        if redis is not self._redis:
            await self._reader.aclose()
            self._redis = redis
            self._reader = XreadConnection(redis)

    async def _read_forever(self) -> None:
        while True:
            if not self._followers:
                self._changed.clear()
                await self._changed.wait()
                continue
            generation = self._generation
            self._read_from = streams = self._streams_to_read()
            if not streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if self._client_id is None:
                    self._client_id = await self._reader.client_id()
                self._reading = generation
                response = _xread_entries(await self._reader.xread(streams, count=self._batch, block_ms=self._block_ms))
            except (RedisConnectionError, RedisTimeoutError, OSError, ResponseError) as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # redis-py reports a cancelled read as a timeout: this is the hub stopping, not Redis failing.
                    raise asyncio.CancelledError from exc
                if isinstance(exc, ResponseError) and not _moved(exc):
                    # Not an outage: Redis refused the read itself. The hub serves every stream of its shard, so it
                    # does not stop; the turns' own deadlines end them if it goes on.
                    log.error("reading turn streams: Redis refused the read: %s", exc)
                    await asyncio.sleep(REDIS_RETRY_S)
                    continue
                self._client_id = None
                self._failures += 1
                if self._reconnect is not None and (self._failures > 1 or isinstance(exc, ResponseError)):
                    await self._follow_the_slot()
                if self._failures == 1:
                    # Most often a connection a Redis restart left dead, found on its first use since: reconnect
                    # at once, or this hub's next turn waits for nothing.
                    log.info("reading turn streams: %s; reconnecting", exc)
                    continue
                # Redis is away: followers wait within their own deadlines; read again once it is back.
                log.warning("reading turn streams: %s; retrying", exc)
                await asyncio.sleep(REDIS_RETRY_S)
                continue
            finally:
                self._reading = None
            self._failures = 0
            if not response:
                continue
            # The followers given a batch take it during the hand-out (a listener) or in the loop's next turn:
            # the next read then asks for their keys too, instead of leaving them out and being interrupted
            # (CLIENT UNBLOCK) for each.
            self._between_reads = True
            try:
                for key, entries in response:
                    self._dispatch(key, entries)
                await asyncio.sleep(0)
            finally:
                self._between_reads = False

    def _streams_to_read(self) -> dict[bytes, str]:
        """Each followed key and the id to read it after. Backpressure: a follower still holding a batch is not
        read for until it takes it, so a client (or a relay) slower than its worker leaves the backlog in Redis
        rather than in this process."""
        streams: dict[bytes, str] = {}
        for key, followers in self._followers.items():
            if len(followers) == 1:  # as a rule: one client per turn
                if followers[0].held is None:
                    streams[key] = followers[0].last_id
            elif ready := [f.last_id for f in followers if f.held is None]:
                streams[key] = min(ready, key=_id_key)
        return streams

    def taken(self, follower: _Follower) -> None:
        """A follower took its batch: if the XREAD in flight left its key out, or reads it from beyond where this
        follower is, it is read for again at once. Between a reply's hand-out and the next read (the followers
        served take their batches then) there is nothing to do: that read starts from every follower's place, and
        comparing entry ids here cost a relay a microsecond per event."""
        if follower.held is not None or self._between_reads:
            return
        if follower.key not in self._read_from or self._behind_read(follower):
            self._generation += 1
            self._changed.set()
            self._wake()

    def _behind_read(self, follower: _Follower) -> bool:
        start = self._read_from.get(follower.key)
        return start is not None and start != follower.last_id and _id_key(follower.last_id) < _id_key(start)

    def _dispatch(self, key: bytes, entries: RawEntries) -> None:
        start = self._read_from.get(key)
        for follower in self._followers.get(key, []):
            if follower.held is not None:
                continue  # it reads these (and more) from its own last id once it has taken what it holds
            if follower.last_id == start:
                mine = entries  # read from where it is (a key's only follower, as a rule): all of them are new
            elif self._behind_read(follower):
                # It came (or took its batch) after this read was asked for, from further back: the entries in
                # between are not in this reply. The next read starts from its own last id.
                continue
            else:
                after = _id_key(follower.last_id)
                mine = [entry for entry in entries if _id_key(entry[0]) > after]
            if mine:
                follower.last_id = mine[-1][0].decode()
                follower.give(mine)


class StreamHubs:
    """A gateway process's hubs, a stream always read by the same one (by a hash of its key).

    One hub's cycle is sequential: it waits for Redis to build its XREAD reply, then hands the entries out, and
    reads again for a follower only once it has taken what it holds. With every stream on one hub the gateway sat
    idle while Redis built replies of tens of thousands of entries, and fell behind with a core to spare. Several
    hubs overlap: one's reply is handed out while Redis builds another's."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        shards: int = HUB_SHARDS,
        block_ms: int = HUB_BLOCK_MS,
        tick_s: float = HUB_TICK_S,
    ) -> None:
        self._block_ms = block_ms
        self._tick_s = tick_s
        self._cluster = cluster_of(redis)
        # A single Redis (or Sentinel's primary): `shards` hubs. A Redis Cluster: a hub per shard of turn keys (one
        # slot, so one XREAD for every followed stream of it: shared/names.py), on a connection to the node that
        # serves it, made as its first key comes.
        self._hubs = [] if self._cluster is not None else [self._hub(redis) for _ in range(shards)]
        self._by_tag: dict[str, StreamHub] = {}
        self._node_clients: dict[str, aioredis.Redis] = {}

    def _hub(self, redis: aioredis.Redis, tag: str | None = None) -> StreamHub:
        reconnect = functools.partial(self._node_client, tag, refresh=True) if tag is not None else None
        return StreamHub(redis, block_ms=self._block_ms, tick_s=self._tick_s, reconnect=reconnect)

    def start(self) -> None:
        """Start every hub now (the gateway's lifespan), each with its connection: a hub started by its first
        follower took a connection from the pool on that turn's way to its first event, and the next command
        opened a new one. A Redis Cluster's hubs start with their shard's first key."""
        for hub in self._hubs:
            hub.start()

    @property
    def connected(self) -> int:
        return sum(hub.connected for hub in self._all())

    def _all(self) -> list[StreamHub]:
        return [*self._hubs, *self._by_tag.values()]

    def for_key(self, key: str) -> StreamHub:
        if self._cluster is None:
            hub = self._hubs[zlib.crc32(key.encode()) % len(self._hubs)]
        else:
            tag = key[key.index("{") + 1 : key.index("}")]
            hub = self._by_tag.get(tag) or self._by_tag.setdefault(tag, self._hub(self._client_for(tag), tag))
        hub.start()
        return hub

    def _client_for(self, tag: str) -> aioredis.Redis:
        """A client of the node serving the shard `tag` as primary now (one per node, shared by its hubs)."""
        assert self._cluster is not None
        node = self._cluster.get_node_from_key(f"{{{tag}}}")
        assert node is not None  # the primary that serves the tag's slot
        client = self._node_clients.get(node.name)
        if client is None:
            client = self._node_clients[node.name] = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                username=node.connection_kwargs.get("username"),
                password=node.connection_kwargs.get("password"),
                socket_keepalive=True,
            )
        return client

    async def _node_client(self, tag: str, *, refresh: bool) -> aioredis.Redis:
        """`_client_for`, after reading the cluster's map again (a hub's node stopped answering for its shard)."""
        assert self._cluster is not None
        if refresh:
            await self._cluster.nodes_manager.initialize()
        return self._client_for(tag)

    async def stop(self) -> None:
        await asyncio.gather(*(hub.stop() for hub in self._all()))
        for client in self._node_clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), HUB_STOP_TIMEOUT_S)


def _moved(exc: ResponseError) -> bool:
    """A Redis Cluster's answer that the keys are served elsewhere now, or that the cluster is (briefly) down."""
    return isinstance(exc, AskError | ClusterDownError | TryAgainError) or str(exc).startswith(
        ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")
    )


def _xread_entries(response: Any) -> XReadResponse:
    """An XREAD reply as hiredis parsed it (RESP3: {key: [[id, [field, value, ...]], ...]}; RESP2: the same as a
    list of [key, entries] pairs; None when the block ran out) as [(key, entries)], the entries untouched."""
    if not response:
        return []
    return list(response.items()) if isinstance(response, dict) else response


@dataclass
class _Progress:
    """Where a follower is in its turn: the newest run seen, what it waits for, and until when; since when the
    turn has been quiet, and whether its client was told."""

    newest_run: tuple[int, int]
    waiting_for: AgentKind | None
    deadline: float
    quiet_since: float = 0.0
    noticed: bool = False

    def take(self, raw: RawEntries, timeouts: Timeouts) -> list[tuple[str, EntryView]]:
        """The entries of `raw` to pass on, up to the terminal one; entries of runs older than the newest seen
        are dropped, and the deadline is pushed out from the last one passed on."""
        batch: list[tuple[str, EntryView]] = []
        last: EntryView | None = None
        for raw_id, fields in raw:
            entry = peek_fields(fields)
            if entry.run < self.newest_run:
                continue
            self.newest_run = entry.run
            batch.append((raw_id.decode(), entry))
            if entry.kind == "end":
                return batch
            last = entry
        if last is not None:
            self.quiet_since = time.monotonic()
            self.noticed = False
            # Each entry would set the deadline from what it is: only the last one's stands.
            if last.kind == "handoff":
                self.waiting_for = last.handoff_to
                self.deadline = time.monotonic() + timeouts.handoff_s
            else:
                self.waiting_for = None
                self.deadline = time.monotonic() + timeouts.idle_s
        return batch


class TurnReader:
    """One reader's way through a turn's stream, through its hub: `poll()` for what came, and await `ready()` when
    nothing did. No generator: every event of every stream passes here, and each layer of async generators between
    the hub and the SSE write was one more frame to resume per event. `open()` first; `close()` always, once done
    (a second call does nothing).

    Entries of a run older than the newest seen are dropped: a redelivered (or handed-off) turn supersedes what
    an earlier run wrote. No wait lasts longer than `block_ms`. A Redis that goes away for a moment is waited for,
    within the same deadlines."""

    def __init__(self, hub: StreamHub, namespace: str, turn_id: str, *, first_agent: AgentKind, timeouts: Timeouts):
        self._hub = hub
        self._key = turn_stream_key(namespace, turn_id)
        self._turn_id = turn_id
        self._timeouts = timeouts
        self._wait_s = timeouts.block_ms / 1000
        now = time.monotonic()
        self._progress = _Progress((0, 0), first_agent, now + timeouts.start_s, quiet_since=now)
        self._follower: _Follower | None = None

    async def open(self, redis: aioredis.Redis, after: str = "0-0") -> None:
        """Follow the stream from after entry id `after`."""
        if after != "0-0":
            # Resuming: the entry the client last saw tells which run it was following.
            seen = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(self._key, min=after, max=after))
            if seen:
                self._progress.newest_run = peek_entry(seen[0][1]).run
                self._progress.waiting_for = None
        self._follower = self._hub.add_follower(self._key, after)

    def close(self) -> None:
        if self._follower is not None:
            self._hub.remove_follower(self._follower)
            self._follower = None

    def listen(self, listener: Callable[[], bool]) -> None:
        """Have `listener` called the moment the hub gives a batch, inside the hub's hand-out: it may `poll()`
        and pass the batch on there and then, and returns whether it did; if not, `ready()` is done as usual.
        A relayed event then wakes no task (the SSE response writes it from there: gateway/sse.py)."""
        assert self._follower is not None, "listen() before open() or after close()"
        self._follower.listener = listener

    def poll(self) -> list[tuple[str, EntryView]] | None:
        """The entries that came, in stream order, up to the terminal one (there may be none to pass on: []);
        None when none came. Raises TurnTimeoutError once the deadline has passed with nothing come: the deadline
        counts only while waiting (what came is passed on first)."""
        follower = self._follower
        assert follower is not None, "poll() before open() or after close()"
        raw = follower.take()
        if raw is None:
            progress = self._progress
            if progress.deadline <= time.monotonic():
                raise TurnTimeoutError(self._turn_id, waiting_for=progress.waiting_for, last_run=progress.newest_run)
            return None
        self._hub.taken(follower)
        return self._progress.take(raw, self._timeouts)

    def ready(self) -> asyncio.Future[None]:
        """Done once there may be something to `poll()`: a batch came, the hub ticked, or the deadline (or the
        quiet notice) is near."""
        follower = self._follower
        assert follower is not None, "ready() before open() or after close()"
        # The hub's tick wakes it at least that often; a timer only for a nearer limit.
        now = time.monotonic()
        limit_s = min(self._wait_s, self._progress.deadline - now)
        notice_s = self._timeouts.quiet_notice_s
        if notice_s is not None and not self._progress.noticed:
            limit_s = min(limit_s, self._progress.quiet_since + notice_s - now)
        return follower.arm(limit_s if limit_s < self._hub.tick_s else None)

    def quiet_notice(self) -> bool:
        """True, once per silence, when the turn has been quiet for `quiet_notice_s`: its client should be told."""
        progress, notice_s = self._progress, self._timeouts.quiet_notice_s
        if notice_s is None or progress.noticed or time.monotonic() - progress.quiet_since < notice_s:
            return False
        progress.noticed = True
        return True

    def keep_waiting(self) -> None:
        """After a timeout that did not end the turn (a worker runs it, and only went quiet): wait on, as for a
        running worker."""
        self._progress.waiting_for = None
        self._progress.deadline = time.monotonic() + self._timeouts.idle_s
