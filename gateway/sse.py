"""SSE for ChatKit streams: the ChatKit SDK's own frames, then a relayed turn's events, each with its Redis entry id
as `id:`.

A relayed turn's events do not go through the SDK: it would parse each into a model and serialise it again, and
it has nothing to do for them (the worker saved their items). The ChatKit server opens the stream through the SDK
(the thread, the user's message, the turn's client effect) and hands the rest over in the request context; here
it is written on as it came from the worker, one write per batch of entries the relay read.

Every SSE answer of the gateway is an `SseResponse`: ready-made bytes written by a task of their own, while the
request's task pings a quiet stream, keeps the stream's lease (the user's in-flight slot) fresh and notices a client
that left. (sse-starlette's response ran four tasks in a task group per stream and re-encoded
every write; at thousands of open streams that was much of the gateway's memory and CPU.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Generator
from time import monotonic
from types import CoroutineType
from typing import Any, Protocol, runtime_checkable

from chatkit.server import StreamingResult
from sse_starlette import ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from kitrelay.gateway.context import RelayedFrames, RequestContext
from kitrelay.gateway.errors import error_frame_with_message, outage_frame
from kitrelay.shared.settings import Settings

log = logging.getLogger(__name__)

_PREFIX = b"data: "
_SUFFIX = b"\n\n"
# The SDK openings still running for clients that left (a reference keeps each task alive until it ends).
_OPENINGS: set[asyncio.Task[None]] = set()


def _frame(entry_id: str | None, data: str) -> bytes:
    head = f"id: {entry_id}\n" if entry_id is not None else ""
    return f"{head}data: {data}\n\n".encode()


def _chunk(frames: list[tuple[str | None, str]]) -> bytes:
    """A batch of relayed events, one write."""
    return b"".join([_frame(entry_id, data) for entry_id, data in frames])


async def _opening(result: StreamingResult, context: RequestContext) -> AsyncGenerator[bytes, None]:
    """The SDK's part of the stream (the thread, the user's message, the turn handed to the workers), run to its
    end in a task of its own. A client that hangs up meanwhile must not cancel the SDK inside a store write (an
    SQLite connection cancelled mid-transaction keeps the database locked) or before the turn is published: a
    dropped connection is not a stop. The turn's bookkeeping is closed once the opening ends without a reader."""
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()
    reader_left = asyncio.Event()

    async def run() -> None:
        try:
            async for frame in result:
                frames.put_nowait(error_frame_with_message(frame))
        except Exception as exc:
            if (frame := outage_frame(exc)) is None:
                raise
            # A server the SDK needed is away (the database restarting): the stream, already answered 200, ends
            # with an error event that says so, rather than being cut.
            log.warning("a ChatKit stream's opening met an outage: %r", exc)
            frames.put_nowait(frame)
        finally:
            # A user's message no turn took (refused, or the SDK failed before the turn started) is still saved,
            # and a claim no turn took is given back: every stream that can hold one runs here.
            await context.opening_ended()
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


def sse_chunks(result: StreamingResult, context: RequestContext) -> AsyncIterator[bytes]:
    """The stream as ready-made SSE bytes: what /chatkit sends."""
    return _ChatKitChunks(result, context)


