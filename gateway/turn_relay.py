"""Everything the gateway does with a turn besides ChatKit: start it, follow its stream, admit it past a running
turn of the same thread (double-texting), and stop it. Shared by the ChatKit server and the turn routes, and by
every gateway replica: all state lives in NATS, Redis and the database."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import nats.errors
import nats.js.errors
import redis.asyncio as aioredis
import structlog
from chatkit.types import (
    ErrorEvent,
    ProgressUpdateEvent,
    ThreadItemRemovedEvent,
    ThreadStreamEvent,
)
from nats.aio.client import Client as NATS
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kitrelay.gateway.context import HeldMessage, SentClaim
from kitrelay.gateway.errors import ApiError
from kitrelay.gateway.relay import StreamHubs, Timeouts, TurnReader, TurnTimeoutError, entry_before, split_event_id
from kitrelay.gateway.watch_keys import WatchKeys
from kitrelay.services.turns import TurnRecords, end_statement, start_statement
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import EntryView, TurnEnd, TurnEntry, TurnRequest, TurnStatus, event_json
from kitrelay.shared.metrics import EVENTS_RELAYED, SSE_STREAMS_OPEN, TURNS_STARTED
from kitrelay.shared.names import cancel_subject, turn_stream_key, turn_watch_key
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.store.chatkit_store import Statement
from kitrelay.shared.telemetry import current_trace_context, trace_id_of
from kitrelay.shared.turn_bus import (
    active_turn,
    claim_thread,
    give_up_turn,
    last_entry,
    newest_entry_id,
    publish_turn,
    release_thread,
)

log = logging.getLogger(__name__)

StopOutcome = Literal["stopping", "cancelled", "already_ended"]
# One relayed SSE event: its Redis entry id (None for events the relay makes itself) and its JSON.
RelayedFrame = tuple[str | None, str]
_ITEM_EVENTS = frozenset({"thread.item.added", "thread.item.done"})
_HIDDEN_ITEMS = frozenset({"hidden_context_item", "sdk_hidden_context"})
# How often a wait for the thread's running turn looks whether that turn has ended meanwhile.
ENDED_CHECK_S = 1.0
# A thread's claim outlives any sane turn; it only matters when a turn died without ending (then it frees itself).
THREAD_CLAIM_TTL_S = 600
# A stop that its worker did not confirm in time is asked again, this many times longer, if the turn's newest entry
# is younger than RECENT_ENTRY_S: its worker is alive.
STOP_RETRY_FACTOR = 5
RECENT_ENTRY_S = 2.0
RELAYED_COUNT_EVERY = 100
# The longest a started turn's record waits for the turn's first event (see TurnRelay.start).
RECORD_AFTER_S = 0.25
# A claim sent ahead that no turn took by then is given back (see ClaimAhead).
CLAIM_AHEAD_UNUSED_S = 60.0
# Claims given back by their timer, held until done.
_RELEASING: set[asyncio.Task[None]] = set()


BUSY_MESSAGE = "The previous reply in this conversation is still being written. Wait for it, or stop it first."
QUIET_NOTICE = "Still working on it…"
_QUIET_NOTICE_JSON = event_json(ProgressUpdateEvent(text=QUIET_NOTICE, icon="clock"))
RECONNECTING_NOTICE = "Reconnecting to the assistant…"
# One try at handing a turn to JetStream; while NATS is away each try waits this long, then the next is sent (the
# same message id: JetStream stores the turn once, however many tries reach it).
PUBLISH_TRY_S = 2.0
# Between two tries at reaching NATS or Redis while they are away.
RETRY_PAUSE_S = 0.25
# What is not a refusal but an outage: the server is away, or restarting.
NATS_AWAY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
)
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, OSError)


class TurnRejectedError(Exception):
    """DOUBLE_TEXT_POLICY=reject and the thread is still answering."""


class HandOverDelayedError(Exception):
    """The turn's first publish got no answer: NATS is away. `TurnRelay.keep_handing_over` goes on trying."""


class TurnNotStartedError(Exception):
    """The turn could not be started (NATS or Redis stayed away past the start timeout), and never will be: its
    message says so, in words for the user."""


