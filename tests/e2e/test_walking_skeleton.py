"""The walking skeleton, tried as a user would: gateway and workers as separate processes, real NATS, Redis and
database, a scripted conversation over HTTP + SSE."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from kitrelay.gateway.client import ChatKitClient, StreamEvent
from kitrelay.gateway.relay import split_event_id
from kitrelay.shared.store.engine import migrate
from tests.databases import postgres_database, sqlite_url
from tests.e2e.chat_view import collect, progress_lines
from tests.system import RunningSystem, running_system
from tests.turn_streams import all_entry_ids


@contextmanager
def fresh_database(kind: str, workdir: Path, pg_url: str | None) -> Iterator[str]:
    if kind == "sqlite":
        yield sqlite_url(workdir / "kitrelay.db")
    else:
        with postgres_database(pg_url) as url:
            yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(
    request: pytest.FixtureRequest,
    nats_url: str,
    redis_url: str,
    pg_url: str | None,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningSystem]:
    """The same system on the embedded default (SQLite) and on PostgreSQL: the gateway, and the triage and task
    workers the conversation needs (each worker process costs seconds to start)."""
    workdir = tmp_path_factory.mktemp(f"skeleton-{request.param}")
    with fresh_database(request.param, workdir, pg_url) as database_url:
        migrate(database_url)
        with running_system(
            nats_url=nats_url,
            redis_url=redis_url,
            database_url=database_url,
            namespace=f"{namespace}sk{request.param[:2]}",
            log_dir=workdir,
            workers=("triage", "task"),
        ) as running:
            yield running


@pytest.fixture
async def client(system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        yield ChatKitClient(http)


def streamed_text(events: list[StreamEvent]) -> str:
    return "".join(
        e.data["update"]["delta"]
        for e in events
        if e.type == "thread.item.updated" and e.data["update"]["type"] == "assistant_message.content_part.text_delta"
    )


def done_items(events: list[StreamEvent], item_type: str) -> list[dict]:
    return [e.data["item"] for e in events if e.type == "thread.item.done" and e.data["item"]["type"] == item_type]


async def test_scripted_conversation(system: RunningSystem, client: ChatKitClient, redis_url: str) -> None:
    first = await collect(client.create_thread("add task buy milk"))
    assert first[0].type == "thread.created"
    thread_id = first[0].data["thread"]["id"]
    assert done_items(first, "user_message")[0]["content"][0]["text"] == "add task buy milk"
    deltas = [e for e in first if e.type == "thread.item.updated"]
    # The card is the answer: the reply is the task tool's own line, streamed whole, no model call to restate it.
    assert len(deltas) == 1
    assert streamed_text(first) == 'Added task #1 "buy milk".'
    assert done_items(first, "widget")[0]["widget"]["type"] == "Card"
    [reply] = done_items(first, "assistant_message")
    assert reply["content"][0]["text"] == streamed_text(first)

    second = await collect(client.send(thread_id, "add task call Bob"))
    assert "call Bob" in streamed_text(second)

    third = await collect(client.send(thread_id, "list my tasks"))
    [widget_item] = done_items(third, "widget")
    widget = widget_item["widget"]
    assert widget["type"] == "ListView"
    rows = str(widget["children"])
    assert "buy milk" in rows and "call Bob" in rows
    assert widget["status"]["text"] == "Tasks (2)"
    # The agent is told not to restate what the widget shows.
    assert "buy milk" not in streamed_text(third)

    thread = await client.get_thread(thread_id)
    saved = [(item["type"], item["id"]) for item in thread["items"]["data"]]
    # Each added task is shown as a card, the list as a ListView.
    assert [kind for kind, _ in saved] == ["user_message", "widget", "assistant_message"] * 3
    streamed_ids = [
        item["id"]
        for events in (first, second, third)
        for item in (
            *done_items(events, "user_message"),
            *done_items(events, "widget"),
            *done_items(events, "assistant_message"),
        )
    ]
    assert sorted(item_id for _, item_id in saved) == sorted(streamed_ids)
    saved_reply = thread["items"]["data"][2]
    assert saved_reply["content"][0]["text"] == reply["content"][0]["text"]

    # Every relayed frame's SSE id names the Redis entry it came from ("<entry id>.<n>" for event n of a pack but
    # its last), in stream order.
    redis = aioredis.Redis.from_url(redis_url)
    try:
        streams = await all_entry_ids(redis, system.env["NAMESPACE"])
    finally:
        await redis.aclose()
    assert len(streams) == 3
    entry_ids = {entry_id for ids in streams.values() for entry_id in ids}
    for events in (first, second, third):
        ids = [e.id for e in events if e.id is not None]
        assert ids, "relayed events carry ids"
        assert {split_event_id(i)[0] for i in ids} <= entry_ids
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids, key=_stream_order)
        # Events the SDK makes itself in the gateway (thread.created, the user's message) carry none.
        assert all(e.id is None for e in events if e.type in ("thread.created", "stream_options"))


def _stream_order(event_id: str) -> tuple[int, int, float]:
    entry_id, _, index = event_id.partition(".")
    ms, seq = entry_id.split("-")
    # A pack's last event has the plain entry id: it comes after the pack's numbered ones.
    return int(ms), int(seq), int(index) if index else float("inf")


async def test_gateway_and_worker_are_separate_processes(system: RunningSystem, client: ChatKitClient) -> None:
    events = await collect(client.create_thread("add task water the plants"))
    assert streamed_text(events)
    gateway, worker = system.processes["gateway"], system.processes["worker-task"]
    assert gateway.pid != worker.pid
    # The agent ran in the worker: its log knows the turn, the gateway only published and relayed it. The worker
    # logs the end once Redis has it, so the client may see the end a moment before the line is written.
    for _ in range(100):
        if "ended: completed" in system.log("worker-task"):
            break
        await asyncio.sleep(0.05)
    assert "ended: completed" in system.log("worker-task")
    assert "ended: completed" not in system.log("gateway")
    assert "published" in system.log("gateway")


async def test_turns_nobody_takes_time_out_with_a_clear_error_and_a_late_worker_does_not_answer(
    nats_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """One gateway (starting one costs seconds) for each kind of turn nobody takes: the entry agent's, then a
    handoff's."""
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}nw",
        log_dir=tmp_path,
        workers=(),
        extra_env={"TURN_START_TIMEOUT_S": "1", "HANDOFF_TIMEOUT_S": "1"},
    ) as system:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
            client = ChatKitClient(http)
            # No worker at all: the gateway gives up on the turn.
            events = await collect(client.create_thread("add task nobody hears"))
            errors = [e.data for e in events if e.type == "error"]
            assert len(errors) == 1
            assert "No triage worker" in errors[0]["message"]
            assert errors[0]["allow_retry"] is True

            # A triage worker, but no task worker: the handoff times out.
            system.start("worker-triage", "worker", "--agent", "triage")
            await until_a_worker_answers(client)
            events = await collect(client.create_thread("add task nobody takes this"))
            errors = [e.data for e in events if e.type == "error"]
            assert [e["message"] for e in errors] == [
                "No task worker picked up this message in time. Please try again in a moment."
            ]
            assert progress_lines(events) == ["Handing over to Task…"]

            # A task worker that starts later finds the turn over and leaves it alone.
            system.start("worker-task", "worker", "--agent", "task")
            deadline = asyncio.get_running_loop().time() + 20
            while "is already over" not in system.log("worker-task"):
                assert asyncio.get_running_loop().time() < deadline, system.log("worker-task")
                await asyncio.sleep(0.1)
            thread = await client.get_thread(events[0].data["thread"]["id"])
    assert [item["type"] for item in thread["items"]["data"]] == ["user_message"]


async def until_a_worker_answers(client: ChatKitClient, timeout_s: float = 60) -> None:
    """Until a greeting gets a reply: a worker just started takes turns once it has loaded."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        events = await collect(client.create_thread("hello"))
        if not [e for e in events if e.type == "error"]:
            return
        assert asyncio.get_running_loop().time() < deadline, [e.data for e in events]
