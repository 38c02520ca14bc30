"""The gateway's SSE response (gateway/sse.SseResponse): driven as an ASGI app by a hand-written server side that
behaves as uvicorn's does, then served by a real uvicorn, then as the real app answers /chatkit and /chat.

What must hold: a client that leaves ends the stream at once (its chunks closed, its lease given back) without an
error; a quiet stream is pinged and its lease kept fresh, a busy one is not pinged; a stream that ends is closed
with the final empty body and is not mistaken for a client that left; a real cancellation is raised on."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Scope

from kitrelay.gateway.client import user_input
from kitrelay.gateway.limits import Limiter
from kitrelay.gateway.sse import PING, SERVER_SEND, ChunkSink, SseResponse
from tests.gateway.conftest import MakeSettings, bearer, in_process_gateway, new_user
from tests.polling import until

pytestmark = pytest.mark.timeout(60)

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/chatkit", "headers": []}
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "connection": "keep-alive",
}


class FakeLease:
    """The response's collaborator (gateway/limits.TurnSlot in the gateway): counts what it is asked to do."""

    def __init__(self) -> None:
        self.keep_alives = 0
        self.releases = 0
        self.released = asyncio.Event()

    async def keep_alive(self) -> None:
        self.keep_alives += 1

    async def release(self) -> None:
        # A release that takes a few turns of the loop, as a Redis call does: a stray cancellation would land here.
        for _ in range(3):
            await asyncio.sleep(0)
        self.releases += 1
        self.released.set()


class ServerSide:
    """uvicorn's side of one request, by hand: `receive` blocks until the client leaves or the response is
    complete, then says `http.disconnect`; `send` after the client left does nothing and raises nothing, and
    after the response is complete it raises."""

    def __init__(self, *, leave_after_frames: int | None = None, stuck_write_after_leaving: bool = False) -> None:
        self.messages: list[Message] = []
        self.sent_at: list[float] = []
        self.leave_after_frames = leave_after_frames
        self.stuck_write_after_leaving = stuck_write_after_leaving
        self.gone = False
        self.complete = False
        self.after_complete: list[Message] = []
        self._event = asyncio.Event()

    def leave(self) -> None:
        self.gone = True
        self._event.set()

    async def receive(self) -> Message:
        if not self.gone and not self.complete:
            await self._event.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.complete:
            self.after_complete.append(message)
            raise RuntimeError("a message after the response was complete")
        if self.gone:
            if self.stuck_write_after_leaving:
                await asyncio.Event().wait()  # a write that never returns: only a cancellation ends it
            return
        self.messages.append(message)
        self.sent_at.append(time.monotonic())
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.complete = True
            self._event.set()
            # A send may take a turn of the loop after it wrote: receive() says http.disconnect meanwhile.
            await asyncio.sleep(0)
        if self.leave_after_frames is not None and len(self.frames()) >= self.leave_after_frames:
            self.leave()

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]

    def frames(self) -> list[bytes]:
        """The bodies written mid-stream, pings included."""
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m.get("more_body")]

    def pings(self) -> list[float]:
        sent = zip(self.messages, self.sent_at, strict=True)
        return [at for m, at in sent if m["type"] == "http.response.body" and m["body"] == PING]


def headers_of(start: Message) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in start["headers"]}


async def quiet_after(first: bytes, closed: asyncio.Event) -> AsyncIterator[bytes]:
    """A stream that sends `first`, then goes quiet for good; `closed` is set when it is closed."""
    try:
        yield first
        await asyncio.Event().wait()
        yield b"data: never\n\n"
    finally:
        closed.set()


async def run(response: SseResponse, server: ServerSide, scope: Scope = SCOPE) -> None:
    await asyncio.wait_for(response(scope, server.receive, server.send), timeout=10)


