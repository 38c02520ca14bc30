"""A new thread is named after its first message by the gateway, cleaned up, so every client shows the same
title and a sidebar tells threads apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from chatkit.types import InferenceOptions, UserMessageItem, UserMessageTextContent

from kitrelay.gateway.client import ChatKitClient
from kitrelay.gateway.titles import thread_title
from tests.system import RunningSystem


def _message(text: str) -> UserMessageItem:
    return UserMessageItem(
        id="msg_1",
        thread_id="thr_1",
        created_at=datetime.now(UTC),
        content=[UserMessageTextContent(text=text)],
        attachments=[],
        inference_options=InferenceOptions(),
    )


def test_a_title_is_the_message_on_one_line_capitalised() -> None:
    assert thread_title(_message("  add task\n buy   milk ")) == "Add task buy milk"


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("hey, can you please add task **buy milk**??", "Add task buy milk"),
        (
            "Hi there! I would like to know what the guide says about [VPN](https://vpn.example) access?",
            "What the guide says about VPN access",
        ),
        ("## Handover\n- who locks the cranes?", "Handover who locks the cranes"),
        ("hello!", "Hello"),
        ("I need to call `Bob` tomorrow.", "Call Bob tomorrow"),
    ],
)
def test_greetings_politeness_markdown_and_trailing_punctuation_go(message: str, title: str) -> None:
    assert thread_title(_message(message)) == title


def test_a_long_message_is_cut_at_a_word() -> None:
    title = thread_title(_message("please remember that the quarterly report is due on friday afternoon at four"))
    assert title == "Remember that the quarterly report is due on friday afternoon…"
    assert title is not None and len(title) <= 64


def test_questions_that_differ_only_at_their_end_get_different_titles() -> None:
    first = thread_title(_message("what does the night shift handbook say about the handover?"))
    second = thread_title(_message("what does the night shift handbook say about breaks?"))
    assert first == "What does the night shift handbook say about the handover"
    assert second == "What does the night shift handbook say about breaks"


def test_a_message_without_text_gives_no_title() -> None:
    assert thread_title(_message("   ")) is None


@pytest.fixture
async def client(system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        yield ChatKitClient(http)


async def test_the_first_message_names_the_thread_and_later_ones_do_not(client: ChatKitClient) -> None:
    events = [event async for event in client.create_thread("add task water the plants")]
    thread_id = events[0].data["thread"]["id"]
    assert "title" not in events[0].data["thread"]
    updates = [event.data["thread"] for event in events if event.type == "thread.updated"]
    assert [thread["title"] for thread in updates] == ["Add task water the plants"]

    [_ async for _ in client.send(thread_id, "list my tasks")]
    assert (await client.get_thread(thread_id))["title"] == "Add task water the plants"
    listed = await client.call({"type": "threads.list", "params": {"limit": 50, "order": "desc"}})
    assert {t["id"]: t.get("title") for t in listed["data"]}[thread_id] == "Add task water the plants"
