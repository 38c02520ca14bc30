"""The server side of a team chat that stays live (issue 32), against the real system (JWT gateway and workers as
processes, real Redis and SQLite): a team's task changes pushed on GET /events (its own team's only, resumed after
Last-Event-ID), task widgets drawn from the tasks whenever they are read and replaced on a ChatKit client's next
turn, the thread listing by last activity with its search, renaming and deleting through ChatKit's own requests,
the caller's votes, and the documents citations open."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from kitrelay.gateway.client import StreamEvent
from tests.gateway.conftest import Caller, caller, new_user
from tests.system import RunningSystem

pytestmark = [pytest.mark.timeout(300)]

EVENT_WAIT_S = 20.0


class EventStream:
    """GET /events, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> tuple[str | None, dict[str, Any]]:
        """The next event: its id (None for the opening frame) and its data."""
        event_id: str | None = None
        data: list[str] = []
        async with asyncio_timeout(EVENT_WAIT_S):
            async for line in self._lines:
                if not line:
                    if data:
                        return event_id, json.loads("\n".join(data))
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "id":
                    event_id = value
                elif field == "data":
                    data.append(value)
        raise AssertionError("the event stream ended")


def asyncio_timeout(seconds: float) -> Any:
    import asyncio  # noqa: PLC0415 (kept beside its only use)

    return asyncio.timeout(seconds)