# -- the response on its own ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stuck_write", [False, True], ids=["waiting-for-the-next-event", "stuck-in-a-write"])
async def test_a_client_that_leaves_mid_stream_closes_the_chunks_and_gives_the_lease_back(stuck_write: bool) -> None:
    closed = asyncio.Event()
    after_leaving: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
            if stuck_write:
                yield b"data: 3\n\n"  # the write the client is no longer there for
            await asyncio.Event().wait()  # a turn that goes quiet for good
            after_leaving.append("went on")
            yield b"data: never\n\n"
        finally:
            closed.set()

    server = ServerSide(leave_after_frames=2, stuck_write_after_leaving=stuck_write)
    lease = FakeLease()
    started = time.monotonic()
    await run(SseResponse(chunks(), ping_s=30, lease=lease), server)  # returns, and raises nothing

    assert time.monotonic() - started < 2, "the stream ended as soon as the client left"
    assert closed.is_set(), "the chunks' finally ran"
    assert after_leaving == []
    assert lease.releases == 1
    assert server.frames() == [b"data: 1\n\n", b"data: 2\n\n"]
    assert server.after_complete == []


async def test_a_quiet_stream_is_pinged_and_its_lease_kept_alive() -> None:
    ping_s = 0.05
    go_on = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await go_on.wait()  # a model that thinks for a while
        yield b"data: last\n\n"

    server = ServerSide()
    lease = FakeLease()
    response = SseResponse(chunks(), ping_s=ping_s, lease=lease)
    task = asyncio.create_task(run(response, server))
    await asyncio.sleep(0.5)
    go_on.set()
    await task

    frames = server.frames()
    assert frames[0] == b"data: first\n\n" and frames[-1] == b"data: last\n\n"
    pings = server.pings()
    assert set(frames[1:-1]) == {PING}
    # About one per ping_s of quiet (0.5 s): not none, and not a flood.
    assert 4 <= len(pings) <= 0.5 / ping_s + 2, len(pings)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert min(gaps) >= ping_s * 0.8, gaps
    assert 4 <= lease.keep_alives <= 0.5 / ping_s + 2
    assert lease.releases == 1


async def test_a_busy_stream_is_not_pinged_but_its_lease_is_still_kept_alive() -> None:
    ping_s = 0.2

    async def chunks() -> AsyncIterator[bytes]:
        until = time.monotonic() + 1.0
        n = 0
        while time.monotonic() < until:
            n += 1
            yield f"data: {n}\n\n".encode()
            await asyncio.sleep(0.01)

    server = ServerSide()
    lease = FakeLease()
    await run(SseResponse(chunks(), ping_s=ping_s, lease=lease), server)

    assert server.pings() == []
    assert len(server.frames()) > 20
    # A stream that writes all the time still holds its slot; the watcher wakes about once per ping_s for it.
    assert 3 <= lease.keep_alives <= 1.0 / ping_s + 2, lease.keep_alives
    assert lease.releases == 1


