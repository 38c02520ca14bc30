"""Bad input to the ChatKit endpoint gets a 4xx with a JSON message, before any SSE starts, and stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, user_input
from tests.system import RunningSystem


@pytest.fixture
async def http(system: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
        yield client


async def thread_count(http: httpx.AsyncClient) -> int:
    response = await http.post("/chatkit", json={"type": "threads.list", "params": {"limit": 100}})
    assert response.status_code == 200
    return len(response.json()["data"])


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (b"", "invalid_request", "empty"),
        (b"{not json", "malformed_json", "not valid JSON"),
        (b"[1, 2]", "invalid_request", "JSON object"),
        (b'{"params": {}}', "invalid_request", "'type'"),
        (b'{"type": "threads.explode", "params": {}}', "unknown_request_type", "threads.explode"),
        (b'{"type": "threads.create"}', "invalid_request", "params"),
        (
            b'{"type": "threads.create", "params": {"input": {"content": [{"type": "input_text", "text": "hi"}]}}}',
            "invalid_request",
            "params.input.attachments",
        ),
        (b'{"type": "threads.get_by_id", "params": {}}', "invalid_request", "thread_id"),
    ],
)
async def test_malformed_requests_get_400_with_a_json_message(
    http: httpx.AsyncClient, body: bytes, code: str, fragment: str
) -> None:
    before = await thread_count(http)
    response = await http.post("/chatkit", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert payload["error"] == code
    assert fragment in payload["message"]
    assert await thread_count(http) == before


@pytest.mark.parametrize(
    "request_body",
    [
        {"type": "threads.add_user_message", "params": {"thread_id": "thr_missing", "input": user_input("hi")}},
        {"type": "threads.get_by_id", "params": {"thread_id": "thr_missing"}},
        {"type": "threads.retry_after_item", "params": {"thread_id": "thr_missing", "item_id": "msg_x"}},
        {"type": "items.list", "params": {"thread_id": "thr_missing"}},
        {"type": "threads.delete", "params": {"thread_id": "thr_missing"}},
        {
            "type": "threads.custom_action",
            "params": {"thread_id": "thr_missing", "item_id": None, "action": {"type": "x", "payload": {}}},
        },
    ],
)
async def test_unknown_thread_is_404_before_any_stream(http: httpx.AsyncClient, request_body: dict) -> None:
    response = await http.post("/chatkit", json=request_body)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "not_found", "message": "Not found."}


async def test_unknown_item_of_a_real_thread_is_404(http: httpx.AsyncClient) -> None:
    client = ChatKitClient(http)
    events = [event async for event in client.create_thread("hello")]
    thread_id = events[0].data["thread"]["id"]
    response = await http.post(
        "/chatkit", json={"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": "msg_nope"}}
    )
    assert response.status_code == 404
    thread = await client.get_thread(thread_id)
    assert [item["type"] for item in thread["items"]["data"]] == ["user_message", "assistant_message"]
