"""The load generator's cheap frame counter agrees with its full SSE frame parser wherever the chunks are cut."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from benchmarks.users import TurnSample, _FrameCounter, _frames


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