async def test_a_stream_that_ends_sends_the_final_body_and_is_no_disconnect() -> None:
    finished: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"data: a\n\n"
            yield b""  # nothing to write: skipped
            yield b"id: 1-0\ndata: b\n\n"
            finished.append("ran to its end")
        finally:
            finished.append("finally")

    server = ServerSide()
    lease = FakeLease()
    await run(SseResponse(chunks(), ping_s=30, lease=lease), server)

    start, *bodies = server.messages
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert headers_of(start) == SSE_HEADERS
    assert bodies == [
        {"type": "http.response.body", "body": b"data: a\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"id: 1-0\ndata: b\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert finished == ["ran to its end", "finally"]
    # receive() said http.disconnect once the response was complete; the release after it was not cut short.
    assert lease.releases == 1
    assert server.after_complete == []


async def test_a_real_cancellation_is_raised_on_and_still_cleans_up() -> None:
    """uvicorn cancels the requests still running when its graceful shutdown times out: not a client leaving."""
    closed = asyncio.Event()
    first_sent = asyncio.Event()

    server = ServerSide()
    original_send = server.send

    async def send(message: Message) -> None:
        await original_send(message)
        if message["type"] == "http.response.body":
            first_sent.set()

    lease = FakeLease()
    response = SseResponse(quiet_after(b"data: 1\n\n", closed), ping_s=30, lease=lease)
    task = asyncio.create_task(response(SCOPE, server.receive, send))
    await asyncio.wait_for(first_sent.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()
    assert lease.releases == 1
    assert server.bodies() == [b"data: 1\n\n"], "no final body: the stream was cut, not finished"


async def test_an_error_in_the_stream_is_raised_on_and_still_cleans_up() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise ValueError("the SDK failed")

    server = ServerSide()
    lease = FakeLease()
    with pytest.raises(ValueError, match="the SDK failed"):
        await run(SseResponse(chunks(), ping_s=30, lease=lease), server)
    assert lease.releases == 1


async def test_chunks_skip_the_middlewares_and_the_start_and_the_end_go_through_them() -> None:
    """The gateway app puts the server's own send in the scope: the chunks in between go there, the response's start
    (the security headers) and its final body (OpenTelemetry ends the request's span) through the middlewares."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    server = ServerSide()
    through_middlewares: list[Message] = []

    async def middleware_send(message: Message) -> None:
        through_middlewares.append(message)
        await server.send(message)

    response = SseResponse(chunks(), ping_s=30)
    await asyncio.wait_for(response({**SCOPE, SERVER_SEND: server.send}, server.receive, middleware_send), 10)
    assert server.bodies() == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["type"] for m in through_middlewares] == ["http.response.start", "http.response.body"]
    assert through_middlewares[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


class PushedStream:
    """Chunks a relay hands to the response's sink as they come (as /chatkit's do), and ends when told."""

    def __init__(self) -> None:
        self.sink: ChunkSink | None = None
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def push_to(self, sink: ChunkSink) -> None:
        self.sink = sink

    def push(self, chunk: bytes) -> bool:
        assert self.sink is not None
        return self.sink(chunk)

    def __aiter__(self) -> PushedStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.queue.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


async def test_pushed_chunks_are_written_at_once_and_in_order_with_the_writers() -> None:
    """A pushed chunk is written there and then, with no task woken; one the server cannot write yet (its client is
    behind) holds every later write, pushed or not, until it is written; a push it would overtake is refused."""
    stream = PushedStream()
    server = ServerSide()
    behind = asyncio.Event()
    drained = asyncio.Event()

    async def server_send(message: Message) -> None:
        if behind.is_set():
            await drained.wait()  # as uvicorn waits for a paused transport to drain
        await server.send(message)

    response = SseResponse(stream, ping_s=30)
    serving = asyncio.create_task(response({**SCOPE, SERVER_SEND: server_send}, server.receive, server.send))
    await until(lambda: stream.sink is not None and bool(server.messages))
    await asyncio.sleep(0)  # the writer waits for its first chunk

    assert stream.push(b"data: 1\n\n") is True
    assert server.frames() == [b"data: 1\n\n"], "written before any other task ran"

    behind.set()
    assert stream.push(b"data: 2\n\n") is True, "taken: the rest of its write runs in a task"
    assert stream.push(b"data: 3\n\n") is False, "it would overtake chunk 2"
    stream.queue.put_nowait(b"data: 3\n\n")  # so the writer writes it, after chunk 2
    await asyncio.sleep(0.05)
    assert server.frames() == [b"data: 1\n\n"]
    drained.set()
    behind.clear()
    await until(lambda: len(server.frames()) == 3)
    assert server.frames() == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    assert stream.push(b"data: 4\n\n") is True
    stream.queue.put_nowait(None)
    await asyncio.wait_for(serving, 10)
    assert server.bodies() == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", b"data: 4\n\n", b""]


async def test_a_pushed_chunk_the_server_refuses_is_left_to_the_writer_which_raises() -> None:
    stream = PushedStream()
    server = ServerSide()

    async def broken_send(message: Message) -> None:
        raise RuntimeError("the server cannot write this")

    lease = FakeLease()
    response = SseResponse(stream, ping_s=30, lease=lease)
    serving = asyncio.create_task(response({**SCOPE, SERVER_SEND: broken_send}, server.receive, server.send))
    await until(lambda: stream.sink is not None and bool(server.messages))
    assert stream.push(b"data: 1\n\n") is False
    stream.queue.put_nowait(b"data: 1\n\n")  # what the relay does with a batch its sink refused
    with pytest.raises(RuntimeError, match="cannot write"):
        await asyncio.wait_for(serving, 10)
    assert lease.releases == 1


async def test_head_gets_the_headers_and_no_stream() -> None:
    started: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        started.append("started")
        yield b"data: 1\n\n"

    server = ServerSide()
    lease = FakeLease()
    await run(SseResponse(chunks(), ping_s=30, lease=lease), server, {**SCOPE, "method": "HEAD"})
    assert headers_of(server.messages[0]) == SSE_HEADERS
    assert server.bodies() == [b""]
    assert started == []
    assert lease.releases == 1


# -- served by a real uvicorn ---------------------------------------------------------------------------------------


async def serve(app: Callable[..., Awaitable[None]]) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    host, port = sock.getsockname()
    return server, task, f"http://{host}:{port}"


async def test_over_uvicorn_a_quiet_stream_is_pinged_and_a_client_that_hangs_up_is_noticed() -> None:
    """uvicorn's send does nothing once the client has gone: only the watcher can notice, and it must."""
    closed = asyncio.Event()
    lease = FakeLease()

    async def endpoint(request: Request) -> SseResponse:
        return SseResponse(quiet_after(b"data: hello\n\n", closed), ping_s=0.05, lease=lease)

    server, serving, url = await serve(Starlette(routes=[Route("/stream", endpoint, methods=["GET"])]))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            async with http.stream("GET", "/stream") as response:
                assert response.status_code == 200
                assert {name: response.headers[name] for name in SSE_HEADERS} == SSE_HEADERS
                lines = response.aiter_lines()
                assert await anext(lines) == "data: hello"
                assert await anext(lines) == ""
                assert await anext(lines) == ": ping"
                assert not closed.is_set()
            # The connection is closed here, mid-stream.
            await asyncio.wait_for(lease.released.wait(), timeout=5)
        assert closed.is_set()
        assert lease.releases == 1
        assert lease.keep_alives >= 1
    finally:
        server.should_exit = True
        await serving


# -- the real app ---------------------------------------------------------------------------------------------------


async def test_chatkit_and_the_plain_api_stream_with_the_sse_headers(make_settings: MakeSettings) -> None:
    """No worker runs: each turn ends after TURN_START_TIMEOUT_S with an error event, and gives its slot back."""
    alice = new_user(name="alice")
    settings = make_settings(TURN_START_TIMEOUT_S=0.3, MAX_TURNS_IN_FLIGHT_PER_USER=1)
    async with in_process_gateway(settings) as gateway:
        limits: Limiter = gateway.state["limiter"]
        create = {"type": "threads.create", "params": {"input": user_input("hello")}}
        streamed = await gateway.chatkit(alice, create)
        assert streamed.status_code == 200, streamed.text
        assert {name: streamed.headers[name] for name in SSE_HEADERS} == SSE_HEADERS
        # The security headers middleware adds its own and leaves the stream's cache-control alone.
        assert streamed.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in streamed.headers["content-security-policy"]
        frames = streamed.text.split("\n\n")
        assert frames[-1] == "", "whole frames only"
        events = [
            json.loads(line.removeprefix("data: "))
            for frame in frames[:-1]
            for line in frame.split("\n")
            if line.startswith("data: ")
        ]
        assert events[0]["type"] == "thread.created"
        assert events[-1]["type"] == "error" and events[-1]["allow_retry"] is True
        assert await limits.turns_in_flight(alice) == 0

        plain = await gateway.http.post(
            f"/chat/{alice.user_id}",
            json={"message": "hello"},
            headers={**bearer(alice), "Accept": "text/event-stream"},
        )
        assert plain.status_code == 200, plain.text
        assert {name: plain.headers[name] for name in SSE_HEADERS} == SSE_HEADERS
        assert "\r" not in plain.text
        named = [dict(line.split(": ", 1) for line in frame.split("\n")) for frame in plain.text.split("\n\n")[:-1]]
        assert [frame["event"] for frame in named] == ["thread", "error", "done"]
        done = json.loads(named[-1]["data"])
        assert done["thread_id"] == json.loads(named[0]["data"])["thread_id"]
        assert done["error"]["retryable"] is True
        assert await limits.turns_in_flight(alice) == 0
