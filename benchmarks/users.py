"""Simulated ChatKit users over real HTTP + SSE (aiohttp: httpx costs too much CPU per stream at thousands of them;
streams read without parsing their events use a bare asyncio protocol and httptools' response parser instead).

A user holds conversations: create a thread by adding a task, add another, list the tasks (a widget), click a
task in that widget (`threads.custom_action`), and ask research a question: four messages and a click. Every turn
is timed: time to its first agent event and to its answer's first event, the gaps between its events, its
duration.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httptools

from kitrelay.gateway.client import user_input

# Frames that come before any agent output, made by the ChatKit SDK itself (the new thread, the user's message,
# stream options) or by kitrelay (the client effect naming the turn): time to first event counts from the request
# to the first frame that is none of these, the same way for kitrelay and the baseline.
_PREAMBLE_TYPES = {"thread.created", "stream_options", "thread.updated"}
RESEARCH_QUESTION = "what does the handbook say about VPN access?"
HANDBOOK = """# Team handbook

## VPN access
VPN access is requested through the service desk; approval takes one working day. Use the corporate client and
your hardware key to connect.

## Expenses
Expenses are filed within thirty days with a receipt.
"""


@dataclass
class TurnSample:
    kind: str
    started: float  # monotonic, when the request went out
    first_event_s: float | None = None
    # To the first frame of the answer: the first that is neither the opening nor a progress line ("Handing over
    # to Task…"). The seed's design shows no line at a handoff (the SDK's handoffs make no ChatKit event): this is
    # what both designs' users wait for.
    first_answer_s: float | None = None
    # A message on a thread that already has an answer (not the thread's first, not a widget click).
    follow_up: bool = False
    duration_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)
    events: int = 0
    error: str | None = None


@dataclass
class Frame:
    id: str | None
    data: bytes


def _is_preamble(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if kind in _PREAMBLE_TYPES:
        return True
    if kind == "client_effect" and event.get("name") == "kitrelay.turn":
        return True
    item = event.get("item")
    return (
        kind in ("thread.item.added", "thread.item.done")
        and isinstance(item, dict)
        and item.get("type") == "user_message"
    )


def _frames(buffer: bytearray) -> list[Frame]:
    """Complete SSE events cut off the front of `buffer` (comments and pings dropped)."""
    frames = []
    while (end := buffer.find(b"\n\n")) >= 0:
        block = bytes(buffer[:end])
        del buffer[: end + 2]
        entry_id: str | None = None
        data: list[bytes] = []
        for raw_line in block.split(b"\n"):
            line = raw_line.removesuffix(b"\r")
            if line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
            elif line.startswith(b"id:"):
                entry_id = line[3:].strip().decode()
        if data:
            frames.append(Frame(entry_id, b"\n".join(data)))
    return frames


class SseUser:
    """One simulated user: one HTTP connection pool shared by all users of a run (aiohttp keeps it alive)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, turn_timeout_s: float) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/chatkit"
        self._timeout_s = turn_timeout_s
        address = urlsplit(self._url)
        self._host, self._port, self._path = address.hostname or "127.0.0.1", address.port or 80, address.path

    async def call(self, request: dict[str, Any]) -> Any:
        """A non-streaming request; its JSON answer."""
        async with self._http.post(self._url, json=request) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.read())[:300]!r}")
            return await response.json()

    async def turn(
        self,
        kind: str,
        request: dict[str, Any],
        *,
        parse: bool = True,
        on_frames: Callable[[int, int], None] | None = None,
    ) -> tuple[TurnSample, list[dict[str, Any]]]:
        """Send one streaming request and read its stream to the end. With `parse` off frames are only counted
        and errors looked for (what thousands of streams can afford: see `_FrameCounter`), only relayed events
        (those with an entry id) are timed, and `on_frames(relayed, frames)` hears of each chunk's."""
        if not parse:
            return await self._counted_turn(kind, request, on_frames), []
        sample = TurnSample(kind=kind, started=time.monotonic())
        events: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(self._timeout_s), self._http.post(self._url, json=request) as response:
                if response.status != 200:
                    body = (await response.read())[:300].decode(errors="replace")
                    sample.error = f"HTTP {response.status}: {body}"
                    return sample, events
                reader = _TurnReader(sample, events)
                async for frames in _sse_frames(response):
                    reader.read(frames, time.monotonic())
        except (TimeoutError, aiohttp.ClientError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
        _end_sample(sample)
        return sample, events

    async def _counted_turn(
        self, kind: str, request: dict[str, Any], on_frames: Callable[[int, int], None] | None
    ) -> TurnSample:
        """A stream whose frames are only counted, on a connection of its own read by `_CountedStream`: aiohttp's
        stream reader cost the load generator a third of a core at 2,000 streams, on the two cores it shares
        with the gateway it measures."""
        body = json.dumps(request).encode()
        head = (
            f"POST {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sample = TurnSample(kind=kind, started=time.monotonic())
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                transport, stream = await loop.create_connection(
                    lambda: _CountedStream(_FrameCounter(sample, on_frames), loop.create_future()),
                    self._host,
                    self._port,
                )
                transport.write(head + body)
                await stream.done
        except (TimeoutError, OSError, httptools.HttpParserError) as exc:
            sample.error = f"{type(exc).__name__}: {exc}"
        finally:
            if transport is not None:
                transport.close()
        _end_sample(sample)
        return sample


class _CountedStream(asyncio.Protocol):
    """One HTTP/1.1 response read as it arrives: httptools undoes the chunked encoding, the body goes to the frame
    counter chunk by chunk; a status other than 200 is the sample's error, with the start of its body."""

    def __init__(self, counter: _FrameCounter, done: asyncio.Future[None]) -> None:
        self.counter = counter
        self.done = done
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.refused = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(exc)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status == 200:
            self.counter.read(body, time.monotonic())
        else:
            self.refused += body

    def on_message_complete(self) -> None:
        if self.status != 200:
            self.counter.sample.error = f"HTTP {self.status}: {self.refused[:300].decode(errors='replace')}"
        self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionResetError("the server closed the stream before its end"))

    def _finish(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)


def _end_sample(sample: TurnSample) -> None:
    """A turn's stream is over, however it ended: its duration, and a stream with no agent event is an error."""
    sample.duration_s = time.monotonic() - sample.started
    if sample.error is None and sample.events == 0:
        sample.error = "the stream ended without an agent event"


async def _sse_frames(response: aiohttp.ClientResponse) -> AsyncIterator[list[Frame]]:
    """The frames of an SSE body, as many as each chunk completes."""
    buffer = bytearray()
    carry = b""  # a CR whose LF may come in the next chunk
    async for received in response.content.iter_any():
        chunk = carry + received
        carry = b"\r" if chunk.endswith(b"\r") else b""
        # The SSE spec allows CR, LF or CRLF line ends (the baseline may send CRLF).
        buffer.extend(chunk[: len(chunk) - len(carry)].replace(b"\r\n", b"\n"))
        yield _frames(buffer)


@dataclass
class _TurnReader:
    """Times one turn's frames into its sample, parsing each."""

    sample: TurnSample
    events: list[dict[str, Any]]
    last: float | None = None

    def read(self, frames: list[Frame], now: float) -> None:
        sample = self.sample
        for frame in frames:
            event = json.loads(frame.data)
            self.events.append(event)
            if _is_preamble(event):
                continue
            if event.get("type") == "error" and sample.error is None:
                sample.error = f"error event: {event.get('message')}"
            sample.events += 1
            if sample.first_answer_s is None and event.get("type") != "progress_update":
                sample.first_answer_s = now - sample.started
            if self.last is None:
                sample.first_event_s = now - sample.started
            else:
                sample.gaps_s.append(now - self.last)
            self.last = now


@dataclass
class _FrameCounter:
    """Times one turn's relayed frames into its sample without cutting the stream into frames: each chunk's
    complete frames are counted with a few scans of its bytes. At thousands of streams the load generator shares
    the machine with the gateway it measures; cutting and wrapping every frame took it a core's third. All frames
    of a chunk arrived at once: the first has the gap since the last chunk, the others none."""

    sample: TurnSample
    on_frames: Callable[[int, int], None] | None
    tail: bytes = b""  # the start of a frame whose end is still to come
    last: float | None = None

    def read(self, chunk: bytes, now: float) -> None:
        data = self.tail + chunk
        if b"\r" in data:
            # The SSE spec allows CRLF line ends (a CR at the very end waits in the tail for its LF).
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self.tail = data
            return
        complete, self.tail = data[: end + 2], data[end + 2 :]
        # One data line per frame (ChatKit's JSON has no line breaks); comments (pings) have none.
        frames = complete.count(b"\ndata:") + complete.startswith(b"data:")
        relayed = complete.count(b"\nid:") + complete.startswith(b"id:")
        sample = self.sample
        if sample.error is None and (at := complete.find(b'"type":"error"')) >= 0:
            sample.error = f"error event: {complete[max(0, at - 20) : at + 200].decode(errors='replace')}"
        if self.on_frames is not None:
            self.on_frames(relayed, frames)
        sample.events += frames
        if not relayed:
            return
        if self.last is None:
            sample.first_event_s = now - sample.started
        else:
            sample.gaps_s.append(now - self.last)
        sample.gaps_s.extend([0.0] * (relayed - 1))
        self.last = now


def create_request(text: str) -> dict[str, Any]:
    return {"type": "threads.create", "params": {"input": user_input(text)}}


def _send(thread_id: str, text: str) -> dict[str, Any]:
    return {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input(text)}}


