"""Every error event a client gets says something a person can read: the ChatKit SDK's own `stream.error` (sent
when a request's stream fails inside the SDK) carries no message, and the gateway adds one."""

from __future__ import annotations

import json

import pytest

from kitrelay.gateway import turn_relay
from kitrelay.gateway.client import user_input
from kitrelay.gateway.errors import STREAM_ERROR_MESSAGE, STREAM_ERROR_MESSAGE_NO_RETRY, error_frame_with_message
from kitrelay.gateway.server import NOT_STARTED_MESSAGE
from tests.gateway.conftest import MakeSettings, in_process_gateway, new_user


def test_an_error_frame_without_words_gets_them_and_other_frames_are_left_alone() -> None:
    bare = b'data: {"type":"error","code":"stream.error","allow_retry":true}\n\n'
    worded = error_frame_with_message(bare)
    assert json.loads(worded.removeprefix(b"data: ")) == {
        "type": "error",
        "code": "stream.error",
        "allow_retry": True,
        "message": STREAM_ERROR_MESSAGE,
    }
    assert worded.endswith(b"\n\n")
    final = b'data: {"type":"error","code":"stream.error","allow_retry":false}\n\n'
    assert (
        json.loads(error_frame_with_message(final).removeprefix(b"data: "))["message"] == STREAM_ERROR_MESSAGE_NO_RETRY
    )
    said = b'data: {"type":"error","code":"custom","message":"No.","allow_retry":false}\n\n'
    assert error_frame_with_message(said) is said
    other = b'data: {"type":"thread.created","thread":{}}\n\n'
    assert error_frame_with_message(other) is other


async def test_a_turn_that_fails_to_start_is_refused_in_words(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure nobody foresaw, before the turn is handed over (here: the thread's claim raises): the client gets a
    retryable `stream.error` that says so, and the user's message is kept."""

    async def broken(*args: object, **kwargs: object) -> bool:
        raise ValueError("a bug")

    monkeypatch.setattr(turn_relay, "claim_thread", broken)
    alice = new_user()
    async with in_process_gateway(make_settings(AUTH_MODE="dev", DEV_USER_ID=alice.user_id)) as gateway:
        answer = await gateway.chatkit(None, {"type": "threads.create", "params": {"input": user_input("hi")}})
        frames = [json.loads(line[6:]) for line in answer.text.split("\n") if line.startswith("data: ")]
        errors = [frame for frame in frames if frame["type"] == "error"]
        assert errors == [
            {"type": "error", "code": "stream.error", "message": NOT_STARTED_MESSAGE, "allow_retry": True}
        ]
        thread_id = frames[0]["thread"]["id"]
        thread = await gateway.chatkit(None, {"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
        assert [item["type"] for item in thread.json()["items"]["data"]] == ["user_message"]
