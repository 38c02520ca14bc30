"""Nobody sees another user's data: two users in one team and a third in another team, against the real system
(JWT-authenticated gateway, triage, task and research workers as processes).

Every attempt on another user's thread, item or attachment is answered exactly like one on an id that does not
exist (same status, same body: existence does not leak), as JSON, never as a stream, and changes nothing. Tasks
and knowledge-base documents are shared within a team and invisible outside it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from kitrelay.gateway.client import StreamEvent, user_input
from kitrelay.shared.messages import Identity
from tests.gateway.conftest import Caller, bearer, caller, new_user
from tests.system import RunningSystem

# One world (and its HTTP clients) for the whole module, so its tests share the module's event loop.
pytestmark = [pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]

WORD = f"zephyr{secrets.token_hex(3)}"
DOCUMENT = f"""# Falcon handbook

## Hangar keys

The {WORD} key for the hangar is kept by the quartermaster, who hands it out at dawn.
""".encode()


@dataclass
class World:
    alice: Caller  # acme
    bob: Caller  # acme, alice's teammate
    carol: Caller  # globex
    mallory: Caller  # globex, with alice's very user id
    chat_thread: str
    chat_turn: str
    task_thread: str
    user_message: str
    reply: str
    widget: str
    uploaded: str
    pending: str
    task_title: str


def items_of(events: list[StreamEvent], item_type: str) -> list[dict[str, Any]]:
    return [e.data["item"] for e in events if e.type == "thread.item.done" and e.data["item"]["type"] == item_type]


def reply_text(events: list[StreamEvent]) -> str:
    return " ".join(item["content"][0]["text"] for item in items_of(events, "assistant_message"))


async def create_attachment(who: Caller, name: str, content: bytes) -> dict[str, Any]:
    params = {"name": name, "size": len(content), "mime_type": "text/markdown"}
    created: dict[str, Any] = await who.client.call({"type": "attachments.create", "params": params})
    return created


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(jwt_system: RunningSystem) -> AsyncIterator[World]:
    acme = f"acme_{secrets.token_hex(3)}"
    globex = f"globex_{secrets.token_hex(3)}"
    alice_id = Identity(user_id=f"alice_{secrets.token_hex(3)}", team_id=acme)
    async with (
        caller(jwt_system, alice_id) as alice,
        caller(jwt_system, new_user(acme, name="bob")) as bob,
        caller(jwt_system, new_user(globex, name="carol")) as carol,
        caller(jwt_system, Identity(user_id=alice_id.user_id, team_id=globex)) as mallory,
    ):
        chat_thread, chat = await alice.new_thread("hi")
        [chat_turn] = [e.data["data"]["turn_id"] for e in chat if e.data.get("name") == "kitrelay.turn"]
        [user_message] = items_of(chat, "user_message")
        [reply] = items_of(chat, "assistant_message")
        task_title = f"water the ficus {secrets.token_hex(2)}"
        task_thread, added = await alice.new_thread(f"add task {task_title}")
        [card] = items_of(added, "widget")

        uploaded = await create_attachment(alice, "falcon.md", DOCUMENT)
        response = await alice.http.post(
            f"/attachments/{uploaded['id']}/upload", content=DOCUMENT, headers={"content-type": "text/markdown"}
        )
        assert response.status_code == 200, response.text
        pending = await create_attachment(alice, "later.md", b"# Later\n\nsoon")
        yield World(
            alice=alice,
            bob=bob,
            carol=carol,
            mallory=mallory,
            chat_thread=chat_thread,
            chat_turn=chat_turn,
            task_thread=task_thread,
            user_message=user_message["id"],
            reply=reply["id"],
            widget=card["id"],
            uploaded=uploaded["id"],
            pending=pending["id"],
            task_title=task_title,
        )


def attempts(w: World, fake: bool) -> list[dict[str, Any]]:
    """Every ChatKit request that names alice's thread, items or attachments (or, with `fake`, ids that exist
    nowhere). The answers for the two must be the same."""
    ids = {
        "thread": "thr_does_not_exist" if fake else w.chat_thread,
        "task_thread": "thr_does_not_exist_either" if fake else w.task_thread,
        "user_message": "msg_does_not_exist" if fake else w.user_message,
        "reply": "msg_does_not_exist_2" if fake else w.reply,
        "widget": "msg_does_not_exist_3" if fake else w.widget,
        "uploaded": "atc_does_not_exist" if fake else w.uploaded,
    }
    thread = ids["thread"]
    action = {"type": "task.toggle", "payload": {"id": 1}}
    return [
        {"type": "threads.get_by_id", "params": {"thread_id": thread}},
        {"type": "items.list", "params": {"thread_id": thread}},
        {"type": "items.list", "params": {"thread_id": thread, "after": ids["reply"]}},
        {"type": "threads.update", "params": {"thread_id": thread, "title": "pwned"}},
        {"type": "threads.delete", "params": {"thread_id": thread}},
        {"type": "threads.add_user_message", "params": {"thread_id": thread, "input": user_input("let me in")}},
        {"type": "threads.retry_after_item", "params": {"thread_id": thread, "item_id": ids["user_message"]}},
        {
            "type": "threads.custom_action",
            "params": {"thread_id": ids["task_thread"], "item_id": ids["widget"], "action": action},
        },
        {
            "type": "threads.custom_action",
            "params": {"thread_id": ids["task_thread"], "item_id": None, "action": action},
        },
        {
            "type": "threads.sync_custom_action",
            "params": {"thread_id": ids["task_thread"], "item_id": ids["widget"], "action": action},
        },
        {"type": "threads.add_client_tool_output", "params": {"thread_id": thread, "result": {"ok": True}}},
        {
            "type": "threads.add_structured_input",
            "params": {
                "thread_id": thread,
                "item_id": ids["user_message"],
                "input": {"status": "answered", "answers": {}},
            },
        },
        {"type": "items.feedback", "params": {"thread_id": thread, "item_ids": [ids["reply"]], "kind": "negative"}},
        {"type": "threads.list", "params": {"after": thread}},
        {"type": "attachments.delete", "params": {"attachment_id": ids["uploaded"]}},
        {
            "type": "threads.create",
            "params": {"input": {**user_input("see attached"), "attachments": [ids["uploaded"]]}},
        },
    ]


async def alice_sees(w: World) -> dict[str, Any]:
    """Everything alice can see, to compare before and after the attempts."""
    threads = await w.alice.client.call({"type": "threads.list", "params": {"limit": 100}})
    full = {t["id"]: await w.alice.client.get_thread(t["id"]) for t in threads["data"]}
    download = await w.alice.http.get(f"/attachments/{w.uploaded}")
    return {"threads": threads, "full": full, "download": (download.status_code, download.content)}


@pytest.mark.parametrize("who", ["bob", "carol", "mallory"])
async def test_another_users_threads_items_and_attachments_are_404_like_nothing_and_unchanged(
    world: World, who: str
) -> None:
    """bob: same team; carol: other team; mallory: other team with alice's user id."""
    intruder: Caller = getattr(world, who)
    before = await alice_sees(world)
    own_threads = await intruder.thread_ids()

    for real, fake in zip(attempts(world, fake=False), attempts(world, fake=True), strict=True):
        on_real = await intruder.post(real)
        on_fake = await intruder.post(fake)
        described = f"{who}: {real['type']}"
        assert on_real.headers["content-type"].startswith("application/json"), f"{described} started a stream"
        assert on_real.status_code in (400, 404), (described, on_real.status_code, on_real.text)
        assert (on_real.status_code, on_real.json()) == (on_fake.status_code, on_fake.json()), described

    # Attaching alice's file to a message in the intruder's own thread is refused the same way.
    own_thread, _ = await intruder.new_thread("hello")
    attach = {
        "type": "threads.add_user_message",
        "params": {"thread_id": own_thread, "input": intruder.message("look", [world.uploaded])},
    }
    refused = await intruder.post(attach)
    assert (refused.status_code, refused.json()) == (404, {"error": "not_found", "message": "Not found."})
    # The intruder cannot page their own items from alice's item either.
    after_alices = {"type": "items.list", "params": {"thread_id": own_thread, "after": world.reply}}
    assert (await intruder.post(after_alices)).status_code == 404

    # Uploading into alice's pending attachment, or downloading across teams.
    upload = await intruder.http.post(
        f"/attachments/{world.pending}/upload", content=b"# mine now", headers={"content-type": "text/markdown"}
    )
    assert (upload.status_code, upload.json()) == (404, {"error": "not_found", "message": "Not found."})
    download = await intruder.http.get(f"/attachments/{world.uploaded}")
    if intruder.identity.team_id == world.alice.identity.team_id:
        # A team shares what its members upload (it feeds the team's knowledge base).
        assert download.status_code == 200
    else:
        assert (download.status_code, download.json()) == (404, {"error": "not_found", "message": "Not found."})
    # kitrelay's own turn routes: re-attach, stop, list.
    for method, alices, nobodys in (
        ("GET", f"/threads/{world.chat_thread}/turns", "/threads/thr_nope/turns"),
        ("POST", f"/threads/{world.chat_thread}/cancel", "/threads/thr_nope/cancel"),
        ("GET", f"/turns/{world.chat_turn}/events", "/turns/turn_nope/events"),
        ("POST", f"/turns/{world.chat_turn}/cancel", "/turns/turn_nope/cancel"),
    ):
        on_alices = await intruder.http.request(method, alices)
        on_nobodys = await intruder.http.request(method, nobodys)
        assert on_alices.status_code == 404, (method, alices, on_alices.text)
        assert on_alices.headers["content-type"].startswith("application/json"), f"{method} {alices} started a stream"
        assert on_alices.json() == on_nobodys.json(), alices

    listed = await intruder.thread_ids()
    assert world.chat_thread not in listed and world.task_thread not in listed
    assert set(listed) == {*own_threads, own_thread}, "no refused request created a thread"
    assert await alice_sees(world) == before, "nothing of alice's changed"