@asynccontextmanager
async def events(who: Caller, last_event_id: str | None = None) -> AsyncIterator[EventStream]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with who.http.stream("GET", "/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


def tasks_cli(system: RunningSystem, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", "tasks", *args],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def widgets(events_: list[StreamEvent]) -> list[dict[str, Any]]:
    return [e.data["item"] for e in events_ if e.type == "thread.item.done" and e.data["item"]["type"] == "widget"]


async def test_the_event_stream_needs_a_token_and_a_well_formed_last_event_id(jwt_system: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=jwt_system.base_url, timeout=10) as http:
        response = await http.get("/events")
    assert response.status_code == 401
    assert response.json()["error"]
    async with caller(jwt_system, new_user()) as who:
        for bad in ("yesterday", "1-2-3", "$", "1" * 300):
            refused = await who.http.get("/events", headers={"Last-Event-ID": bad})
            assert refused.status_code == 400, (bad, refused.status_code)
            assert refused.json()["error"] and refused.json()["message"]


async def test_a_team_gets_its_own_task_changes_and_resumes_after_the_last_one(jwt_system: RunningSystem) -> None:
    team = new_user().team_id
    async with (
        caller(jwt_system, new_user(team, "ann")) as ann,
        caller(jwt_system, new_user(team, "ben")) as ben,
        caller(jwt_system, new_user(name="eve")) as eve,
    ):
        async with events(ann) as stream:
            assert await stream.next() == (None, {"type": "stream.opened", "resumed": False})
            await eve.new_thread("add task another team's secret")
            await ben.new_thread("add task water the plants")
            first_id, added = await stream.next()
        assert first_id is not None
        assert added["type"] == "task.changed" and added["change"] == "added"
        assert added["task"]["title"] == "water the plants" and added["by"] == ben.identity.user_id
        number = added["task"]["number"]

        # Two changes while Ann's page is away (the CLI's), then she comes back after the last event she saw.
        tasks_cli(jwt_system, "done", str(number), "--team", team)
        tasks_cli(jwt_system, "rename", str(number), "water the ferns", "--team", team, "--as", "carol")
        async with events(ann, first_id) as stream:
            assert await stream.next() == (None, {"type": "stream.opened", "resumed": True})
            _, completed = await stream.next()
            _, renamed = await stream.next()
        assert (completed["change"], completed["task"]["done"], completed["by"]) == ("completed", True, "cli")
        assert (renamed["change"], renamed["task"]["title"], renamed["by"]) == ("renamed", "water the ferns", "carol")


async def test_a_chatkit_client_sees_a_changed_widget_at_once_when_reading_and_replaced_on_its_next_turn(
    jwt_system: RunningSystem,
) -> None:
    who = new_user(name="kit")
    async with caller(jwt_system, who) as kit:
        thread_id, _ = await kit.new_thread("add task feed the cat")
        listed = [event async for event in kit.client.send(thread_id, "list my tasks")]
        [task_list] = widgets(listed)
        assert "[ ] feed the cat" in task_list["copy_text"]
        number = task_list["widget"]["children"][0]["key"].removeprefix("task-")

        tasks_cli(jwt_system, "done", number, "--team", who.team_id)

        # A read draws the list from the tasks as they are now.
        page = await kit.client.call({"type": "items.list", "params": {"thread_id": thread_id, "limit": 50}})
        [read] = [item for item in page["data"] if item["id"] == task_list["id"]]
        assert f"#{number} [x] feed the cat" in read["copy_text"]

        # The next turn replaces it for a client that only listens to its own streams, and saves it.
        turn = [event async for event in kit.client.send(thread_id, "hello")]
        replaced = [e for e in turn if e.type == "thread.item.replaced" and e.data["item"]["id"] == task_list["id"]]
        assert len(replaced) == 1 and "[x] feed the cat" in replaced[0].data["item"]["copy_text"]
        first_reply = next(i for i, e in enumerate(turn) if e.type == "thread.item.added")
        assert turn.index(replaced[0]) < first_reply, "the widget came after the reply started"
    database = jwt_system.env["DATABASE_URL"].partition(":///")[2]
    with sqlite3.connect(database) as connection:
        (saved,) = connection.execute("SELECT data FROM thread_items WHERE id = ?", (task_list["id"],)).fetchone()
    assert "[x] feed the cat" in json.loads(saved)["copy_text"]


async def test_threads_by_last_activity_search_rename_and_delete(jwt_system: RunningSystem) -> None:
    team = new_user().team_id
    async with caller(jwt_system, new_user(team, "ann")) as ann, caller(jwt_system, new_user(team, "ben")) as ben:
        alpha, _ = await ann.new_thread("add task alpha")
        hello, _ = await ann.new_thread("hello")
        bravo, _ = await ann.new_thread("add task bravo")
        [_ async for _ in ann.client.send(bravo, "add task zebra crossing")]
        await ben.new_thread("add task zebra for ben")

        async def listed(**params: Any) -> dict[str, Any]:
            response = await ann.http.get("/threads", params=params)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        ids = [thread["id"] for thread in (await listed())["data"]]
        assert ids == [bravo, hello, alpha]
        [_ async for _ in ann.client.send(alpha, "add task one more")]
        body = await listed()
        assert [thread["id"] for thread in body["data"]] == [alpha, bravo, hello]
        assert body["data"][0]["last_activity_at"] > body["data"][1]["last_activity_at"]
        assert all(thread["running_turn_id"] is None for thread in body["data"])

        # Paging by last activity.
        first = await listed(limit=2)
        assert first["has_more"] and [t["id"] for t in first["data"]] == [alpha, bravo]
        rest = await listed(limit=2, after=first["after"])
        assert [t["id"] for t in rest["data"]] == [hello] and not rest["has_more"]

        # Search: words of messages (the last one as a beginning), titles; never another user's threads.
        assert [t["id"] for t in (await listed(q="zebra"))["data"]] == [bravo]
        assert [t["id"] for t in (await listed(q="zebra cross"))["data"]] == [bravo]
        assert [t["id"] for t in (await listed(q="ZEB"))["data"]] == [bravo]
        assert [t["id"] for t in (await listed(q="hello"))["data"]] == [hello]
        assert (await listed(q="100% _odd_ query"))["data"] == []
        too_long = await ann.http.get("/threads", params={"q": "x" * 201})
        assert too_long.status_code in (400, 422) and "error" in too_long.json()

        # Renaming and deleting are ChatKit's own requests.
        await ann.client.call({"type": "threads.update", "params": {"thread_id": hello, "title": "Greetings"}})
        assert [t["title"] for t in (await listed(q="greetings"))["data"]] == ["Greetings"]
        await ann.client.call({"type": "threads.delete", "params": {"thread_id": hello}})
        assert hello not in [t["id"] for t in (await listed())["data"]]
        gone = await ann.http.get(f"/threads/{hello}/feedback")
        assert gone.status_code == 404


async def test_votes_and_cited_documents_are_the_callers_own(jwt_system: RunningSystem) -> None:
    team = new_user().team_id
    async with caller(jwt_system, new_user(team, "ann")) as ann, caller(jwt_system, new_user(name="eve")) as eve:
        thread_id, opened = await ann.new_thread("hello")
        reply = next(
            e.data["item"]["id"]
            for e in opened
            if e.type == "thread.item.done" and e.data["item"]["type"] == "assistant_message"
        )
        await ann.client.call(
            {"type": "items.feedback", "params": {"thread_id": thread_id, "item_ids": [reply], "kind": "positive"}}
        )
        votes = await ann.http.get(f"/threads/{thread_id}/feedback")
        assert votes.json() == {"data": {reply: "positive"}}
        assert (await eve.http.get(f"/threads/{thread_id}/feedback")).status_code == 404

        content = b"# Heron guide\n\n## Tides\n\nThe heron tide bell rings twice before the causeway floods.\n"
        created = await ann.client.call(
            {
                "type": "attachments.create",
                "params": {"name": "heron.md", "size": len(content), "mime_type": "text/markdown"},
            }
        )
        uploaded = await ann.http.post(
            created["upload_descriptor"]["url"], content=content, headers={"content-type": "text/markdown"}
        )
        assert uploaded.status_code == 200, uploaded.text
        asked = [
            event async for event in ann.client.send(thread_id, "what does the heron guide say about the tide bell?")
        ]
        answer = next(
            e.data["item"]
            for e in asked
            if e.type == "thread.item.done" and e.data["item"]["type"] == "assistant_message"
        )
        [source] = [annotation["source"] for annotation in answer["content"][0]["annotations"]]
        assert source["type"] == "entity" and source["title"] == "Heron guide"
        # The sources card follows the answer.
        kinds = [e.data["item"]["type"] for e in asked if e.type == "thread.item.done"]
        assert kinds.index("widget") > kinds.index("assistant_message")
        document = await ann.http.get(f"/documents/{source['data']['document_id']}")
        assert document.status_code == 200
        body = document.json()
        assert body["attachment_id"] == created["id"]
        [cited] = [p for p in body["passages"] if p["position"] == source["data"]["passage"]]
        assert "tide bell rings twice" in cited["text"]
        assert (await eve.http.get(f"/documents/{source['data']['document_id']}")).status_code == 404
