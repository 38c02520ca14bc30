"""Sticky routing with real processes: a thread's next message goes straight to the kind that answered its last,
whichever gateway replica takes it, also after a gateway restart; a specialist hands on what is not its business."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, StreamEvent
from tests.e2e.chat_view import assistant_texts, collect, progress_lines
from tests.system import RunningSystem, running_system

HANDBOOK = "what does the handbook say about VPN access?"


@pytest.fixture(scope="module")
def routing_system(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """Two gateways (and a third that always starts at triage), one worker of each kind, one SQLite file."""
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}rt",
        log_dir=tmp_path_factory.mktemp("routing"),
        # A model's time to first token: a turn lasts long enough for a second message to wait for it.
        extra_env={"OFFLINE_FIRST_TOKEN_MS": "200"},
    ) as running:
        yield running


def hops_started(system: RunningSystem, worker: str, turn_id: str) -> list[int]:
    """The hops of `turn_id` a worker process started, from its log."""
    return [
        int(hop)
        for hop in re.findall(rf"turn {turn_id} \(\w+, message\) hop (\d+) attempt \d+ started", system.log(worker))
    ]


def turn_id_of(events: list[StreamEvent]) -> str:
    return next(str(e.data["data"]["turn_id"]) for e in events if e.type == "client_effect")


async def say(url: str, thread_id: str | None, text: str) -> tuple[str, list[StreamEvent]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        client = ChatKitClient(http)
        events = await collect(client.create_thread(text) if thread_id is None else client.send(thread_id, text))
    assert not [e for e in events if e.type == "error"], events
    thread = thread_id or str(events[0].data["thread"]["id"])
    return thread, events


async def test_a_thread_stays_with_the_agent_serving_it_across_gateways_and_restarts(
    routing_system: RunningSystem,
) -> None:
    system = routing_system
    url_b = system.start_gateway("gateway-b")

    thread_id, first = await say(system.base_url, None, "add task write report")
    assert progress_lines(first) == ["Handing over to Task…"], "a new thread starts at triage"

    # Another replica: straight to the task worker, the turn's first hop, triage never sees it.
    _, second = await say(url_b, thread_id, "add task call Bob")
    assert progress_lines(second) == []
    assert 'Added task #2 "call Bob".' in assistant_texts(second)
    turn = turn_id_of(second)
    assert hops_started(system, "worker-task", turn) == [0]
    assert hops_started(system, "worker-triage", turn) == []

    # The first gateway killed and started again: the route is the thread's, in the store.
    system.kill("gateway")
    system.start("gateway", "gateway")
    system.wait_healthy()
    _, listed = await say(system.base_url, thread_id, "list my tasks")
    assert progress_lines(listed) == []
    assert [
        e.data["item"]["widget"]["type"]
        for e in listed
        if e.type == "thread.item.done" and e.data["item"]["type"] == "widget"
    ] == ["ListView"]

    # Not the task agent's business: handed on to research, which then serves the thread.
    _, asked = await say(url_b, thread_id, HANDBOOK)
    assert progress_lines(asked) == ["Handing over to Research…"]
    _, again = await say(system.base_url, thread_id, HANDBOOK)
    assert progress_lines(again) == []
    assert hops_started(system, "worker-research", turn_id_of(again)) == [0]

    # Small talk goes back to triage, and the thread with it: the next task message starts at triage again.
    _, greeted = await say(url_b, thread_id, "hi")
    assert progress_lines(greeted) == ["Handing over to Triage…"]
    _, added = await say(system.base_url, thread_id, "add task third")
    assert progress_lines(added) == ["Handing over to Task…"]

    # Each turn's record names the kind that answered it: where the thread's next message went.
    async with httpx.AsyncClient(base_url=url_b, timeout=30) as http:
        turns = (await http.get(f"/threads/{thread_id}/turns")).json()["data"]
    assert [t["agent"] for t in turns][1:3] == ["task", "task"]


async def test_with_sticky_routing_off_every_message_starts_at_triage(routing_system: RunningSystem) -> None:
    url = routing_system.start_gateway("gateway-triage", env={"STICKY_ROUTING": "false"})
    thread_id, first = await say(url, None, "add task one")
    _, second = await say(url, thread_id, "add task two")
    assert progress_lines(first) == progress_lines(second) == ["Handing over to Task…"]
    # The same thread through a gateway that routes: the thread's route was kept all along.
    _, third = await say(routing_system.base_url, thread_id, "add task three")
    assert progress_lines(third) == []


async def test_a_message_that_waited_for_the_previous_reply_goes_where_that_reply_left_the_thread(
    routing_system: RunningSystem,
) -> None:
    """Sent while the thread's first reply is still being written (and its route not yet set), the second message
    waits for it (DOUBLE_TEXT_POLICY=enqueue), then goes where that reply left the thread: straight to task."""
    async with httpx.AsyncClient(base_url=routing_system.base_url, timeout=30) as http:
        client = ChatKitClient(http)
        first = client.create_thread("add task first of two")
        opening: list[StreamEvent] = []
        async for event in first:
            opening.append(event)
            if event.type == "client_effect":
                break
        thread_id = str(opening[0].data["thread"]["id"])
        second = asyncio.create_task(collect(client.send(thread_id, "list my tasks")))
        rest = await collect(first)
        waited = await second
    assert progress_lines([*opening, *rest]) == ["Handing over to Task…"]
    assert progress_lines(waited) == ["Waiting for the previous reply to finish…"]
    assert [
        e.data["item"]["widget"]["type"]
        for e in waited
        if e.type == "thread.item.done" and e.data["item"]["type"] == "widget"
    ] == ["ListView"]