def _find_click(events: list[dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The first clickable task row of the widget a turn showed: (widget item id, its onClickAction)."""
    for event in events:
        item = event.get("item")
        if event.get("type") == "thread.item.done" and isinstance(item, dict) and item.get("type") == "widget":
            action = _first_action(item.get("widget"))
            if action is not None:
                return str(item["id"]), action
    return None


def _first_action(node: Any) -> dict[str, Any] | None:
    if isinstance(node, dict):
        action = node.get("onClickAction")
        if isinstance(action, dict):
            return action
        children: list[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        if (found := _first_action(child)) is not None:
            return found
    return None


async def conversation(user: SseUser, label: str) -> list[TurnSample]:
    """The five turns of one conversation; a turn that fails ends the conversation (the rest would fail too)."""
    samples: list[TurnSample] = []

    def ok(sample: TurnSample) -> bool:
        samples.append(sample)
        return sample.error is None

    sample, events = await user.turn("add_task", create_request(f"add task bench {label}"))
    thread_id = next((e["thread"]["id"] for e in events if e.get("type") == "thread.created"), None)
    if not ok(sample) or thread_id is None:
        return samples
    sample, _ = await user.turn("add_task", _send(thread_id, f"add task review {label}"))
    sample.follow_up = True
    if not ok(sample):
        return samples
    sample, events = await user.turn("list_tasks", _send(thread_id, "list my tasks"))
    sample.follow_up = True
    if not ok(sample):
        return samples
    click = _find_click(events)
    if click is None:
        sample.error = "the task list showed no clickable task"
        return samples
    item_id, action = click
    request = {
        "type": "threads.custom_action",
        "params": {"thread_id": thread_id, "item_id": item_id, "action": action},
    }
    sample, _ = await user.turn("widget_action", request)
    if not ok(sample):
        return samples
    sample, _ = await user.turn("research", _send(thread_id, RESEARCH_QUESTION))
    sample.follow_up = True
    ok(sample)
    return samples


def new_session(connections: int) -> aiohttp.ClientSession:
    # No total timeout: a stream lasts as long as its turn (each turn has its own deadline).
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
    )
