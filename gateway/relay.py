"""Reads turns' Redis streams for one gateway process: one hub XREADs every followed stream at once, and each
follower reads its turn from the hub, from a given entry id until the turn's terminal entry.

One blocking XREAD per open stream would hold one Redis connection (and its buffers) per stream: at thousands of
streams that is most of the gateway's memory and a system call per event. The hub holds one connection, asks
for all followed keys in each XREAD, and hands each follower its entries in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from opentelemetry.instrumentation.utils import suppress_instrumentation
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kitrelay.shared.messages import EntryView, peek_entry
from kitrelay.shared.names import turn_stream_key
from kitrelay.shared.settings import AgentKind

log = logging.getLogger(__name__)

# What XREAD returns with decode_responses off: [(key, [(entry id, {field: value})])].
RawEntries = list[tuple[bytes, dict[bytes, bytes]]]
XReadResponse = list[tuple[bytes, RawEntries]]
# How long the hub's XREAD blocks when nothing comes; a new follower wakes it at once (CLIENT UNBLOCK).
HUB_BLOCK_MS = 2000
# Entries per stream per XREAD: what one follower holds at most while its client is slower than its worker (the
# rest waits in Redis), so it bounds the gateway's memory per open stream.
HUB_BATCH = 64
REDIS_RETRY_S = 0.5


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
    block_ms: int  # the longest a follower waits before its on_tick runs again


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
    key: bytes
    last_id: str
    batches: asyncio.Queue[RawEntries] = field(default_factory=asyncio.Queue)


class StreamHub:
    """The gateway process's one reader of turn streams. `start()` in the lifespan, `stop()` at shutdown."""

    def __init__(self, redis: aioredis.Redis, *, block_ms: int = HUB_BLOCK_MS, batch: int = HUB_BATCH) -> None:
        self._redis = redis
        # A connection of its own: it sits in XREAD BLOCK, and CLIENT UNBLOCK names it.
        self._reader = redis.client()
        # Its XREAD replies are read as hiredis returns them (see `_xread_entries`): redis-py's own reshaping of
        # every entry cost more than the rest of the relay together.
        self._reader.set_response_callback("XREAD", _raw_reply)
        self._block_ms = block_ms
        self._batch = batch
        self._followers: dict[bytes, list[_Follower]] = {}
        # Where the XREAD in flight reads each key from; a followed key missing here was left out (its followers
        # all held a batch) or came after the read was asked for.
        self._read_from: dict[bytes, str] = {}
        self._changed = asyncio.Event()
        self._generation = 0  # bumped by every new follower
        self._reading: int | None = None  # the generation an XREAD in flight was asked for
        self._client_id: int | None = None
        self._waking: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="turn stream hub")

    async def stop(self) -> None:
        for task in (self._task, self._waking):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        await self._reader.aclose()

    @property
    def followed(self) -> int:
        return sum(len(followers) for followers in self._followers.values())

    @contextlib.contextmanager
    def follow(self, key: str, after: str) -> Iterator[_Follower]:
        """A follower of `key` from after entry id `after`: its `batches` queue gets the entries, in order."""
        follower = _Follower(key.encode(), after)
        self._followers.setdefault(follower.key, []).append(follower)
        self._generation += 1
        self._changed.set()
        self._wake()
        try:
            yield follower
        finally:
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
            await self._read_forever()

    async def _read_forever(self) -> None:
        while True:
            if not self._followers:
                self._changed.clear()
                await self._changed.wait()
                continue
            generation = self._generation
            # Backpressure: a follower still holding a batch is not read for until it takes it, so a client (or a
            # relay) slower than its worker leaves the backlog in Redis rather than in this process.
            streams: dict[bytes, str] = {}
            for key, followers in self._followers.items():
                ready = [f.last_id for f in followers if f.batches.empty()]
                if ready:
                    streams[key] = min(ready, key=_id_key)
            self._read_from = streams
            if not streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if self._client_id is None:
                    self._client_id = int(await self._reader.client_id())
                self._reading = generation
                response = _xread_entries(
                    await self._reader.xread(streams, count=self._batch, block=self._block_ms)  # type: ignore[arg-type]
                )
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    # redis-py reports a cancelled read as a timeout: this is the hub stopping, not Redis failing.
                    raise asyncio.CancelledError from exc
                # Redis went away: followers wait within their own deadlines; read again once it is back.
                log.warning("reading turn streams: %s; retrying", exc)
                self._client_id = None
                await asyncio.sleep(REDIS_RETRY_S)
                continue
            finally:
                self._reading = None
            for key, entries in response:
                self._dispatch(key, entries)

    def taken(self, follower: _Follower) -> None:
        """A follower took its batch: if the XREAD in flight left its key out, or reads it from beyond where this
        follower is, it is read for again at once."""
        if not follower.batches.empty():
            return
        if follower.key not in self._read_from or self._behind_read(follower):
            self._generation += 1
            self._changed.set()
            self._wake()

    def _behind_read(self, follower: _Follower) -> bool:
        start = self._read_from.get(follower.key)
        return start is not None and _id_key(follower.last_id) < _id_key(start)

    def _dispatch(self, key: bytes, entries: RawEntries) -> None:
        for follower in self._followers.get(key, []):
            if not follower.batches.empty():
                continue  # it reads these (and more) from its own last id once it has taken what it holds
            if self._behind_read(follower):
                # It came (or took its batch) after this read was asked for, from further back: the entries in
                # between are not in this reply. The next read starts from its own last id.
                continue
            after = _id_key(follower.last_id)
            mine = [entry for entry in entries if _id_key(entry[0]) > after]
            if mine:
                follower.last_id = mine[-1][0].decode()
                follower.batches.put_nowait(mine)


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


