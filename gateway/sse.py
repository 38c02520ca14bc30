"""SSE for ChatKit streams: the ChatKit SDK's own frames, then a relayed turn's events, each with its Redis entry id
as `id:`.

A relayed turn's events do not go through the SDK: it would parse each into a model and serialise it again, and
it has nothing to do for them (the worker saved their items). The ChatKit server opens the stream through the SDK
(the thread, the user's message, the turn's client effect) and hands the rest over in the request context; here
it is written on as it came from the worker, one write per batch of entries the relay read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from chatkit.server import StreamingResult
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Message, Send

from kitrelay.gateway.context import RequestContext
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

_PREFIX = b"data: "
_SUFFIX = b"\n\n"
# The SDK openings still running for clients that left (a reference keeps each task alive until it ends).
_OPENINGS: set[asyncio.Task[None]] = set()


def _frame(entry_id: str | None, data: str) -> bytes:
    head = f"id: {entry_id}\n" if entry_id is not None else ""
    return f"{head}data: {data}\n\n".encode()


async def _opening(result: StreamingResult, context: RequestContext) -> AsyncIterator[bytes]:
    """The SDK's part of the stream (the thread, the user's message, the turn handed to the workers), run to its
    end in a task of its own. A client that hangs up meanwhile must not cancel the SDK inside a store write (an
    SQLite connection cancelled mid-transaction keeps the database locked) or before the turn is published: a
    dropped connection is not a stop. The turn's bookkeeping is closed once the opening ends without a reader."""
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    reader_left = asyncio.Event()

    async def run() -> None:
        try:
            async for frame in result:
                frames.put_nowait(frame)
        finally:
            # A user's message no turn took (refused, or the SDK failed before the turn started) is still saved:
            # every stream that can hold one runs here.
            await context.save_held()
            frames.put_nowait(None)
            if reader_left.is_set() and context.relayed is not None:
                context.relayed.close()

    task = asyncio.create_task(run())
    _OPENINGS.add(task)
    task.add_done_callback(_opening_done)
    try:
        while (frame := await frames.get()) is not None:
            yield frame
        await task  # what the SDK raised, if anything
    finally:
        reader_left.set()


def _opening_done(task: asyncio.Task[None]) -> None:
    _OPENINGS.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a ChatKit stream's opening failed after its client left: %r", exc)


async def sse_chunks(result: StreamingResult, context: RequestContext) -> AsyncIterator[bytes]:
    """The stream as ready-made SSE bytes: what /chatkit sends."""
    try:
        async for frame in _opening(result, context):
            yield frame
        if context.relayed is not None:
            async for frames in context.relayed.frames():
                yield b"".join(_frame(entry_id, data) for entry_id, data in frames)
    finally:
        if context.relayed is not None:
            context.relayed.close()


async def sse_events(result: StreamingResult, context: RequestContext) -> AsyncIterator[ServerSentEvent]:
    """The same stream one event at a time, for callers that look at each (the plain chat API). Frames the SDK
    makes itself (thread.created, stream_options, the user's message) carry no id."""
    try:
        async for frame in _opening(result, context):
            yield ServerSentEvent(data=frame.removeprefix(_PREFIX).removesuffix(_SUFFIX).decode())
        if context.relayed is not None:
            async for frames in context.relayed.frames():
                for entry_id, data in frames:
                    yield ServerSentEvent(data=data, id=entry_id)
    finally:
        if context.relayed is not None:
            context.relayed.close()


async def relayed_sse(frames: AsyncIterator[list[tuple[str | None, str]]]) -> AsyncIterator[bytes]:
    """A re-attached turn's events (GET /turns/{id}/events), one write per batch."""
    async for batch in frames:
        yield b"".join(_frame(entry_id, data) for entry_id, data in batch)


class _SseResponse(EventSourceResponse):
    """sse-starlette's response, minus a cancel scope around every write when no send timeout is set (there is
    none here: the ping and the client's disconnect end a stuck stream). At thousands of open streams that scope
    was a tenth of the gateway's CPU per relayed event."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def sse_response(
    events: AsyncIterator[ServerSentEvent] | AsyncIterator[bytes], settings: Settings
) -> EventSourceResponse:
    """A live SSE response: pinged (proxies close quiet streams), never buffered, and on SIGTERM given the drain
    time to finish instead of being cut (uvicorn's own graceful timeout is the same setting, a second longer)."""
    return _SseResponse(
        events,
        ping=settings.SSE_PING_S,
        sep="\n",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        shutdown_grace_period=max(0.0, settings.WORKER_DRAIN_TIMEOUT_S - 1),
    )
