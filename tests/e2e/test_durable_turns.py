"""Durable turns, verified: a turn hit by a fault ends as the same conversation a fault-free run gives, both on the
client and in the store. Real processes (a gateway, triage and two task workers) on a NATS server, a Redis server
and a SQLite file of this module's own, so the test can kill and restart them.

Each test compares against a fault-free run of the same message ("the reference"): what the client ended up
showing and what the thread kept (hidden items included), with ids, task numbers and the message's tag made equal.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from kitrelay.gateway.client import ChatKitClient, StreamEvent
from kitrelay.gateway.turn_relay import QUIET_NOTICE, RECONNECTING_NOTICE
from kitrelay.services.devservers import LocalServer, free_port, start_nats, start_redis
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.e2e.chat_view import collect, visible_items
from tests.system import RunningSystem, running_system

# A reply long enough (80 ms a token) to break things in its middle; the default ack wait (a dead worker's turn is
# delivered again this long after its last heartbeat). The task agent's model writes the line after its widget tool
# (by default the tool's own line ends the run at once): a tool that has run, then a long reply still being written,
# is the moment these faults must strike.
ENV = {"OFFLINE_TOKEN_DELAY_MS": "80", "TURN_START_TIMEOUT_S": "30", "WIDGET_TOOLS_ANSWER": "false"}
WORDS = " ".join(f"w{n}" for n in range(40))


class Servers:
    """NATS and Redis of this module's own, restarted on the same ports (NATS with the same store directory)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nats_port, self.redis_port = free_port(), free_port()
        self.nats = self.start_nats()
        self.redis = self.start_redis()

    def start_nats(self) -> LocalServer:
        return start_nats(port=self.nats_port, data_dir=self.workdir / "nats")

    def start_redis(self) -> LocalServer:
        # No persistence (devservers' default): a restart loses every turn stream.
        return start_redis(port=self.redis_port, data_dir=self.workdir / "redis")

    def kill_nats(self) -> None:
        _kill(self.nats)

    def kill_redis(self) -> None:
        _kill(self.redis)


def _kill(server: LocalServer) -> None:
    """SIGKILL, as a crash: nothing is flushed or handed over."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    own = Servers(tmp_path_factory.mktemp("servers"))
    yield own
    own.nats.stop()
    own.redis.stop()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "kitrelay.db"
    migrate(sqlite_url(path))
    return path


@pytest.fixture(scope="module")
def system(servers: Servers, database: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(
        nats_url=servers.nats.url,
        redis_url=servers.redis.url,
        database_url=sqlite_url(database),
        namespace="krdurable",
        log_dir=tmp_path_factory.mktemp("durable-turns"),
        workers=("triage", "task", "task"),
        extra_env=ENV,
    ) as running:
        yield running


@pytest.fixture
async def client(system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        yield ChatKitClient(http)


# ---------------------------------------------------------------------------------------------------------------------
# What a conversation shows and keeps, made comparable.


def _normal(text: str, tag: str) -> str:
    return re.sub(r"#\d+", "#N", text.replace(tag, "<tag>"))


def _item_view(item: dict[str, Any], tag: str) -> tuple[str, str]:
    """An item as (type, what it says): a message's text, a widget's text, a hidden item's content."""
    kind = item["type"]
    if kind in ("assistant_message", "user_message"):
        text = "".join(part.get("text", "") for part in item.get("content", []))
    elif kind == "widget":
        text = " ".join(re.findall(r'"(?:value|title|label|text)":"([^"]*)"', _json(item["widget"])))
    else:
        text = _json(item.get("content"))
    return kind, _normal(text, tag)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def shown(events: Iterable[StreamEvent], tag: str) -> list[tuple[str, str]]:
    """What the client ends up showing of a turn (user message included, as the thread's first stream shows it)."""
    return [_item_view(item, tag) for item in visible_items(events)]


def kept(database: Path, thread_id: str, tag: str) -> list[tuple[str, str]]:
    """What the store keeps of a thread, hidden items included, in the thread's order."""
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT data FROM thread_items WHERE thread_id = ? ORDER BY seq", (thread_id,)).fetchall()
    return [_item_view(json.loads(data), tag) for (data,) in rows]


def task_rows(database: Path, title_part: str) -> int:
    with closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT count(*) FROM tasks WHERE title LIKE ?", (f"%{title_part}%",)).fetchone()[0])


def turn_status(database: Path, turn_id: str) -> str | None:
    with closing(sqlite3.connect(database)) as db:
        row = db.execute("SELECT status FROM turns WHERE id = ?", (turn_id,)).fetchone()
    return None if row is None else str(row[0])


def thread_turns(database: Path, thread_id: str) -> list[str]:
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT status FROM turns WHERE thread_id = ? ORDER BY created_at", (thread_id,)).fetchall()
    return [str(status) for (status,) in rows]


def turn_of(events: list[StreamEvent]) -> str:
    return next(e.turn_id for e in events if e.turn_id)