def _xread_entries(response: Any) -> XReadResponse:
    """An XREAD reply as hiredis parsed it (RESP3: {key: [[id, [field, value, ...]], ...]}; RESP2: the same as a
    list of [key, entries] pairs; None when the block ran out) as [(key, [(id, {field: value})])]."""
    if not response:
        return []
    pairs = response.items() if isinstance(response, dict) else response
    return [(key, [(entry_id, _fields(flat)) for entry_id, flat in entries]) for key, entries in pairs]


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


@dataclass
class _Progress:
    """Where a follower is in its turn: the newest run seen, what it waits for, and until when."""

    newest_run: tuple[int, int]
    waiting_for: AgentKind | None
    deadline: float

    def take(self, raw: RawEntries, timeouts: Timeouts) -> list[tuple[str, EntryView]]:
        """The entries of `raw` to pass on, up to the terminal one; entries of runs older than the newest seen
        are dropped, and each entry pushes the deadline out."""
        batch: list[tuple[str, EntryView]] = []
        for raw_id, fields in raw:
            entry = peek_entry(fields)
            if entry.run < self.newest_run:
                continue
            self.newest_run = entry.run
            batch.append((raw_id.decode(), entry))
            if entry.is_terminal:
                break
            if entry.kind == "handoff":
                self.waiting_for = entry.handoff_to
                self.deadline = time.monotonic() + timeouts.handoff_s
            else:
                self.waiting_for = None
                self.deadline = time.monotonic() + timeouts.idle_s
        return batch


async def read_turn(
    hub: StreamHub,
    redis: aioredis.Redis,
    namespace: str,
    turn_id: str,
    *,
    first_agent: AgentKind,
    timeouts: Timeouts,
    after: str = "0-0",
    on_tick: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[list[tuple[str, EntryView]]]:
    """Yield batches of (entry id, entry) in stream order, the terminal entry last.

    Entries of a run older than the newest seen are dropped: a redelivered (or handed-off) turn supersedes what
    an earlier run wrote. `on_tick` runs first, then once per `block_ms` (no wait lasts longer). A Redis that
    goes away for a moment is waited for, within the same deadlines."""
    key = turn_stream_key(namespace, turn_id)
    progress = _Progress((0, 0), first_agent, time.monotonic() + timeouts.start_s)
    if after != "0-0":
        # Resuming: the entry the client last saw tells which run it was following.
        seen = cast(RawEntries, await redis.xrange(key, min=after, max=after))
        if seen:
            progress.newest_run = peek_entry(seen[0][1]).run
            progress.waiting_for = None
    tick_s = timeouts.block_ms / 1000
    next_tick = 0.0
    with hub.follow(key, after) as follower:
        while True:
            now = time.monotonic()
            remaining_s = progress.deadline - now
            if remaining_s <= 0:
                raise TurnTimeoutError(turn_id, waiting_for=progress.waiting_for, last_run=progress.newest_run)
            if on_tick is not None and now >= next_tick:
                # Once per block_ms, not per batch: a write per batch cost the gateway a tenth of its CPU.
                next_tick = now + tick_s
                # Untraced: a span per stream per tick is thousands a second, in no turn's trace.
                with contextlib.suppress(RedisError), suppress_instrumentation():
                    await on_tick()
            if follower.batches.empty():
                try:
                    async with asyncio.timeout(min(timeouts.block_ms / 1000, remaining_s)):
                        raw = await follower.batches.get()
                except TimeoutError:
                    continue
            else:
                raw = follower.batches.get_nowait()
            hub.taken(follower)
            batch = progress.take(raw, timeouts)
            if batch:
                yield batch
                if batch[-1][1].is_terminal:
                    return