@dataclass(frozen=True)
class RelayConfig:
    namespace: str
    entry_agent: AgentKind
    timeouts: Timeouts
    stream_ttl_s: int
    double_text: Literal["enqueue", "reject", "interrupt"]
    watch_ttl_s: float
    cancel_confirm_s: float
    closed_ttl_s: int = 3600
    # A thread's next message goes to the kind that answered its last (Settings.STICKY_ROUTING).
    sticky_routing: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            namespace=settings.NAMESPACE,
            entry_agent=settings.ENTRY_AGENT,
            timeouts=Timeouts(
                start_s=settings.TURN_START_TIMEOUT_S,
                handoff_s=settings.HANDOFF_TIMEOUT_S,
                idle_s=settings.TURN_IDLE_TIMEOUT_S,
                block_ms=min(settings.RELAY_BLOCK_MS, int(settings.DETACHED_GRACE_S * 500)),
                quiet_notice_s=settings.TURN_QUIET_NOTICE_S or None,
            ),
            stream_ttl_s=settings.TURN_STREAM_TTL_S,
            double_text=settings.DOUBLE_TEXT_POLICY,
            watch_ttl_s=settings.DETACHED_GRACE_S,
            cancel_confirm_s=settings.CANCEL_CONFIRM_TIMEOUT_S,
            closed_ttl_s=settings.TURN_STREAM_TTL_S,
            sticky_routing=settings.STICKY_ROUTING,
        )