def thread_of(events: list[StreamEvent]) -> str:
    return str(events[0].data["thread"]["id"])


async def until_deltas(stream: AsyncIterator[StreamEvent], count: int) -> list[StreamEvent]:
    """Read a stream until `count` text deltas came: the middle of a reply."""
    seen: list[StreamEvent] = []
    deltas = 0
    async for event in stream:
        seen.append(event)
        if event.type == "thread.item.updated" and event.data["update"]["type"].endswith("text_delta"):
            deltas += 1
            if deltas >= count:
                return seen
    raise AssertionError(f"the stream ended after {deltas} text deltas: {[e.type for e in seen]}")


def task_worker_running(system: RunningSystem, turn_id: str) -> str:
    for name in system.processes:
        if name.startswith("worker-task") and f"turn {turn_id} (task, message) hop 1 attempt 1 started" in system.log(
            name
        ):
            return name
    raise AssertionError(f"no task worker logged the start of {turn_id}")


async def wait_for_log(system: RunningSystem, turn_id: str) -> str:
    """The task worker that started attempt 1 of `turn_id` (its log may trail the stream by a moment)."""
    for _ in range(50):
        try:
            return task_worker_running(system, turn_id)
        except AssertionError:
            await asyncio.sleep(0.1)
    return task_worker_running(system, turn_id)


