"""The plain API (POST /chat/{user_id}, GET /chat/{user_id}/history) against the real JWT system: gateway and the
triage, task and research workers as processes on real NATS, Redis and SQLite.

It must be the same machinery as /chatkit: the same threads (visible through threads.get_by_id), the same workers
(a triage handoff to the task agent), the same checks (4xx JSON before anything is stored, 404s identical to
other 404s)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.client import ChatKitClient
from kitrelay.gateway.plain_api import Translation
from kitrelay.shared.messages import Identity
from kitrelay.shared.settings import Settings
from tests.gateway.conftest import SYSTEM_MAX_MESSAGE_CHARS, bearer, new_user
from tests.system import RunningSystem

pytestmark = pytest.mark.timeout(120)
DEV_USER = Settings(_env_file=None).DEV_USER_ID
# The JWT system's cap on a user's turns in flight (tests/gateway/conftest.py).
SYSTEM_MAX_TURNS_IN_FLIGHT = 16


@pytest.fixture
async def alice(jwt_system: RunningSystem) -> AsyncIterator[tuple[Identity, httpx.AsyncClient]]:
    who = new_user(name="alice")
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=60, headers=bearer(who)) as http:
        yield who, http


async def chat(http: httpx.AsyncClient, who: Identity, body: Any) -> httpx.Response:
    return await http.post(f"/chat/{who.user_id}", json=body)


async def chat_sse(http: httpx.AsyncClient, who: Identity, body: Any) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) for each event of the SSE answer."""
    events: list[tuple[str, str | None, dict[str, Any]]] = []
    headers = {"Accept": "text/event-stream"}
    async with aconnect_sse(http, "POST", f"/chat/{who.user_id}", json=body, headers=headers) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if sse.data:
                events.append((sse.event, sse.id or None, json.loads(sse.data)))
    return events


async def thread_ids(http: httpx.AsyncClient, who: Identity) -> list[str]:
    response = await http.get(f"/chat/{who.user_id}/history")
    assert response.status_code == 200, response.text
    threads = response.json()["data"]
    assert all(in_utc(thread["created_at"]) for thread in threads), threads
    return [thread["id"] for thread in threads]


async def all_pages(http: httpx.AsyncClient, who: Identity, thread_id: str, *, limit: int) -> list[dict[str, Any]]:
    paged: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"thread_id": thread_id, "limit": limit, **({"after": after} if after else {})}
        chunk = (await http.get(f"/chat/{who.user_id}/history", params=params)).json()
        paged += chunk["data"]
        if not chunk["has_more"]:
            return paged
        after = chunk["after"]