class TurnRelay:
    def __init__(self, *, nc: NATS, redis: aioredis.Redis, turns: TurnRecords, config: RelayConfig) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._redis = redis
        # Every stream this gateway follows is read through its hubs (started with the gateway, or a hub's first
        # follower).
        self.hubs = StreamHubs(redis, tick_s=config.timeouts.block_ms / 1000)
        # And the watch keys of the turns it follows are refreshed together, once per tick.
        self.watch_keys = WatchKeys(redis, ttl_s=config.watch_ttl_s, every_s=config.timeouts.block_ms / 1000)
        self.turns = turns
        self.config = config
        # Started turns whose record this gateway has yet to write, by turn id (see `start`).
        self._recording: dict[str, _TurnRecording] = {}

    async def make_way(self, thread_id: str) -> None:
        """Before a request that starts a turn on a thread reaches the ChatKit server (which stores the user's
        message first): under "reject" a busy thread refuses it with 409, nothing stored; under "interrupt" the
        running turn is stopped first, so its stopped reply comes before the new message in the thread."""
        if self.config.double_text == "enqueue":
            return  # the new turn waits in `admit`
        running = await active_turn(self._redis, self.config.namespace, thread_id)
        if running is None:
            return
        if self.config.double_text == "reject":
            raise ApiError(409, "turn_in_progress", BUSY_MESSAGE)
        await self.stop(running)
        await self._wait_released(thread_id, running)

    def claim_ahead(self, thread_id: str) -> ClaimAhead:
        """Send the claim of a thread for the turn a request is about to start, before the ChatKit server runs:
        `admit` then waits for its answer rather than asking again (a Redis round trip less on the way to the
        turn's first event). The request's context names the turn by it (`RequestContext.turn_id_for`)."""
        return ClaimAhead(self._redis, self.config.namespace, thread_id)

    async def admit(self, turn: TurnRequest, *, ahead: SentClaim | None = None) -> AsyncIterator[ThreadStreamEvent]:
        """Claim the thread for `turn`, applying the double-texting policy while another turn holds it. Yields
        what the client should see meanwhile; raises TurnRejectedError under the reject policy. A Redis that is
        away (restarting) is waited for, up to the start timeout, then TurnNotStartedError."""
        ns = self.config.namespace
        announced = reconnecting = False
        deadline = time.monotonic() + self.config.timeouts.start_s
        first = ahead.take(turn.thread_id, turn.turn_id) if ahead is not None else None
        while True:
            try:
                claimed = (
                    await first
                    if first is not None
                    else await claim_thread(self._redis, ns, turn.thread_id, turn.turn_id, ttl_s=THREAD_CLAIM_TTL_S)
                )
                if claimed:
                    return
                first = None
                running = await active_turn(self._redis, ns, turn.thread_id)
            except REDIS_AWAY as exc:
                first = None
                if time.monotonic() > deadline:
                    log.warning("turn %s not started: Redis stayed away (%s)", turn.turn_id, exc)
                    raise TurnNotStartedError(
                        "The assistant could not be reached, so this message was saved but not answered. "
                        "Please try again in a moment."
                    ) from exc
                if not reconnecting:
                    log.warning("turn %s waits for Redis: %s", turn.turn_id, exc)
                    yield ProgressUpdateEvent(text=RECONNECTING_NOTICE, icon="clock")
                    reconnecting = True
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if running is None:
                continue  # it just ended: try again
            if self.config.double_text == "reject":
                raise TurnRejectedError(running)
            if self.config.double_text == "interrupt":
                await self.stop(running)
            elif not announced:
                yield ProgressUpdateEvent(text="Waiting for the previous reply to finish…", icon="clock")
                announced = True
            await self._wait_released(turn.thread_id, running)

    async def _wait_released(self, thread_id: str, turn_id: str) -> None:
        ns = self.config.namespace
        deadline = time.monotonic() + self.config.timeouts.idle_s
        looked = time.monotonic()
        while await active_turn(self._redis, ns, thread_id) == turn_id:
            now = time.monotonic()
            if now > deadline:
                # The running turn went silent without ending: free the thread rather than wait forever.
                await release_thread(self._redis, ns, thread_id, turn_id)
                return
            if now - looked >= ENDED_CHECK_S:
                looked = now
                # A turn that ended without its release (a Redis Cluster node died between the two writes) frees
                # the thread now, not after the idle timeout.
                last = await last_entry(self._redis, ns, turn_id)
                if last is not None and last.is_terminal:
                    await release_thread(self._redis, ns, thread_id, turn_id)
                    return
            await asyncio.sleep(0.1)

    async def start(self, turn: TurnRequest, *, user_message: HeldMessage | None = None) -> None:
        """Hand the turn to the workers; record it (with the user's message it answers, when the store held it:
        one transaction) once its worker has read the conversation. The thread must already be claimed (see
        `admit`).

        The record waits for the turn's first relayed event (`record_now`, from the stream), at most
        RECORD_AFTER_S: written while the worker reads the conversation, on a machine of few cores, it took the
        CPU that read needed and added 2 ms to the time to first event. The message travels in the turn
        (`TurnRequest.user_item`), and every hop's worker saves it with its first write (services/turn_log.py),
        so a gateway that dies before its write loses nothing, and a worker's end of the turn may come before its
        record (services/turns.end_statement). Whatever reads or ends a turn's record here waits for the write
        (`recorded`).

        The current span (the gateway's relay span of the turn) becomes the turn's trace context: its trace id is
        recorded with the turn, and every hop of the turn joins that trace."""
        turn.trace = current_trace_context(turn.trace)
        with structlog.contextvars.bound_contextvars(turn_id=turn.turn_id, thread_id=turn.thread_id):
            record = self._start_record(turn)
            try:
                await publish_turn(self._js, self.config.namespace, turn, ack_timeout_s=PUBLISH_TRY_S)
            except NATS_AWAY as exc:
                # Not refused: NATS is away, or slow. The publish may still be stored (nats-py keeps it for the
                # reconnection), so the turn is neither failed nor recorded yet (`keep_handing_over`).
                log.warning("turn %s: no answer from JetStream (%r); trying again", turn.turn_id, exc)
                raise HandOverDelayedError(turn.turn_id) from exc
            except BaseException:
                # Never handed over, so not recorded: the user's message is still saved.
                if user_message is not None:
                    await asyncio.shield(user_message.save(()))
                raise
            self._handed_over(turn, user_message, record)

    def _handed_over(self, turn: TurnRequest, user_message: HeldMessage | None, record: Statement) -> None:
        save = (
            functools.partial(user_message.save, [record])
            if user_message is not None
            else functools.partial(self.turns.record, record)
        )
        self._recording[turn.turn_id] = _TurnRecording(turn.turn_id, turn.thread_id, save, self._recording)
        TURNS_STARTED.labels(turn.agent).inc()
        log.info("turn %s published for thread %s to %s", turn.turn_id, turn.thread_id, turn.agent)

    async def keep_handing_over(
        self, turn: TurnRequest, *, user_message: HeldMessage | None = None
    ) -> AsyncIterator[ThreadStreamEvent]:
        """After HandOverDelayedError: publish the turn again (JetStream stores it once, by its message id) until
        NATS answers, telling the client meanwhile. Past the start timeout the turn is given up for good: ended on
        its stream before any worker runs it, so a publish still stored later is never answered, and the client
        gets TurnNotStartedError. If a worker runs it by then (a publish got through unanswered), it goes on."""
        yield ProgressUpdateEvent(text=RECONNECTING_NOTICE, icon="clock")
        deadline = time.monotonic() + self.config.timeouts.start_s
        record = self._start_record(turn)
        with structlog.contextvars.bound_contextvars(turn_id=turn.turn_id, thread_id=turn.thread_id):
            while True:
                await asyncio.sleep(RETRY_PAUSE_S)
                try:
                    await publish_turn(self._js, self.config.namespace, turn, ack_timeout_s=PUBLISH_TRY_S)
                    break
                except NATS_AWAY as exc:
                    if time.monotonic() < deadline:
                        continue
                    reason = f"could not be handed to a {turn.agent} worker: {exc!r}"
                    if not await self._give_up(turn.turn_id, turn.thread_id, (0, 0), "failed", reason, hop=0):
                        log.info("turn %s: a worker took it after all", turn.turn_id)
                        break
                    log.warning("turn %s %s", turn.turn_id, reason)
                    await self._record_failed(turn, user_message, reason)
                    raise TurnNotStartedError(
                        "The assistant could not be reached, so this message was saved but not answered. "
                        "Please try again in a moment."
                    ) from exc
            self._handed_over(turn, user_message, record)

    async def not_started(self, turn: TurnRequest, user_message: HeldMessage | None, reason: str) -> None:
        """Record a turn that never reached the workers as failed (with the user's message, still held)."""
        await self._record_failed(turn, user_message, reason)

    async def _record_failed(self, turn: TurnRequest, user_message: HeldMessage | None, reason: str) -> None:
        ended = end_statement(
            turn.identity,
            turn_id=turn.turn_id,
            thread_id=turn.thread_id,
            agent=turn.agent,
            trace_id=trace_id_of(turn.trace.traceparent),
            status="failed",
        )
        try:
            if user_message is not None:
                await asyncio.shield(user_message.save([ended]))
            else:
                await self.turns.record(ended)
        except Exception:
            log.exception("could not record turn %s as failed (%s)", turn.turn_id, reason)

    def _start_record(self, turn: TurnRequest) -> Statement:
        return start_statement(
            turn.identity,
            turn_id=turn.turn_id,
            thread_id=turn.thread_id,
            agent=turn.agent,
            trace_id=trace_id_of(turn.trace.traceparent),
        )

    def record_now(self, turn_id: str) -> None:
        """Write the turn's record now, if it waits: its first event reached the client, or the client left."""
        if (recording := self._recording.get(turn_id)) is not None:
            recording.now()

    async def recorded(self, turn_id: str) -> None:
        """Return once this gateway's write of the turn's record is done (at once if it has none waiting)."""
        if (recording := self._recording.get(turn_id)) is not None:
            await asyncio.shield(recording.now())

    async def thread_recorded(self, thread_id: str) -> None:
        """`recorded` for every turn of the thread this gateway started."""
        waiting = [r.now() for r in list(self._recording.values()) if r.thread_id == thread_id]
        if waiting:
            await asyncio.shield(asyncio.gather(*waiting))

    def follow_raw(self, turn_id: str, thread_id: str, *, first_agent: AgentKind, after: str = "0-0") -> FollowedTurn:
        """The turn's ChatKit events until its end, in batches of (entry id, the event's JSON as the client
        receives it), passed on as the worker wrote them, without rebuilding models. A turn nobody picks up (or
        that goes quiet) is ended here with a clear, retryable error event (which has no entry id). Close it
        (`aclose`) however its reading ends."""
        return FollowedTurn(self, turn_id, thread_id, first_agent=first_agent, after=after)

    async def timed_out(self, turn_id: str, thread_id: str, exc: TurnTimeoutError) -> list[RelayedFrame] | None:
        """End a turn nobody picked up (or that went quiet) here; the client is shown a retryable error. None when
        a worker has taken it up meanwhile (its first entry is on its way): the turn is not over, follow on."""
        hop = None if exc.waiting_for is None else (0 if exc.last_run == (0, 0) else exc.last_run[0] + 1)
        if not await self._give_up(turn_id, thread_id, exc.last_run, "failed", str(exc), hop=hop):
            log.info("turn %s: a worker took it as it was given up; following on", turn_id)
            return None
        log.warning("%s", exc)
        message = (
            f"No {exc.waiting_for} worker picked up this message in time. Please try again in a moment."
            if exc.waiting_for
            else "The assistant stopped responding. Please try again."
        )
        return [(None, event_json(ErrorEvent(code="custom", message=message, allow_retry=True)))]

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def close(self) -> None:
        # A gateway that stops leaves no turn it started unrecorded.
        if self._recording:
            await asyncio.gather(*(r.now() for r in list(self._recording.values())))
        await self.watch_keys.close()
        await self.hubs.stop()

    async def stop(self, turn_id: str) -> StopOutcome:
        """Stop a turn: the worker running it confirms within CANCEL_CONFIRM_TIMEOUT_S and saves what it has; a
        turn no worker runs (still queued, or its worker died) is ended here so that none ever will."""
        await self.recorded(turn_id)  # its end must come after its record's start
        last = await last_entry(self._redis, self.config.namespace, turn_id)
        if last is not None and last.is_terminal:
            return "already_ended"
        subject = cancel_subject(self.config.namespace, turn_id)
        try:
            await self._nc.request(subject, b"stop", timeout=self.config.cancel_confirm_s)
            return "stopping"
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            # A worker that wrote to the turn a moment ago is alive, only slow to answer (a loaded machine): ending
            # the turn here would cut the client's stream while that worker goes on and saves another reply.
            if isinstance(exc, nats.errors.TimeoutError) and await self._recently_written(turn_id):
                try:
                    await self._nc.request(subject, b"stop", timeout=self.config.cancel_confirm_s * STOP_RETRY_FACTOR)
                    return "stopping"
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    pass
            record = await self.turns.get_any(turn_id)
            await self._end_here(
                turn_id,
                record.thread_id if record else None,
                last.run if last else (0, 0),
                "cancelled",
                "stopped before any worker ran it",
            )
            return "cancelled"

    async def _recently_written(self, turn_id: str) -> bool:
        """The turn's newest entry is younger than RECENT_ENTRY_S by Redis's clock (entry ids are its times)."""
        newest = await newest_entry_id(self._redis, self.config.namespace, turn_id)
        if newest is None:
            return False
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return now_ms - int(newest.split("-", 1)[0]) < RECENT_ENTRY_S * 1000

    async def _end_here(
        self, turn_id: str, thread_id: str | None, last_run: tuple[int, int], status: TurnStatus, reason: str
    ) -> None:
        """End the turn on its stream whatever runs it, at a run newer than any so far, so a worker that picks it
        up late sees it is over instead of answering a client that has gone."""
        await self._give_up(turn_id, thread_id, last_run, status, reason, hop=None)

    async def _give_up(
        self,
        turn_id: str,
        thread_id: str | None,
        last_run: tuple[int, int],
        status: TurnStatus,
        reason: str,
        *,
        hop: int | None,
    ) -> bool:
        """End the turn here unless a worker has opened a run of `hop` or later (None: whatever runs); True when
        it is over (its record ended too). Atomic with the workers' claims (shared/turn_bus.give_up_turn): a turn
        declared failed never runs, and a turn that runs is never declared failed."""
        entry = TurnEntry(
            turn_id=turn_id, hop=last_run[0] + 1, attempt=1, seq=0, body=TurnEnd(status=status, error=reason)
        )
        ended = await give_up_turn(
            self._redis,
            self.config.namespace,
            entry,
            thread_id=thread_id,
            unless_running_hop=hop,
            ttl_s=self.config.stream_ttl_s,
            closed_ttl_s=self.config.closed_ttl_s,
        )
        if ended:
            await self.recorded(turn_id)  # its end must come after its record's start
            await self.turns.finish(turn_id, status)
        return ended


