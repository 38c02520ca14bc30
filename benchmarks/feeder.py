"""The stream feeder: stands in for the triage worker where real Python workers cannot keep up with the load
generator, so that what is measured is one gateway process relaying many open streams.

It pulls turns from the triage consumer exactly as a worker does, and answers each with real `TurnEntry`
entries on the turn's Redis stream, written the way the worker's single writer writes them (XADD with MAXLEN,
EXPIRE, the thread's claim released at the end): an assistant message added, `--tokens` text deltas, the message
done, the turn's end. It runs no agent and saves nothing to the database (the gateway never reads a reply's items
from there: it relays the stream). All turns that are streaming are written in one pipelined round per
`--token-delay-ms` tick, sent as commands encoded here (RESP) on a connection of its own: redis-py's packing of
40,000 commands a second took the feeder three quarters of a core, which on a 2-core machine it took from the
gateway it was there to measure. The entries are the same; only the client's cost is less.

    .venv/bin/python -m benchmarks.feeder --tokens 600 --token-delay-ms 50    # NATS_URL, REDIS_URL, NAMESPACE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import hiredis
import nats.errors
import uvloop
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
)
from nats.js.api import AckPolicy, ConsumerConfig

from kitrelay.shared.connections import connect_nats, ensure_turns_stream
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import (
    ENTRY_FIELD,
    ChatKitEntry,
    PackEntry,
    TurnEnd,
    TurnEntry,
    TurnRequest,
    encode_entry,
)
from kitrelay.shared.names import thread_active_key, turn_stream_key, turns_consumer, turns_stream, turns_subject
from kitrelay.shared.settings import Settings
from kitrelay.shared.turn_bus import TURN_STREAM_MAXLEN

log = logging.getLogger("benchmarks.feeder")
TOKEN = "word "
# A seq no real turn reaches: the delta entry is serialised once per turn and only its seq is rewritten per token.
_SEQ_MARK = 987654321
HOLD_TIMEOUT_S = 300.0


@dataclass
class FedTurn:
    request: TurnRequest
    key: str
    item: AssistantMessageItem
    delta_event: ThreadItemUpdatedEvent
    phase: int = 0  # when in each tick its entries are written (see Feeder)
    written: int = 0  # events written so far
    seq: int = 0  # entries written so far
    templates: dict[int, XaddTemplate] = field(default_factory=dict)  # delta entries by how many they pack


def _resp(*args: str | bytes | int) -> bytes:
    """One Redis command in the protocol's own encoding."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _xadd(key: str, fields: dict[bytes, str]) -> bytes:
    """XADD with MAXLEN, as shared/turn_bus.append_entry writes it."""
    flat = [part for name, value in fields.items() for part in (name, value.encode())]
    return _resp("XADD", key, "MAXLEN", "~", TURN_STREAM_MAXLEN, "*", *flat)


@dataclass(frozen=True)
class XaddTemplate:
    """An XADD of one turn's delta (or pack) entry, encoded once: per token only the entry field's seq changes."""

    head: bytes  # the command up to the entry field's name
    entry: str  # the entry field, its seq marked
    tail: bytes  # the event and relay fields

    @classmethod
    def of(cls, key: str, fields: dict[bytes, str]) -> XaddTemplate:
        rest = {name: value for name, value in fields.items() if name != ENTRY_FIELD}
        whole = _xadd(key, {ENTRY_FIELD: "", **rest})
        marker = _resp("e", "")[len(b"*2\r\n") :]  # the entry field's name and an empty value
        head, _, tail = whole.partition(marker)
        return cls(head + marker[: -len(b"$0\r\n\r\n")], fields[ENTRY_FIELD], tail)

    def command(self, seq: int) -> bytes:
        entry = self.entry.replace(f'"seq":{_SEQ_MARK}', f'"seq":{seq}', 1).encode()
        return b"%s$%d\r\n%s\r\n%s" % (self.head, len(entry), entry, self.tail)


