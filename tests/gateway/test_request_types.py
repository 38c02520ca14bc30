"""Every ChatKit request type reaches the ChatKit server through the gateway and gets its kind of answer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, ChatKitError, StreamEvent
from tests.system import RunningSystem


@pytest.fixture
async def client(system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        yield ChatKitClient(http)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


async def new_thread(client: ChatKitClient, text: str) -> tuple[str, list[StreamEvent]]:
    events = await collect(client.create_thread(text))
    return events[0].data["thread"]["id"], events


async def test_json_request_types(client: ChatKitClient, system: RunningSystem) -> None:
    thread_id, events = await new_thread(client, "hello")
    reply_id = next(
        e.data["item"]["id"]
        for e in events
        if e.type == "thread.item.done" and e.data["item"]["type"] == "assistant_message"
    )

    listed = await client.call({"type": "threads.list", "params": {"limit": 100, "order": "desc"}})
    assert thread_id in [t["id"] for t in listed["data"]]

    updated = await client.call({"type": "threads.update", "params": {"thread_id": thread_id, "title": "Plants"}})
    assert updated["title"] == "Plants"
    assert (await client.get_thread(thread_id))["title"] == "Plants"

    items = await client.call({"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}})
    assert [i["type"] for i in items["data"]] == ["user_message", "assistant_message"]

    feedback = {
        "type": "items.feedback",
        "params": {"thread_id": thread_id, "item_ids": [reply_id], "kind": "positive"},
    }
    assert await client.call(feedback) == {}
    # The vote is stored: the admin command lists it.
    listing = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kitrelay.services.cli", "kb", "feedback", "--team", "local-team"],
        env={**system.env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert reply_id in listing.stdout and "positive" in listing.stdout

    assert await client.call({"type": "threads.delete", "params": {"thread_id": thread_id}}) == {}
    with pytest.raises(Exception, match="404"):
        await client.get_thread(thread_id)


async def test_retry_after_item_streams_a_new_reply_in_place_of_the_old(client: ChatKitClient) -> None:
    thread_id, events = await new_thread(client, "good morning")
    user_id = next(
        e.data["item"]["id"]
        for e in events
        if e.type == "thread.item.done" and e.data["item"]["type"] == "user_message"
    )

    retried = await collect(
        client.stream({"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": user_id}})
    )

    texts = [e.data["item"]["content"][0]["text"] for e in retried if e.type == "thread.item.done"]
    old_reply = next(
        e.data["item"] for e in events if e.type == "thread.item.done" and e.data["item"]["type"] == "assistant_message"
    )
    assert texts == [old_reply["content"][0]["text"]]
    saved = (await client.get_thread(thread_id))["items"]["data"]
    assert [i["type"] for i in saved] == ["user_message", "assistant_message"]
    assert saved[1]["content"][0]["text"] == texts[0]
    assert saved[1]["id"] != old_reply["id"], "the old reply was replaced, not kept"


@pytest.mark.parametrize(
    "request_body",
    [
        {"type": "input.transcribe", "params": {"audio_base64": "AAAA", "mime_type": "audio/webm"}},
        {
            "type": "threads.sync_custom_action",
            "params": {"thread_id": "thr_x", "item_id": None, "action": {"type": "task.toggle", "payload": {}}},
        },
    ],
)
async def test_a_request_type_this_server_does_not_offer_is_a_clear_400(
    client: ChatKitClient, request_body: dict
) -> None:
    # A client error, not a 5xx: the request asks for something this deployment does not offer.
    with pytest.raises(ChatKitError) as caught:
        await client.call(request_body)
    assert caught.value.status_code == 400
    assert caught.value.body["error"] == "unsupported_request"
    assert request_body["type"] in caught.value.body["message"]