class _ChatKitChunks:
    """/chatkit's stream: the SDK's opening, then the relayed turn, a chunk per batch the relay read. An iterator,
    not a generator over the relay's: every event of every stream is resumed through each layer in between. Its
    `aclose()` closes the turn's bookkeeping however the stream ended (the SSE response always calls it)."""

    def __init__(self, result: StreamingResult, context: RequestContext) -> None:
        self._context = context
        self._opening: AsyncGenerator[bytes, None] | None = _opening(result, context)
        self._opened = False  # the opening ran (its end does what `RequestContext.opening_ended` says)
        self._frames: RelayedFrames | None = None
        self._sink: ChunkSink | None = None

    def __aiter__(self) -> _ChatKitChunks:
        return self

    def push_to(self, sink: ChunkSink) -> None:
        """The relayed turn's chunks go to `sink` as the relay reads them, where it can (see `SseResponse`)."""
        self._sink = sink

    def _push(self, frames: list[tuple[str | None, str]]) -> bool:
        relayed, sink = self._context.relayed, self._sink
        if relayed is None or sink is None or not sink(_chunk(frames)):
            return False
        try:
            relayed.saw(frames)
        except Exception:
            # Written already: saying otherwise would have them written again.
            log.exception("could not record a relayed batch")
        return True

    async def __anext__(self) -> bytes:
        if self._opening is not None:
            self._opened = True
            try:
                return await anext(self._opening)
            except StopAsyncIteration:
                self._opening = None
                if self._context.relayed is None:
                    raise
                self._frames = self._context.relayed.frames()
                if self._sink is not None:
                    self._frames.push_to(self._push)
        relayed, frames_of = self._context.relayed, self._frames
        if relayed is None or frames_of is None:
            raise StopAsyncIteration
        try:
            frames = await frames_of.__anext__()
        except StopAsyncIteration:
            self._frames = None
            relayed.close(finished=True)
            raise
        relayed.saw(frames)
        return _chunk(frames)

    async def aclose(self) -> None:
        try:
            if not self._opened:
                await self._context.opening_ended()  # the stream ended before the ChatKit server ran
            if self._opening is not None:
                await self._opening.aclose()
            if self._frames is not None:
                await self._frames.aclose()
        finally:
            if self._context.relayed is not None:
                self._context.relayed.close()


async def sse_events(result: StreamingResult, context: RequestContext) -> AsyncGenerator[ServerSentEvent, None]:
    """The same stream one event at a time, for callers that look at each (the plain chat API). Frames the SDK
    makes itself (thread.created, stream_options, the user's message) carry no id."""
    try:
        async for frame in _opening(result, context):
            yield ServerSentEvent(data=frame.removeprefix(_PREFIX).removesuffix(_SUFFIX).decode())
        if (relayed := context.relayed) is not None:
            async with contextlib.aclosing(relayed.frames()) as batches:
                async for frames in batches:
                    relayed.saw(frames)
                    for entry_id, data in frames:
                        yield ServerSentEvent(data=data, id=entry_id)
            relayed.close(finished=True)
    finally:
        if context.relayed is not None:
            context.relayed.close()


async def relayed_sse(frames: RelayedFrames) -> AsyncIterator[bytes]:
    """A re-attached turn's events (GET /turns/{id}/events), one write per batch."""
    async with contextlib.aclosing(frames):
        async for batch in frames:
            yield _chunk(batch)


# A comment frame: ignored by SSE clients, but it keeps proxies from closing a quiet stream.
PING = b": ping\n\n"
# The ASGI server's own `send`, put in the scope by the gateway app (gateway/app.GatewayApp) before any middleware
# wraps it. Every middleware of the gateway looks at a response's start and its final body only, and each wrapper
# cost a relayed event a coroutine call: a stream's chunks in between go straight to the server.
SERVER_SEND = "kitrelay.server_send"
# A timer may fire a hair before its deadline; a stream this close to `ping_s` of quiet is pinged all the same.
_PING_SLACK_S = 0.005
_HEADERS = {
    # What sse-starlette's response sent (the security headers middleware adds its own but keeps these).
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: write each frame through, do not buffer the stream
    "Connection": "keep-alive",
}


# Writes a chunk there and then if it can, and says whether it did (SseResponse._write_now).
ChunkSink = Callable[[bytes], bool]


@runtime_checkable
class PushedChunks(Protocol):
    """Chunks that can be handed to a sink the moment they come, besides being iterated (`_ChatKitChunks`)."""

    def push_to(self, sink: ChunkSink) -> None: ...


class Lease(Protocol):
    """What a stream holds while it is open (gateway/limits.TurnSlot): refreshed while it lasts, given back once
    it ends, however it ends. `release` must be idempotent and must not raise."""

    async def keep_alive(self) -> None: ...

    async def release(self) -> None: ...