class RawRedis:
    """A pipelined connection that sends ready-made commands and counts their replies, parsed by hiredis."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._replies = hiredis.Reader()

    @classmethod
    async def connect(cls, url: str) -> RawRedis:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 6379)
        raw = cls(reader, writer)
        if parts.password:
            await raw.run([_resp("AUTH", *([parts.username] if parts.username else []), parts.password)])
        if (db := parts.path.strip("/")) not in ("", "0"):
            await raw.run([_resp("SELECT", db)])
        return raw

    async def run(self, commands: list[bytes]) -> None:
        self._writer.write(b"".join(commands))
        await self._writer.drain()
        left = len(commands)
        while left:
            reply = self._replies.gets()
            if reply is False:
                data = await self._reader.read(1 << 16)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                self._replies.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis refused a command: {reply}")
            left -= 1

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def _entry(turn: FedTurn, seq: int, body: ChatKitEntry | PackEntry | TurnEnd) -> dict[bytes, str]:
    return encode_entry(TurnEntry(turn_id=turn.request.turn_id, attempt=1, seq=seq, body=body))


def _start(request: TurnRequest, namespace: str) -> FedTurn:
    item = AssistantMessageItem(
        id=new_id("msg"),
        thread_id=request.thread_id,
        created_at=datetime.now(),
        content=[AssistantMessageContent(text="")],
    )
    delta = ThreadItemUpdatedEvent(
        item_id=item.id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=TOKEN)
    )
    return FedTurn(request, turn_stream_key(namespace, request.turn_id), item, delta)


def _next_entry(turn: FedTurn, tokens: int, pack: int = 1) -> tuple[bytes, int]:
    """The XADD of the turn's next entry (added, `tokens` deltas, done, end) and how many events it holds: up to
    `pack` deltas in one entry, as the worker's writer packs the updates a model produced during its last write."""
    n, seq = turn.written, turn.seq
    if n == 0:
        return _xadd(turn.key, _entry(turn, seq, ChatKitEntry(event=ThreadItemAddedEvent(item=turn.item)))), 1
    if n <= tokens:
        size = min(pack, tokens - n + 1)
        template = turn.templates.get(size)
        if template is None:
            body = ChatKitEntry(event=turn.delta_event) if size == 1 else PackEntry(events=[turn.delta_event] * size)
            template = turn.templates[size] = XaddTemplate.of(turn.key, _entry(turn, _SEQ_MARK, body))
        return template.command(seq), size
    if n == tokens + 1:
        done = turn.item.model_copy(update={"content": [AssistantMessageContent(text=TOKEN * tokens)]})
        return _xadd(turn.key, _entry(turn, seq, ChatKitEntry(event=ThreadItemDoneEvent(item=done)))), 1
    return _xadd(turn.key, _entry(turn, seq, TurnEnd(status="completed"))), 1