class FollowedTurn:
    """A turn's relayed events, one client's (`TurnRelay.follow_raw`): an async iterator of batches of frames,
    not a generator. Every event of every stream comes through here and the SSE response's `__anext__`; each
    layer of async generators in between was one more frame to resume per event, so this one waits on the hub's
    future itself (relay.TurnReader). Its bookkeeping (the hub's follower, the watch key, the gauges) is
    released by `aclose()`, at the end of the turn, or when it is collected, whichever comes first."""

    def __init__(self, relay: TurnRelay, turn_id: str, thread_id: str, *, first_agent: AgentKind, after: str) -> None:
        self._reader: TurnReader | None = None
        self._opened = False
        self._done = False
        self._relay = relay
        self._turn_id = turn_id
        self._thread_id = thread_id
        self._first_agent = first_agent
        # Resuming inside a pack ("<entry id>.<n>"): that entry is read again and its first n + 1 events skipped.
        start, resumed_in = split_event_id(after)
        self._after = entry_before(start) if resumed_in else after
        self._client = _ClientView(turn_id, resume_at=start, skip=resumed_in)
        self._watch_key = turn_watch_key(relay.config.namespace, turn_id)
        # Counted into the metric every RELAYED_COUNT_EVERY events and at the end, not per batch: the counter's
        # lock was a few per cent of the gateway at thousands of streams.
        self._relayed = 0
        self._sink: Callable[[list[RelayedFrame]], bool] | None = None
        # What a listener took from the hub and left to this iterator: frames to return, and whether the turn ended;
        # or what reading the batch raised (an entry this relay cannot read), which this iterator raises.
        self._left: tuple[list[RelayedFrame], bool] | Exception | None = None

    def __aiter__(self) -> FollowedTurn:
        return self

    def push_to(self, sink: Callable[[list[RelayedFrame]], bool]) -> None:
        """Hand batches to `sink` the moment the hub reads them, inside its hand-out, instead of waking the task
        that iterates: `sink` says whether it passed them on. The end of the turn, a timeout, and whatever `sink`
        did not take still come from `__anext__`, which must still be awaited until it ends. Before the first
        `__anext__` (which starts following the turn)."""
        self._sink = sink

    def _on_batch(self) -> bool:
        """The hub's listener (relay.TurnReader.listen): the batch's frames go to the sink, unless they end the
        turn, or the sink cannot take them now (then `__anext__` returns them, woken as usual)."""
        reader, sink = self._reader, self._sink
        if reader is None or sink is None or self._left is not None:
            return False  # the iterating task has frames to return first: it takes this batch after them
        try:
            batch = reader.poll()
            if not batch:
                return True  # nothing to pass on (entries of a superseded run)
            frames = self._client.frames(batch)
        except Exception as exc:
            # Raised where the turn's own reader would have met it: the stream ends with it, not the hub.
            self._left = exc
            return False
        ended = batch[-1][1].is_terminal
        if not ended and (not frames or self._pushed(sink, frames)):
            self._count(frames)
            return True
        self._left = (frames, ended)
        return False

    def _pushed(self, sink: Callable[[list[RelayedFrame]], bool], frames: list[RelayedFrame]) -> bool:
        try:
            return sink(frames)
        except Exception:
            # Taken from the hub already: the iterating task passes them on (and meets the failure itself).
            log.exception("turn %s: the relay's sink failed; its reader passes the events on", self._turn_id)
            return False

    async def __anext__(self) -> list[RelayedFrame]:
        reader = self._reader
        if reader is None:
            if self._done:
                raise StopAsyncIteration
            reader = await self._open()
        while True:
            try:
                return await self._next_frames(reader)
            except TurnTimeoutError as exc:
                frames = await self._relay.timed_out(self._turn_id, self._thread_id, exc)
                if frames is None:
                    reader.keep_waiting()
                    continue
                self._close()
                return frames

    async def _next_frames(self, reader: TurnReader) -> list[RelayedFrame]:
        while True:
            if isinstance(self._left, Exception):
                failure, self._left = self._left, None
                raise failure
            if self._left is not None:
                frames, ended = self._left
                self._left = None
            elif (batch := reader.poll()) is None:
                if reader.quiet_notice():
                    return [(None, _QUIET_NOTICE_JSON)]
                await reader.ready()
                continue
            elif not batch:
                continue
            else:
                frames, ended = self._client.frames(batch), batch[-1][1].is_terminal
            if ended:
                self._close()
            if frames:
                self._count(frames)
                return frames
            if self._done:
                raise StopAsyncIteration

    def _count(self, frames: list[RelayedFrame]) -> None:
        self._relayed += len(frames)
        if self._relayed >= RELAYED_COUNT_EVERY:
            EVENTS_RELAYED.inc(self._relayed)
            self._relayed = 0

    async def _open(self) -> TurnReader:
        relay = self._relay
        self._opened = True
        SSE_STREAMS_OPEN.inc()
        self._reader = reader = TurnReader(
            relay.hubs.for_key(turn_stream_key(relay.config.namespace, self._turn_id)),
            relay.config.namespace,
            self._turn_id,
            first_agent=self._first_agent,
            timeouts=relay.config.timeouts,
        )
        try:
            await relay.watch_keys.watch(self._watch_key)  # counted at once: `_close` always balances it
            await reader.open(relay.redis, self._after)
            if self._sink is not None:
                reader.listen(self._on_batch)
        except BaseException:
            self._close()
            raise
        return reader

    def _close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._opened:
            EVENTS_RELAYED.inc(self._relayed)
            self._relayed = 0
            self._relay.watch_keys.unwatch(self._watch_key)
            SSE_STREAMS_OPEN.dec()

    async def aclose(self) -> None:
        self._close()

    def __del__(self) -> None:
        # As an async generator is closed when it is collected: a reader nobody closed still leaves the hub.
        self._close()