async def test_json_reply_names_the_task_and_carries_its_widget(
    alice: tuple[Identity, httpx.AsyncClient],
) -> None:
    who, http = alice
    response = await chat(http, who, {"message": "add task buy milk"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["thread_id"].startswith("thr") and body["turn_id"]
    assert "buy milk" in body["reply"]["text"]
    assert body["reply"]["error"] is None
    [widget] = body["reply"]["widgets"]
    assert widget["widget"]["type"] == "Card"
    assert "buy milk" in (widget["copy_text"] or "")
    assert "buy milk" in json.dumps(widget["widget"])
    roles = [item["role"] for item in body["items"]]
    assert roles[0] == "user" and body["items"][0]["text"] == "add task buy milk"
    assert all(in_utc(item["created_at"]) for item in body["items"]), body["items"]
    assert "assistant" in roles and "widget" in roles
    assert body["items"][roles.index("widget")]["id"] == widget["item_id"]


async def test_sse_streams_deltas_then_done_and_a_follow_up_shares_the_thread(
    jwt_system: RunningSystem, alice: tuple[Identity, httpx.AsyncClient]
) -> None:
    who, http = alice
    first = await chat_sse(http, who, {"message": "add task water the plants"})
    names = [name for name, _, _ in first]
    assert names[0] == "thread" and names[-1] == "done", names
    assert "progress" in names, "the triage handoff to the task agent shows as progress"
    deltas = [data["text"] for name, _, data in first if name == "delta"]
    assert deltas, "the reply streams (the task tool's own line, whole: its widget is the answer)"
    done = first[-1][2]
    thread_id, turn_id = first[0][2]["thread_id"], first[0][2]["turn_id"]
    assert (done["thread_id"], done["turn_id"]) == (thread_id, turn_id)
    assert "".join(deltas) == done["text"]
    assert "water the plants" in done["text"]
    [widget_event] = [data for name, _, data in first if name == "widget"]
    assert done["widgets"] == [widget_event]
    # Relayed events carry their Redis entry id, for re-attaching through GET /turns/{turn_id}/events.
    assert all(entry_id for name, entry_id, _ in first if name == "delta")

    second = await chat(http, who, {"message": "list my tasks", "thread_id": thread_id})
    assert second.status_code == 200, second.text
    listed = second.json()
    assert listed["thread_id"] == thread_id and listed["turn_id"] != turn_id
    [tasks] = listed["reply"]["widgets"]
    assert tasks["widget"]["type"] == "ListView"
    assert "water the plants" in json.dumps(tasks["widget"])

    history = await http.get(f"/chat/{who.user_id}/history", params={"thread_id": thread_id})
    assert history.status_code == 200, history.text
    page = history.json()
    assert page["thread_id"] == thread_id and page["has_more"] is False
    messages = page["data"]
    user_texts = [m["text"] for m in messages if m["role"] == "user"]
    assert user_texts == ["add task water the plants", "list my tasks"]
    roles = [m["role"] for m in messages]
    assert roles.index("user") == 0 and roles.count("widget") == 2
    # In order: the second turn's items all come after the first's.
    second_user = [i for i, m in enumerate(messages) if m["role"] == "user"][1]
    ids = [m["id"] for m in messages]
    assert ids.index(widget_event["item_id"]) < second_user
    assert ids[second_user:] == [item["id"] for item in listed["items"]]
    created = [m["created_at"] for m in messages]
    assert created == sorted(created)
    assert all(in_utc(moment) for moment in created), created

    # A reply a model writes streams in pieces (small talk: the task agent hands it back to triage).
    greeted = await chat_sse(http, who, {"message": "hi", "thread_id": thread_id})
    assert len([name for name, _, _ in greeted if name == "delta"]) > 1
    messages = (await http.get(f"/chat/{who.user_id}/history", params={"thread_id": thread_id})).json()["data"]

    # Pages: two at a time, following `after`, give the same messages.
    paged = await all_pages(http, who, thread_id, limit=2)
    assert [m["id"] for m in paged] == [m["id"] for m in messages]

    # The very same thread, through the ChatKit protocol.
    thread = await ChatKitClient(http).get_thread(thread_id)
    chatkit_ids = [item["id"] for item in thread["items"]["data"] if item["type"] != "sdk_hidden_context"]
    assert chatkit_ids == [m["id"] for m in messages]

    # And the user's threads, newest first.
    mine = await thread_ids(http, who)
    assert mine[0] == thread_id


async def test_another_users_path_is_forbidden_and_their_thread_not_found(
    jwt_system: RunningSystem, alice: tuple[Identity, httpx.AsyncClient]
) -> None:
    who, http = alice
    created = (await chat(http, who, {"message": "hello"})).json()
    thread_id = created["thread_id"]
    mallory = new_user(team_id=who.team_id, name="mallory")
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=30, headers=bearer(mallory)) as other:
        # Mallory's own token, alice's path: 403, saying only that the path must be hers.
        for response in (
            await other.post(f"/chat/{who.user_id}", json={"message": "hi"}),
            await other.get(f"/chat/{who.user_id}/history"),
        ):
            assert response.status_code == 403, response.text
            assert response.json()["error"] == "forbidden"
        # Mallory's own path, alice's thread: exactly the answer for a thread that does not exist.
        foreign = await other.post(f"/chat/{mallory.user_id}", json={"message": "hi", "thread_id": thread_id})
        missing = await other.post(f"/chat/{mallory.user_id}", json={"message": "hi", "thread_id": "thr_nope"})
        assert foreign.status_code == missing.status_code == 404
        assert foreign.content == missing.content
        assert foreign.json() == {"error": "not_found", "message": "Not found."}
        unknown_route = await other.get("/no/such/route")
        assert foreign.content == unknown_route.content
        foreign_history = await other.get(f"/chat/{mallory.user_id}/history", params={"thread_id": thread_id})
        missing_history = await other.get(f"/chat/{mallory.user_id}/history", params={"thread_id": "thr_nope"})
        assert foreign_history.status_code == missing_history.status_code == 404
        assert foreign_history.content == missing_history.content == foreign.content
        assert await thread_ids(other, mallory) == []
    # Nothing was added to alice's thread.
    history = (await http.get(f"/chat/{who.user_id}/history", params={"thread_id": thread_id})).json()
    assert [m["text"] for m in history["data"] if m["role"] == "user"] == ["hello"]


async def test_no_token_is_401(jwt_system: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=30) as http:
        for response in (
            await http.post("/chat/anyone", json={"message": "hi"}),
            await http.get("/chat/anyone/history"),
        ):
            assert response.status_code == 401, response.text
            assert isinstance(response.json()["error"], str) and isinstance(response.json()["message"], str)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"message": ""}, 400, "invalid_request"),
        ({"message": "   "}, 400, "empty_message"),
        ({"message": 42}, 400, "invalid_request"),
        ({"message": "hi", "extra": True}, 400, "invalid_request"),
        ({"message": "hi", "thread_id": 7}, 400, "invalid_request"),
        ({"message": "x" * (SYSTEM_MAX_MESSAGE_CHARS + 1)}, 413, "message_too_long"),
        (["hi"], 400, "invalid_request"),
        (b"{not json", 400, "malformed_json"),
        (b"", 400, "invalid_request"),
    ],
    ids=[
        "empty-object",
        "empty",
        "blank",
        "number",
        "extra-field",
        "bad-thread-id",
        "too-long",
        "list",
        "junk",
        "no-body",
    ],
)
async def test_bad_bodies_are_refused_and_store_nothing(
    alice: tuple[Identity, httpx.AsyncClient], body: Any, status: int, code: str
) -> None:
    who, http = alice
    url = f"/chat/{who.user_id}"
    headers = {"Content-Type": "application/json"}
    if isinstance(body, bytes):
        response = await http.post(url, content=body, headers=headers)
    else:
        response = await http.post(url, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert isinstance(response.json()["message"], str)
    # Asking for SSE changes nothing: the refusal is JSON, before any stream.
    sse = await http.post(
        url,
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={**headers, "Accept": "text/event-stream"},
    )
    assert sse.status_code == status and sse.headers["content-type"].startswith("application/json")
    assert await thread_ids(http, who) == []


async def test_a_body_that_is_not_declared_json_is_415(alice: tuple[Identity, httpx.AsyncClient]) -> None:
    who, http = alice
    response = await http.post(
        f"/chat/{who.user_id}", content=b'{"message": "hi"}', headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"
    assert await thread_ids(http, who) == []


async def test_history_parameters_are_checked(alice: tuple[Identity, httpx.AsyncClient]) -> None:
    who, http = alice
    url = f"/chat/{who.user_id}/history"
    for params in ({"limit": 0}, {"limit": 1000}, {"limit": "many"}):
        response = await http.get(url, params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "invalid_request"
    assert (await http.get(url, params={"after": "thr_nope"})).status_code == 404


async def test_the_routes_are_in_the_openapi_document(jwt_system: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=30) as http:
        document = (await http.get("/openapi.json")).json()
    post = document["paths"]["/chat/{user_id}"]["post"]
    assert post["summary"] and "403" in post["responses"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["additionalProperties"] is False
    assert "ChatReply" in document["components"]["schemas"]
    assert document["paths"]["/chat/{user_id}/history"]["get"]["summary"]


async def test_dev_mode_speaks_as_the_dev_user(system: RunningSystem) -> None:
    """A gateway with no token key (the `system` fixture): the path's user is DEV_USER_ID."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        response = await http.post(f"/chat/{DEV_USER}", json={"message": "hello"})
        assert response.status_code == 200, response.text
        assert response.json()["reply"]["text"] == GREETING_TEXT
        other = await http.post("/chat/someone-else", json={"message": "hello"})
        assert other.status_code == 403 and other.json()["error"] == "forbidden"


async def test_a_research_answer_carries_its_sources(alice: tuple[Identity, httpx.AsyncClient]) -> None:
    who, http = alice
    word = f"quokka{secrets.token_hex(3)}"
    document = f"# Falcon handbook\n\n## Hangar keys\n\nThe {word} key for the hangar is kept by the quartermaster.\n"
    params = {"name": "falcon.md", "size": len(document), "mime_type": "text/markdown"}
    created = (await http.post("/chatkit", json={"type": "attachments.create", "params": params})).json()
    upload = await http.post(
        f"/attachments/{created['id']}/upload", content=document.encode(), headers={"content-type": "text/markdown"}
    )
    assert upload.status_code == 200, upload.text

    response = await chat(http, who, {"message": f"what does the falcon handbook say about the {word} key?"})
    assert response.status_code == 200, response.text
    reply = response.json()["reply"]
    assert "quartermaster" in reply["text"]
    assert [source["title"] for source in reply["sources"]] == ["Falcon handbook"]
    [card] = reply["widgets"]
    assert card["widget"]["status"]["text"] == "Sources (1)"


async def test_every_answer_gives_the_in_flight_slot_back(alice: tuple[Identity, httpx.AsyncClient]) -> None:
    """More replies than the user's in-flight cap, one after another, of each kind: whole JSON answers, whole SSE
    streams, SSE streams the client walks away from. One leaked slot per reply of a kind would end in a 429."""
    who, http = alice
    cap = SYSTEM_MAX_TURNS_IN_FLIGHT
    headers = {"Accept": "text/event-stream"}
    body = {"message": "hi"}
    for n in range(cap + 1):
        response = await chat(http, who, body)
        assert response.status_code == 200, (n, response.text)
    for n in range(cap + 1):
        if n % 2:
            assert (await chat_sse(http, who, body))[-1][0] == "done"
            continue
        async with aconnect_sse(http, "POST", f"/chat/{who.user_id}", json=body, headers=headers) as source:
            assert source.response.status_code == 200, (n, await source.response.aread())
            async for sse in source.aiter_sse():
                if sse.event == "thread":
                    break  # and hang up
    # Every turn, the abandoned ones too, went on and was saved.
    assert len(await all_threads(http, who)) == 2 * (cap + 1)


async def all_threads(http: httpx.AsyncClient, who: Identity) -> list[str]:
    ids: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = (await http.get(f"/chat/{who.user_id}/history", params=params)).json()
        ids += [thread["id"] for thread in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["after"]


def in_utc(moment: str) -> bool:
    """An ISO 8601 time that says its offset, and it is UTC's."""
    return datetime.fromisoformat(moment).utcoffset() == timedelta(0)


# -- the translation on its own, on the event shapes a redelivered or replaced reply produces -----------------------


def _assistant(item_id: str, text: str, annotations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": annotations or []}]
    return {
        "id": item_id,
        "thread_id": "thr_1",
        "created_at": "2026-01-01T00:00:00",
        "type": "assistant_message",
        "content": content,
    }


def _widget(item_id: str, title: str) -> dict[str, Any]:
    widget = {"type": "Card", "children": [{"type": "Text", "value": title}]}
    return {
        "id": item_id,
        "thread_id": "thr_1",
        "created_at": "2026-01-01T00:00:01",
        "type": "widget",
        "widget": widget,
        "copy_text": title,
    }


def test_a_withdrawn_attempt_and_a_replaced_widget_leave_only_the_final_reply() -> None:
    source = {"type": "file", "filename": "falcon.md", "title": "Falcon handbook"}
    cite = {"type": "annotation", "source": source, "index": 3}
    translation = Translation("thr_1")
    seen = [
        translation.events({"type": "client_effect", "name": "kitrelay.turn", "data": {"turn_id": "turn_1"}}),
        translation.events({"type": "thread.item.done", "item": _assistant("msg_dead", "Half a rep")}),
        translation.events({"type": "thread.item.removed", "item_id": "msg_dead"}),
        translation.events({"type": "thread.item.removed", "item_id": "msg_never_seen"}),
        translation.events({"type": "thread.item.done", "item": _assistant("msg_a", "The answer.", [cite, cite])}),
        translation.events({"type": "thread.item.done", "item": _widget("msg_w", "before")}),
        translation.events({"type": "thread.item.replaced", "item": _widget("msg_w", "after")}),
        translation.events({"type": "stream_options", "stream_options": {"allow_cancel": True}}),
    ]
    names = [name for events in seen for name, _ in events]
    assert names == ["thread", "removed", "widget", "widget"]
    final = translation.reply()
    assert (final.thread_id, final.turn_id) == ("thr_1", "turn_1")
    assert final.reply.text == "The answer."
    assert [w.copy_text for w in final.reply.widgets] == ["after"]
    assert final.reply.sources == [source]
    assert [m.id for m in final.items] == ["msg_a", "msg_w"] and final.reply.error is None


def test_an_error_event_is_in_the_reply() -> None:
    translation = Translation(None)
    translation.events({"type": "thread.created", "thread": {"id": "thr_9"}})
    [(name, data)] = translation.events({"type": "error", "code": "stream.error", "allow_retry": True})
    assert name == "error" and data["retryable"] is True and data["message"]
    final = translation.reply()
    assert final.thread_id == "thr_9" and final.reply.error is not None and final.reply.error.retryable