async def test_alice_still_owns_everything(world: World) -> None:
    thread = await world.alice.client.get_thread(world.chat_thread)
    assert [item["id"] for item in thread["items"]["data"]] == [world.user_message, world.reply]
    upload = await world.alice.http.post(
        f"/attachments/{world.pending}/upload",
        content=b"# Later\n\nsoon",
        headers={"content-type": "text/markdown"},
    )
    assert upload.status_code == 200, upload.text


async def test_tasks_are_shared_within_the_team_and_invisible_outside(world: World) -> None:
    async def listed_by(who: Caller) -> str:
        _, events = await who.new_thread("list tasks")
        return json.dumps(items_of(events, "widget"))

    assert world.task_title in await listed_by(world.bob)
    assert world.task_title not in await listed_by(world.carol)
    assert world.task_title not in await listed_by(world.mallory)


async def test_documents_are_shared_within_the_team_and_invisible_outside(world: World) -> None:
    question = f"what does the falcon handbook say about the {WORD} key?"
    _, bobs = await world.bob.new_thread(question)
    assert "quartermaster" in reply_text(bobs)
    for outsider in (world.carol, world.mallory):
        _, theirs = await outsider.new_thread(question)
        assert "quartermaster" not in reply_text(theirs)
        # The thread's own events carry the outsider's question (thread.updated: its title, cut from the question).
        shown = [e.data for e in theirs if e.type not in ("thread.created", "thread.updated")]
        assert WORD not in json.dumps(shown).replace(question, "")