class Feeder:
    def __init__(
        self,
        settings: Settings,
        *,
        tokens: int,
        token_delay_s: float,
        per_round: int,
        hold_until: int,
        pack: bool,
        phases: int = 1,
    ) -> None:
        self._settings = settings
        # Write nothing until this many turns are open (or HOLD_TIMEOUT_S passed): the figures are then those of
        # every stream open at once, not of the gateway opening streams while it relays.
        self._hold_until = hold_until
        self._tokens = tokens
        self._delay_s = token_delay_s
        # Entries written per turn per round: 1 at a token delay; more make a delay-free run a pure relay test.
        self._per_round = per_round
        # A round's deltas of a turn in one entry (a pack), as a worker writes a model that outruns its writes.
        self._pack = per_round if pack else 1
        # Each turn writes at one of `phases` moments of a tick, taken in turn: a model's tokens come at its own
        # pace, not in step with every other turn's, and 2,000 turns written in one round every tick made the
        # gateway relay 2,000 events at once and none until the next tick.
        self._phases = max(1, phases) if token_delay_s else 1
        self._active: dict[str, FedTurn] = {}
        self._by_phase: list[dict[str, FedTurn]] = [{} for _ in range(self._phases)]
        self._started = 0
        self._stopping = asyncio.Event()
        self._enough = asyncio.Event()
        self.turns_done = 0

    def stop(self) -> None:
        self._stopping.set()
        self._enough.set()  # stop holding too

    def add(self, request: TurnRequest) -> None:
        """A turn to answer, at the next phase in turn."""
        turn = self._active[request.turn_id] = _start(request, self._settings.NAMESPACE)
        turn.phase = self._started % self._phases
        self._by_phase[turn.phase][request.turn_id] = turn
        self._started += 1

    async def run(self) -> None:
        ns = self._settings.NAMESPACE
        nc = await connect_nats(self._settings, name="kitrelay-bench-feeder")
        redis = await RawRedis.connect(self._settings.REDIS_URL)
        js = nc.jetstream()
        await ensure_turns_stream(js, ns)
        sub = await js.pull_subscribe(
            turns_subject(ns, "triage"),
            durable=turns_consumer(ns, "triage"),
            stream=turns_stream(ns),
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=100_000),
        )
        log.warning("feeder pulling %s", turns_subject(ns, "triage"))

        async def pull() -> None:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(batch=256, timeout=0.2)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    self.add(TurnRequest.model_validate_json(msg.data))
                    if len(self._active) >= self._hold_until:
                        self._enough.set()
                    # Acked at once: redelivery is not what this process is for.
                    await msg.ack()

        puller = asyncio.create_task(pull())
        try:
            if self._hold_until:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._enough.wait(), HOLD_TIMEOUT_S)
                log.warning("feeder starts with %d turns open", len(self._active))
            # Every round at its moment of the tick, counted from the first (a late round is caught up at once,
            # not moved on, so the token delay is what it says).
            step_s = self._delay_s / self._phases
            rounds = 0
            first = time.monotonic()
            while not self._stopping.is_set():
                if self._active:
                    await self._round(redis, rounds % self._phases)
                    rounds += 1
                else:
                    await asyncio.sleep(0.005)
                    first = time.monotonic() - rounds * step_s
                    continue
                if step_s:
                    await asyncio.sleep(max(0.0, first + rounds * step_s - time.monotonic()))
                else:
                    await asyncio.sleep(0)  # let the puller in
        finally:
            puller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await puller
            await nc.drain()
            await redis.close()
            log.warning("feeder stopped after %d turns", self.turns_done)

    async def _round(self, redis: RawRedis, phase: int) -> None:
        settings = self._settings
        finished: list[FedTurn] = []
        commands: list[bytes] = []
        for turn in list(self._by_phase[phase].values()):
            budget = self._per_round
            while budget > 0:
                command, events = _next_entry(turn, self._tokens, min(self._pack, budget))
                commands.append(command)
                if turn.written == 0:
                    commands.append(_resp("EXPIRE", turn.key, settings.TURN_STREAM_TTL_S))
                turn.written += events
                turn.seq += 1
                budget -= events
                if turn.written == self._tokens + 3:
                    commands.append(_resp("EXPIRE", turn.key, settings.TURN_STREAM_TTL_AFTER_END_S))
                    commands.append(_resp("DEL", thread_active_key(settings.NAMESPACE, turn.request.thread_id)))
                    finished.append(turn)
                    break
        if commands:
            await redis.run(commands)
        for turn in finished:
            del self._active[turn.request.turn_id]
            del self._by_phase[turn.phase][turn.request.turn_id]
            self.turns_done += 1


async def _main(args: argparse.Namespace) -> None:
    feeder = Feeder(
        Settings(),
        tokens=args.tokens,
        token_delay_s=args.token_delay_ms / 1000,
        per_round=args.per_round,
        hold_until=args.hold_until,
        pack=args.pack,
        phases=args.phases,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, feeder.stop)
    await feeder.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.feeder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=600, help="text deltas per reply")
    parser.add_argument("--token-delay-ms", type=float, default=50.0)
    parser.add_argument("--per-round", type=int, default=1, help="events per turn per round")
    parser.add_argument(
        "--pack", action="store_true", help="write a round's deltas of a turn as one entry, as a worker packs them"
    )
    parser.add_argument("--hold-until", type=int, default=0, help="write nothing until this many turns are open")
    parser.add_argument(
        "--phases", type=int, default=10, help="moments of each token tick the turns are spread over (1: in step)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # uvloop, as the load generator: the feeder stands in for workers on other machines, and the CPU it spends on
    # this one is taken from the gateway it is there to measure.
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