class ClaimAhead:
    """A claim of a thread sent before the turn that needs it exists (`TurnRelay.claim_ahead`): taken by that
    turn's `admit`, or given back once the request's stream has started no turn with it."""

    def __init__(self, redis: aioredis.Redis, namespace: str, thread_id: str) -> None:
        self._redis = redis
        self._namespace = namespace
        self.thread_id = thread_id
        self.turn_id = new_id("turn")
        self._claim = asyncio.ensure_future(
            claim_thread(redis, namespace, thread_id, self.turn_id, ttl_s=THREAD_CLAIM_TTL_S)
        )
        self._taken = False
        # However the request ends (even a stream whose ChatKit server never ran), the claim does not outlive it.
        self._timer = asyncio.get_running_loop().call_later(CLAIM_AHEAD_UNUSED_S, self._expire)

    def take(self, thread_id: str, turn_id: str) -> asyncio.Future[bool] | None:
        if self._taken or (thread_id, turn_id) != (self.thread_id, self.turn_id):
            return None
        self._taken = True
        self._timer.cancel()
        return self._claim

    def _expire(self) -> None:
        task = asyncio.get_running_loop().create_task(self.release_if_unused())
        _RELEASING.add(task)
        task.add_done_callback(_RELEASING.discard)

    async def release_if_unused(self) -> None:
        if self._taken:
            return
        self._taken = True
        self._timer.cancel()
        try:
            claimed = await self._claim
        except Exception:
            return  # never made: nothing to give back
        if claimed:
            await release_thread(self._redis, self._namespace, self.thread_id, self.turn_id)