async def test_the_same_user_id_in_another_team_is_someone_else(world: World) -> None:
    assert set(await world.mallory.thread_ids()).isdisjoint(await world.alice.thread_ids())


async def test_tokens_and_messages_stay_out_of_the_gateway_log(world: World, jwt_system: RunningSystem) -> None:
    secret = f"my pin is {secrets.token_hex(4)}"
    await world.alice.new_thread(secret)
    log = jwt_system.log("gateway")
    assert "POST /chatkit" in log, "the access log is on"
    assert secret not in log
    assert world.alice.http.headers["authorization"].removeprefix("Bearer ") not in log
    for worker in ("worker-triage", "worker-task", "worker-research"):
        assert secret not in jwt_system.log(worker), worker


async def test_without_a_token_nothing_at_all(jwt_system: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=10) as http:
        response = await http.post("/chatkit", json={"type": "threads.create", "params": {"input": user_input("x")}})
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/json")
        forged = bearer(new_user(), secret="not-the-real-secret-" + "y" * 40)
        response = await http.post("/chatkit", json={"type": "threads.list", "params": {}}, headers=forged)
        assert response.status_code == 401
        assert response.json()["message"] == "The token's signature is not valid."


def toggles_in(widget_items: list[dict[str, Any]], title: str) -> list[dict[str, Any]]:
    """The click actions of the rows or buttons of a task widget that mention `title`."""
    found: list[dict[str, Any]] = []

    def walk(node: Any, inside: bool) -> None:
        if isinstance(node, dict):
            mentions = inside or title in json.dumps(node)
            action = node.get("onClickAction")
            if mentions and isinstance(action, dict) and title in json.dumps(node):
                found.append(action)
            for value in node.values():
                walk(value, mentions)
        elif isinstance(node, list):
            for value in node:
                walk(value, inside)

    walk([item["widget"] for item in widget_items], False)
    return found


async def test_a_widget_action_cannot_reach_another_teams_task(world: World) -> None:
    """The task worker scopes a click by the turn's identity, whatever task id the payload names."""
    _, listed = await world.alice.new_thread("list tasks")
    [toggle, *_] = toggles_in(items_of(listed, "widget"), world.task_title)
    assert toggle["payload"]["done"] is True, "alice's task is still open"

    own_thread, _ = await world.carol.new_thread("hello")
    clicked = [
        event
        async for event in world.carol.client.custom_action(
            own_thread, None, {"type": toggle["type"], "payload": toggle["payload"]}
        )
    ]
    assert world.task_title not in json.dumps([event.data for event in clicked])

    _, relisted = await world.alice.new_thread("list tasks")
    [again, *_] = toggles_in(items_of(relisted, "widget"), world.task_title)
    assert again["payload"]["done"] is True, "carol's click did not close alice's task"