class SseResponse(Response):
    """A live SSE stream of ready-made frames (each chunk whole frames; b"" writes nothing).

    The chunks are written by a writer task of their own. The request's task waits on `receive()` meanwhile:
    every `ping_s` it pings a stream that wrote nothing for that long and keeps the lease alive, and on
    `http.disconnect` it cancels the writer, since uvicorn's `send` does nothing (and raises nothing) once the
    client has gone. However the stream ends, `chunks` is closed (its finally blocks close the turn's bookkeeping)
    and the lease released.

    A cancellation that does not come from a client leaving (uvicorn cancels what is still running when its
    graceful shutdown times out) is raised on. On SIGTERM uvicorn lets open streams run on until then."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], *, ping_s: float, lease: Lease | None = None) -> None:
        self.chunks = chunks
        self.ping_s = ping_s
        self.lease = lease
        self.status_code = 200
        self.background = None
        self.init_headers(_HEADERS)
        self._last_write = 0.0
        self._finished = False  # the closing write is on its way: no ping may follow it
        self._waiting: asyncio.Timeout | None = None  # the watcher's wait for the client, while it waits
        self._send_chunk: Send | None = None
        self._writer_busy = False  # the writer holds a chunk: nothing may be written before it
        self._rest: asyncio.Task[None] | None = None  # a write from `_write_now` the server suspended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if scope.get("method") == "HEAD":
                # The headers a GET gets, and no stream: it would never end for a client that reads no body.
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self._stream(scope, receive, send)
        finally:
            try:
                await _aclose(self.chunks)
            finally:
                if self.lease is not None:
                    await self.lease.release()
        if self.background is not None:
            await self.background()

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The chunks are written by a task of their own, shallow: every event wakes the task that writes it and
        # resumes it through every frame of its stack, and the request's task sits under uvicorn's, Starlette's
        # and each middleware's frames. The request's task watches the client meanwhile.
        self._last_write = monotonic()
        self._send_chunk = scope.get(SERVER_SEND, send)
        if isinstance(self.chunks, PushedChunks):
            self.chunks.push_to(self._write_now)
        writer = asyncio.create_task(self._write(send, self._send_chunk))
        try:
            await self._watch(receive, send, writer)
        finally:
            if not writer.done():
                writer.cancel()
            if self._rest is not None and not self._rest.done():
                self._rest.cancel()
            # Ended before the chunks are closed (__call__): a generator still running in the writer cannot be.
            await asyncio.wait({writer})

    async def _write(self, send: Send, send_chunk: Send) -> None:
        """The chunks through `send_chunk` (the server's own send when there is one), the final body through the
        middlewares' `send` (OpenTelemetry's ends the request's span there)."""
        async for chunk in self.chunks:
            if chunk:
                self._writer_busy = True
                try:
                    await self._after_rest()
                    await send_chunk({"type": "http.response.body", "body": chunk, "more_body": True})
                finally:
                    self._writer_busy = False
                self._last_write = monotonic()
        self._finished = True
        await self._after_rest()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _write_now(self, chunk: bytes) -> bool:
        """Write `chunk` here and now, from outside the writer (the relay's hand-out of a Redis read calls this),
        and say whether it did: not while another write is under way, which it would overtake.

        Every relayed event woke the writer's task, a few microseconds of the gateway's time per event. The ASGI
        server's send is a coroutine that writes at once unless the client is behind: it is stepped by hand here,
        and only when the server does wait (for the client's socket to drain) does the rest run in a task, which
        every later write waits for. A send that fails here is left to the writer, which raises what it raises."""
        send = self._send_chunk
        if send is None or self._writer_busy or self._rest is not None or self._finished:
            return False
        step = send({"type": "http.response.body", "body": chunk, "more_body": True})
        if type(step) is not CoroutineType:  # an awaitable of another kind cannot be stepped: a task runs it
            self._rest = asyncio.ensure_future(step)
        else:
            try:
                awaited = step.send(None)
            except StopIteration:
                self._last_write = monotonic()
                return True
            except Exception:
                log.debug("an SSE chunk written from the relay failed; the writer writes it again", exc_info=True)
                return False
            self._rest = asyncio.ensure_future(_finish(step, awaited))
        self._rest.add_done_callback(self._rest_done)
        return True

    def _rest_done(self, rest: asyncio.Task[None]) -> None:
        # A failed rest stays, for the writer to raise; writes from the relay stop meanwhile.
        if not rest.cancelled() and rest.exception() is None:
            self._rest = None
            self._last_write = monotonic()

    async def _after_rest(self) -> None:
        if self._rest is not None:
            await self._rest
            self._rest = None

    async def _watch(self, receive: Receive, send: Send, writer: asyncio.Task[None]) -> None:
        """Until the writer ends (what it raised is raised here) or the client leaves (the writer is cancelled).
        Every `ping_s` meanwhile, a ping for a quiet stream and the lease kept alive. The wait for the client is
        a plain `receive()` under a timeout that the writer's end expires at once: no task or future more per
        stream."""
        writer.add_done_callback(self._writer_done)
        delay = self.ping_s
        try:
            while not writer.done():
                try:
                    async with asyncio.timeout(delay) as self._waiting:
                        message = await receive()
                except TimeoutError:
                    if not writer.done():
                        delay = await self._tick(send)
                    continue
                finally:
                    self._waiting = None
                if message["type"] == "http.disconnect":
                    writer.cancel()  # the client left: nobody to write to
                    return
        except OSError as exc:
            # ASGI servers that raise on a gone client (uvicorn does not) raise OSError from `receive` or `send`.
            log.debug("an SSE stream's client is gone: %r", exc)
            writer.cancel()
            return
        writer.result()

    def _writer_done(self, _: asyncio.Task[None]) -> None:
        if self._waiting is not None:
            self._waiting.reschedule(asyncio.get_running_loop().time())

    async def _tick(self, send: Send) -> float:
        """A ping if the stream has been quiet for `ping_s`, the lease kept alive; returns when to look next."""
        quiet = monotonic() - self._last_write
        if quiet >= self.ping_s - _PING_SLACK_S and not self._finished:
            # Safe beside the writer's own sends: each send is whole frames, written by uvicorn in one go.
            await send({"type": "http.response.body", "body": PING, "more_body": True})
            self._last_write = monotonic()
            quiet = 0.0
        if self.lease is not None:
            try:
                await self.lease.keep_alive()
            except Exception:
                log.warning("could not keep an SSE stream's lease alive", exc_info=True)
        return self.ping_s - quiet


class _Resumed:
    """The rest of a coroutine stepped by hand (`step.send(None)`) that suspended on `awaited`, as an awaitable: it
    yields to the awaiting task what the coroutine yields (the futures it waits on) and passes back what the task
    sends or throws in, as `await` itself does."""

    def __init__(self, step: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self._step = step
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, None]:
        awaited = self._awaited
        while True:
            try:
                sent = yield awaited
            except BaseException as exc:
                try:
                    awaited = self._step.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    awaited = self._step.send(sent)
                except StopIteration:
                    return


async def _finish(step: Coroutine[Any, Any, Any], awaited: Any) -> None:
    await _Resumed(step, awaited)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now, rather than whenever it is collected: its finally blocks release a turn's
    bookkeeping. Other iterators have nothing to close."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def sse_response(chunks: AsyncIterator[bytes], settings: Settings, lease: Lease | None = None) -> SseResponse:
    """A live SSE response: pinged (proxies close quiet streams), never buffered, holding `lease` while it is open.
    On SIGTERM uvicorn gives it the drain time to finish (its graceful timeout is that setting, a second longer)."""
    return SseResponse(chunks, ping_s=settings.SSE_PING_S, lease=lease)