async def reference(client: ChatKitClient, database: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A fault-free run of the message the tests break: what the client showed and what the thread kept."""
    tag = f"ref{secrets.token_hex(3)}"
    events = await collect(client.create_thread(f"add task {tag} {WORDS}"))
    return shown(events, tag), kept(database, thread_of(events), tag)


def restart_worker(system: RunningSystem, name: str) -> None:
    system.start(name, "worker", "--agent", "task")


def removals(events: Iterable[StreamEvent]) -> list[str]:
    return [e.data["item_id"] for e in events if e.type == "thread.item.removed"]


def progress_texts(events: Iterable[StreamEvent]) -> list[str]:
    return [e.data.get("text", "") for e in events if e.type == "progress_update"]


# ---------------------------------------------------------------------------------------------------------------------


async def test_a_redelivered_turn_gives_the_fault_free_answer_and_keeps_its_widget(
    system: RunningSystem, client: ChatKitClient, database: Path
) -> None:
    """Defect 1: the new attempt used to read the dead attempt's widget and tool output as the newest input and
    answer "Sorry, I didn't understand that", with no Card. It starts from the conversation before the turn."""
    want_shown, want_kept = await reference(client, database)
    tag = f"re{secrets.token_hex(3)}"
    stream = client.create_thread(f"add task {tag} {WORDS}")
    events = await until_deltas(stream, 5)
    victim = await wait_for_log(system, turn_of(events))
    system.kill(victim)  # SIGKILL mid-text, after the tool's Card was saved
    try:
        async with asyncio.timeout(40):
            events += await collect(stream)
        assert shown(events, tag) == want_shown
        assert kept(database, thread_of(events), tag) == want_kept
        assert task_rows(database, tag) == 1, "the tool's effect happened once"
        withdrawn = removals(events)
        assert withdrawn, "the dead attempt's Card and partial reply were withdrawn"
        assert len(withdrawn) == len(set(withdrawn)), "each withdrawal reached the client once"
        assert turn_status(database, turn_of(events)) == "completed"
    finally:
        restart_worker(system, victim)


async def test_a_dead_workers_turn_is_taken_up_within_10_s_with_a_progress_line_meanwhile(
    system: RunningSystem, client: ChatKitClient, database: Path
) -> None:
    """Defect 4: the client used to hear nothing for a minute (the ack wait). Heartbeats three times per ack wait
    (6 s by default) let another worker take the turn within 10 s; the client is told it is still being worked on."""
    tag = f"hb{secrets.token_hex(3)}"
    stream = client.create_thread(f"add task {tag} {WORDS}")
    events = await until_deltas(stream, 3)
    victim = await wait_for_log(system, turn_of(events))
    system.kill(victim)
    killed_at = time.monotonic()
    resumed_after: float | None = None
    try:
        async with asyncio.timeout(40):
            async for event in stream:
                events.append(event)
                if resumed_after is None and event.id is not None:
                    resumed_after = time.monotonic() - killed_at  # the new attempt's first entry
        assert resumed_after is not None and resumed_after <= 10.0, resumed_after
        assert QUIET_NOTICE in progress_texts(events), "the client was told the reply is still coming"
        texts = [text for kind, text in shown(events, tag) if kind == "assistant_message"]
        assert texts == [f'Added task #N "<tag> {WORDS}".'], texts
    finally:
        restart_worker(system, victim)


async def test_a_redis_restart_mid_turn_leaves_nothing_of_the_dead_attempt_in_the_store(
    servers: Servers, system: RunningSystem, client: ChatKitClient, database: Path
) -> None:
    """Defect 2: superseding read the dead attempt's items from the turn's Redis stream, which a Redis restart
    without persistence loses: its Card and hidden tool output stayed in the thread beside the new reply."""
    want_shown, want_kept = await reference(client, database)
    tag = f"rr{secrets.token_hex(3)}"
    stream = client.create_thread(f"add task {tag} {WORDS}")
    events = await until_deltas(stream, 5)
    servers.kill_redis()
    await asyncio.sleep(2)
    servers.redis = servers.start_redis()
    async with asyncio.timeout(60):
        events += await collect(stream)
    thread_id = thread_of(events)
    assert kept(database, thread_id, tag) == want_kept
    assert shown(events, tag) == want_shown
    assert task_rows(database, tag) == 1


async def test_a_message_sent_while_nats_is_down_is_answered_once_it_is_back(
    servers: Servers, client: ChatKitClient, database: Path
) -> None:
    """Defect 3, first half: the gateway used to report the turn failed after 5 s (a bare `stream.error`) and
    the worker answered it anyway once NATS was back, so a retry added the task twice. Within the start timeout the
    publish is tried again (JetStream stores it once) while the client is told; then it is answered, once."""
    tag = f"na{secrets.token_hex(3)}"
    servers.kill_nats()
    try:
        await asyncio.sleep(1)
        stream = client.create_thread(f"add task {tag}")
        first = await anext(stream)
        reconnecting = [first]
        async with asyncio.timeout(5):
            async for event in stream:
                reconnecting.append(event)
                if RECONNECTING_NOTICE in progress_texts([event]):
                    break
    finally:
        await asyncio.sleep(8)
        servers.nats = servers.start_nats()
    async with asyncio.timeout(60):
        events = reconnecting + await collect(stream)
    assert [e.data for e in events if e.type == "error"] == []
    texts = [text for kind, text in shown(events, tag) if kind == "assistant_message"]
    assert texts == ['Added task #N "<tag>".'], texts
    assert task_rows(database, tag) == 1


async def test_a_turn_given_up_while_nats_stays_down_never_runs(
    servers: Servers, system: RunningSystem, client: ChatKitClient, database: Path
) -> None:
    """Defect 3, second half: past the start timeout the turn is given up for good, with words for the user; the
    publish nats-py still holds reaches JetStream when NATS is back, and the worker finds the turn over."""
    port = free_port()
    system.start("gateway-impatient", "gateway", env={"GATEWAY_PORT": str(port), "TURN_START_TIMEOUT_S": "3"})
    impatient = f"http://127.0.0.1:{port}"
    system.wait_healthy("gateway-impatient", impatient)
    tag = f"gu{secrets.token_hex(3)}"
    servers.kill_nats()
    try:
        async with httpx.AsyncClient(base_url=impatient, timeout=60) as http:
            async with asyncio.timeout(30):
                events = await collect(ChatKitClient(http).create_thread(f"add task {tag}"))
    finally:
        servers.nats = servers.start_nats()
    try:
        errors = [e.data for e in events if e.type == "error"]
        assert len(errors) == 1 and errors[0].get("message"), errors
        assert errors[0]["allow_retry"] is True
        # Once NATS is back every process has reconnected; a later turn is answered end to end.
        async with asyncio.timeout(60):
            later = await collect(client.create_thread("add task after the outage"))
        assert [e.type for e in later if e.type == "error"] == []
        await asyncio.sleep(3)  # what nats-py still held is delivered by now
        assert task_rows(database, tag) == 0, "the turn declared failed never ran"
        assert [kind for kind, _ in kept(database, thread_of(events), tag)] == ["user_message"]
        assert thread_turns(database, thread_of(events)) == ["failed"]
    finally:
        system.stop("gateway-impatient")


async def test_a_message_sent_while_redis_is_down_is_answered_once_it_is_back(
    servers: Servers, client: ChatKitClient, database: Path
) -> None:
    """A new turn during a Redis outage used to fail after 0.9 s (a bare `stream.error`), its saved message left
    without a reply. The gateway waits for Redis within the start timeout, telling the client, then goes on."""
    tag = f"ro{secrets.token_hex(3)}"
    servers.kill_redis()
    try:
        stream = client.create_thread(f"add task {tag}")
        events: list[StreamEvent] = []
        async with asyncio.timeout(10):
            async for event in stream:
                events.append(event)
                if RECONNECTING_NOTICE in progress_texts([event]):
                    break
    finally:
        await asyncio.sleep(2)
        servers.redis = servers.start_redis()
    async with asyncio.timeout(60):
        events += await collect(stream)
    assert [e.data for e in events if e.type == "error"] == []
    texts = [text for kind, text in shown(events, tag) if kind == "assistant_message"]
    assert texts == ['Added task #N "<tag>".'], texts
    assert task_rows(database, tag) == 1
    assert thread_turns(database, thread_of(events)) == ["completed"]
