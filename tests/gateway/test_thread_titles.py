"""A new thread is named after its first message by the gateway, so every client shows the same title."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from chatkit.types import InferenceOptions, UserMessageItem, UserMessageTextContent

from kitrelay.gateway.client import ChatKitClient
from kitrelay.gateway.server import thread_title
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


def test_a_title_is_the_message_on_one_line() -> None:
    assert thread_title(_message("  add task\n buy   milk ")) == "add task buy milk"


def test_a_long_message_is_cut_at_a_word() -> None:
    title = thread_title(_message("please remember that the quarterly report is due on friday afternoon at four"))
    assert title == "please remember that the quarterly report is due on friday…"
    assert title is not None and len(title) <= 61


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
    assert [thread["title"] for thread in updates] == ["add task water the plants"]

    [_ async for _ in client.send(thread_id, "list my tasks")]
    assert (await client.get_thread(thread_id))["title"] == "add task water the plants"
    listed = await client.call({"type": "threads.list", "params": {"limit": 50, "order": "desc"}})
    assert {t["id"]: t.get("title") for t in listed["data"]}[thread_id] == "add task water the plants"