class _TurnRecording:
    """A started turn's record (with the user's message), written by `now()` or after RECORD_AFTER_S, whichever
    comes first; forgotten once written. A write that fails is logged: the turn's worker records the turn at its
    end and saves the message with its first write."""

    def __init__(
        self,
        turn_id: str,
        thread_id: str,
        save: Callable[[], Awaitable[None]],
        waiting: dict[str, _TurnRecording],
    ) -> None:
        self.turn_id = turn_id
        self.thread_id = thread_id
        self._save = save
        self._waiting = waiting
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(RECORD_AFTER_S, self.now)

    def now(self) -> asyncio.Task[None]:
        if self._task is None:
            self._timer.cancel()
            self._task = asyncio.create_task(self._write(), name=f"record turn {self.turn_id}")
        return self._task

    async def _write(self) -> None:
        try:
            await self._save()
        except Exception:
            log.exception("could not record turn %s; its worker records it, and the user's message", self.turn_id)
        finally:
            self._waiting.pop(self.turn_id, None)


class _ClientView:
    """What one client is shown of a turn's entries: each event as the worker wrote it, minus hidden context items,
    plus the withdrawal of items an earlier attempt showed once a newer attempt of the same hop takes over (its
    worker died), whatever is left of the dead attempt's entries in Redis. The newer attempt writes the same
    withdrawals (for clients that re-attach after the dead attempt's entries): each reaches a client once."""

    def __init__(self, turn_id: str, *, resume_at: str, skip: int) -> None:
        self._turn_id = turn_id
        self._shown: dict[tuple[int, int], list[str]] = {}  # item ids shown, by the run that wrote them
        self._withdrawn: set[str] = set()  # item ids this view withdrew itself
        self._run = (-1, -1)
        self._resume_at = resume_at  # the entry a resume inside a pack starts in, and how many of its events to skip
        self._skip = skip

    def frames(self, batch: list[tuple[str, EntryView]]) -> list[RelayedFrame]:
        frames: list[RelayedFrame] = []
        for entry_id, entry in batch:
            if entry.run != self._run:
                self._run = entry.run
                for removed in _superseded(self._shown, entry.run):
                    self._withdrawn.add(removed.item_id)
                    frames.append((None, event_json(removed)))
            if entry.kind == "pack":
                frames.extend(_pack_frames(entry_id, entry, skip=self._skip if entry_id == self._resume_at else 0))
            elif entry.event is not None:
                kind = entry.event_type
                if kind in _ITEM_EVENTS and entry.item_id is not None:
                    self._shown.setdefault(entry.run, []).append(entry.item_id)
                    if kind == "thread.item.done" and entry.item_type in _HIDDEN_ITEMS:
                        continue  # context for the model, never shown (as the ChatKit SDK does)
                elif kind == "thread.item.removed" and entry.item_id in self._withdrawn:
                    continue  # withdrawn already, above
                frames.append((entry_id, entry.event))
            elif entry.kind == "end" and entry.status != "completed":
                log.info("turn %s ended %s: %s", self._turn_id, entry.status, entry.error)
        return frames


def _pack_frames(entry_id: str, entry: EntryView, *, skip: int) -> list[RelayedFrame]:
    """A pack's events as frames: each has an id of its own to resume after ("<entry id>.<n>"), the last one the
    entry's id (after it, the whole entry was seen)."""
    parts = entry.events()
    last = len(parts) - 1
    return [(entry_id if n == last else f"{entry_id}.{n}", data) for n, data in enumerate(parts) if n >= skip]


def _superseded(shown: dict[tuple[int, int], list[str]], run: tuple[int, int]) -> list[ThreadItemRemovedEvent]:
    """Removals of the items shown from earlier attempts of `run`'s hop, forgotten once returned."""
    stale: list[ThreadItemRemovedEvent] = []
    for earlier in [r for r in shown if r[0] == run[0] and r[1] < run[1]]:
        stale.extend(ThreadItemRemovedEvent(item_id=item_id) for item_id in shown.pop(earlier))
    return stale
