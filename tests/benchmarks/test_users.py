"""The load generator's cheap frame counter agrees with its full SSE frame parser wherever the chunks are cut, and
its bare HTTP stream reader counts a chunked response as it arrives, over a real socket, and reports refusals
and cut connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import pairwise

import aiohttp
import pytest

from benchmarks.users import SseUser, TurnSample, _FrameCounter, _frames


def _stream(crlf: bool) -> bytes:
    opening = [
        'data: {"type":"thread.created","thread":{"id":"thr_1"}}',
        'data: {"type":"client_effect","name":"kitrelay.turn","data":{"turn_id":"turn_1"}}',
    ]
    relayed = [f'id: 1700000000000-{n}\ndata: {{"type":"thread.item.updated","n":{n}}}' for n in range(7)]
    frames = [*opening, relayed[0], ": ping", *relayed[1:]]
    text = "".join(f"{frame}\n\n" for frame in frames)
    return text.replace("\n", "\r\n").encode() if crlf else text.encode()


def _counted(stream: bytes, cuts: list[int]) -> tuple[TurnSample, list[tuple[int, int]]]:
    sample = TurnSample(kind="streams", started=0.0)
    heard: list[tuple[int, int]] = []
    counter = _FrameCounter(sample, lambda relayed, frames: heard.append((relayed, frames)))
    bounds = [0, *cuts, len(stream)]
    for n, (start, end) in enumerate(pairwise(bounds)):
        counter.read(stream[start:end], float(n + 1))
    return sample, heard


@pytest.mark.parametrize("crlf", [False, True])
def test_counts_match_the_parser_at_every_cut(crlf: bool) -> None:
    stream = _stream(crlf)
    parsed = _frames(bytearray(stream.replace(b"\r\n", b"\n")))
    relayed = sum(frame.id is not None for frame in parsed)
    assert (len(parsed), relayed) == (9, 7)
    for cut in range(1, len(stream)):
        sample, heard = _counted(stream, [cut])
        assert sample.events == len(parsed), f"cut at {cut}"
        assert sum(r for r, _ in heard) == relayed, f"cut at {cut}"
        # The relayed frames of a chunk came at once: one gap per chunk after the first, zeros for the rest.
        assert len(sample.gaps_s) == relayed - 1
        assert sample.first_event_s in (1.0, 2.0)
        assert sample.error is None


def test_frames_of_one_chunk_share_its_time_and_later_chunks_are_gaps() -> None:
    stream = _stream(crlf=False)
    second = stream.index(b"id: 1700000000000-3")
    sample, heard = _counted(stream, [second])
    assert sample.first_event_s == 1.0
    assert sample.gaps_s == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert heard == [(3, 5), (4, 4)]


def test_an_error_event_is_reported() -> None:
    error = json.dumps({"type": "error", "code": "custom", "message": "no worker"}, separators=(",", ":"))
    sample, _ = _counted(_stream(crlf=False) + f"data: {error}\n\n".encode(), [])
    assert sample.error is not None
    assert "no worker" in sample.error


Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _server(reply: Reply) -> AsyncIterator[SseUser]:
    """A loopback server that reads one request and answers with `reply`; a user pointed at it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        await reply(reader, writer)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, aiohttp.ClientSession() as http:
        yield SseUser(http, f"http://127.0.0.1:{port}", turn_timeout_s=10)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_a_chunked_stream_is_counted_as_it_arrives() -> None:
    stream = _stream(crlf=False)

    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        # In pieces that cut frames (and chunk headers) anywhere, each written on its own.
        for start in range(0, len(stream), 37):
            writer.write(_chunked(stream[start : start + 37]))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")

    heard: list[tuple[int, int]] = []
    async with _server(reply) as user:
        sample, _ = await user.turn(
            "streams", {"type": "x"}, parse=False, on_frames=lambda *counts: heard.append(counts)
        )

    assert sample.error is None
    # Two opening frames and seven relayed ones (the ping has no data).
    assert (sample.events, len(sample.gaps_s) + 1) == (9, 7)
    assert (sum(relayed for relayed, _ in heard), sum(frames for _, frames in heard)) == (7, 9)


async def test_a_refusal_is_the_samples_error() -> None:
    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":"rate_limited"}'
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    async with _server(reply) as user:
        sample, _ = await user.turn("streams", {"type": "x"}, parse=False)

    assert sample.error == 'HTTP 429: {"error":"rate_limited"}'


async def test_a_stream_cut_before_its_end_is_an_error() -> None:
    async def reply(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(_chunked(b"id: 1-0\ndata: {}\n\n"))
        await writer.drain()

    async with _server(reply) as user:
        sample, _ = await user.turn("streams", {"type": "x"}, parse=False)

    assert sample.events == 1
    assert sample.error is not None and "closed the stream" in sample.error
