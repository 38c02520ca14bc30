"""Triage, task and research workers as separate processes: a new thread is triaged, then handed off over NATS; its
next messages go straight to the kind that answered (tests/e2e/test_routing.py has the routing itself)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, StreamEvent
from tests.e2e.chat_view import collect, progress_lines
from tests.system import RunningSystem

ONBOARDING = b"""# Onboarding guide

Welcome to the team! This guide covers your first week.

## VPN access

To work remotely you need VPN access. Request it from the IT desk on your first day; they install the
WireGuard client and send you a personal key. Never share your key.

## Payroll

Salaries are paid on the 25th of each month.
"""


@pytest.fixture
def agents_system(system: RunningSystem) -> RunningSystem:
    """One gateway, one triage, two task and one research worker: five processes sharing NATS, Redis, SQLite (the
    session's system, tests/conftest.py; other tests' turns run on it too)."""
    assert [name for name in system.processes if name.startswith("worker-task")] == ["worker-task", "worker-task-2"]
    return system


@pytest.fixture
async def client(agents_system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=agents_system.base_url, timeout=30) as http:
        yield ChatKitClient(http)


def text_of(events: list[StreamEvent]) -> str:
    done = [
        e.data["item"] for e in events if e.type == "thread.item.done" and e.data["item"]["type"] == "assistant_message"
    ]
    return " ".join(item["content"][0]["text"] for item in done)


def items(events: list[StreamEvent], item_type: str) -> list[dict]:
    return [e.data["item"] for e in events if e.type == "thread.item.done" and e.data["item"]["type"] == item_type]


def progress(events: list[StreamEvent]) -> list[str]:
    return progress_lines(events)


def started_turns(system: RunningSystem, worker: str) -> list[tuple[str, str]]:
    """(turn id, agent kind) of every turn a worker process started, from its log."""
    return re.findall(r"turn (turn_\w+) \((\w+), \w+\) hop \d+ attempt \d+ started", system.log(worker))


async def test_greetings_are_answered_by_triage(agents_system: RunningSystem, client: ChatKitClient) -> None:
    events = await collect(client.create_thread("hi"))
    assert "task" in text_of(events).lower()
    assert progress(events) == [], "no handoff for small talk"


async def test_tasks_go_to_the_task_worker_and_a_widget_click_toggles_in_place(client: ChatKitClient) -> None:
    added = await collect(client.create_thread("add task write report"))
    thread_id = added[0].data["thread"]["id"]
    assert progress(added) == ["Handing over to Task…"]
    assert "write report" in text_of(added)
    [card] = items(added, "widget")
    assert card["widget"]["type"] == "Card"

    listed = await collect(client.send(thread_id, "list my tasks"))
    assert progress(listed) == [], "the thread stays with the task agent that answered it (sticky routing)"
    [widget_item] = items(listed, "widget")
    assert widget_item["widget"]["type"] == "ListView"
    row = next(r for r in widget_item["widget"]["children"] if "write report" in json.dumps(r))
    assert "empty-circle" in json.dumps(row)

    clicked = await collect(client.custom_action(thread_id, widget_item["id"], row["onClickAction"]))

    # The widget clicked first, then every other widget of the thread that shows the task: here its card.
    replaced, card_again = [e.data["item"] for e in clicked if e.type == "thread.item.replaced"]
    assert replaced["id"] == widget_item["id"]
    assert card_again["id"] == card["id"] and "Reopen" in json.dumps(card_again["widget"])
    new_row = next(r for r in replaced["widget"]["children"] if "write report" in json.dumps(r))
    assert "check-circle-filled" in json.dumps(new_row)
    assert not [e for e in clicked if e.type == "thread.item.updated"], "no model ran: no text streamed"
    saved = {item["id"]: item for item in (await client.get_thread(thread_id))["items"]["data"]}
    assert "check-circle-filled" in json.dumps(saved[widget_item["id"]]["widget"])


async def test_an_uploaded_document_is_cited_by_research(client: ChatKitClient, agents_system: RunningSystem) -> None:
    created = await client.call(
        {
            "type": "attachments.create",
            "params": {"name": "onboarding.md", "size": len(ONBOARDING), "mime_type": "text/markdown"},
        }
    )
    upload_url = created["upload_descriptor"]["url"]
    async with httpx.AsyncClient(timeout=30) as http:
        uploaded = await http.post(upload_url, content=ONBOARDING, headers={"content-type": "text/markdown"})
    assert uploaded.status_code == 200, uploaded.text

    question = {
        "content": [{"type": "input_text", "text": "what does the onboarding guide say about VPN access?"}],
        "attachments": [created["id"]],
        "inference_options": {},
    }
    events = await collect(client.stream({"type": "threads.create", "params": {"input": question}}))

    assert progress(events) == ["Handing over to Research…"]
    answer = text_of(events)
    assert "WireGuard" in answer and "Onboarding guide" in answer
    [sources] = items(events, "widget")
    assert sources["widget"]["status"]["text"] == "Sources (1)"
    [reply] = items(events, "assistant_message")
    assert [a["source"]["title"] for a in reply["content"][0]["annotations"]] == ["Onboarding guide"]


async def test_a_question_the_documents_do_not_cover_gets_an_honest_not_found(client: ChatKitClient) -> None:
    events = await collect(client.create_thread("what is the airspeed velocity of an unladen swallow?"))
    assert progress(events) == ["Handing over to Research…"]
    assert "couldn't find" in text_of(events)
    assert items(events, "widget") == []
    [reply] = items(events, "assistant_message")
    assert reply["content"][0]["annotations"] == []


async def test_workers_of_a_kind_share_turns_and_never_see_another_kinds(
    agents_system: RunningSystem, client: ChatKitClient
) -> None:
    thread_id = (await collect(client.create_thread("add task errand 0")))[0].data["thread"]["id"]
    for n in range(1, 12):
        await collect(client.send(thread_id, f"add task errand {n}"))

    by_worker = {name: started_turns(agents_system, name) for name in agents_system.processes if name != "gateway"}
    for name, turns in by_worker.items():
        kind = name.split("-")[1]
        assert {agent for _, agent in turns} <= {kind}, f"{name} ran another kind's turn"
    task_turns = [turn for name in ("worker-task", "worker-task-2") for turn, _ in by_worker[name]]
    assert len(task_turns) == len(set(task_turns)), "no turn ran twice"
    assert by_worker["worker-task"] and by_worker["worker-task-2"], "both task workers took turns"
