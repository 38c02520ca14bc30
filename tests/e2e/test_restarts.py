"""Redis and NATS restarted under a running system (private servers, so nothing else is disturbed): services
reconnect on their own, saved data survives, and turns in flight complete or end with a clear retryable error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.client import ChatKitClient
from kitrelay.services.devservers import LocalServer, free_port, start_nats, start_redis
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.e2e.chat_view import assistant_texts, collect, until_text
from tests.system import RunningSystem, running_system


class Servers:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nats_port, self.redis_port = free_port(), free_port()
        self.nats = self.start_nats()
        self.redis = self.start_redis()

    def start_nats(self) -> LocalServer:
        # The same store directory each time: JetStream's streams and consumers survive the restart.
        return start_nats(port=self.nats_port, data_dir=self.workdir / "nats")

    def start_redis(self) -> LocalServer:
        return start_redis(port=self.redis_port, data_dir=self.workdir / "redis")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    own = Servers(tmp_path_factory.mktemp("servers"))
    yield own
    own.nats.stop()
    own.redis.stop()


@pytest.fixture(scope="module")
def system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    workdir = tmp_path_factory.mktemp("restarts")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    with running_system(
        nats_url=servers.nats.url,
        redis_url=servers.redis.url,
        database_url=database_url,
        namespace="krrestart",
        log_dir=workdir,
        workers=("triage",),
        extra_env={"OFFLINE_TOKEN_DELAY_MS": "40", "TURN_ACK_WAIT_S": "3"},
    ) as running:
        yield running


@pytest.fixture
async def client(system: RunningSystem) -> AsyncIterator[ChatKitClient]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        yield ChatKitClient(http)


async def test_redis_restarted_mid_turn(servers: Servers, client: ChatKitClient) -> None:
    stream = client.create_thread("hello")
    events = await until_text(stream)
    servers.redis.stop()
    await asyncio.sleep(0.5)
    servers.redis = servers.start_redis()
    events += await collect(stream)

    errors = [e.data for e in events if e.type == "error"]
    texts = assistant_texts(events)
    # Either the client got the whole reply, or a clear error it may retry: never a cut stream or a hang.
    assert texts == [GREETING_TEXT] or (errors and errors[-1]["allow_retry"] is True), (texts, errors)
    thread_id = events[0].data["thread"]["id"]
    saved = (await client.get_thread(thread_id))["items"]["data"]
    assert [i["type"] for i in saved][:1] == ["user_message"]
    for _ in range(100):  # the worker may still be finishing (or redoing) the turn
        saved = (await client.get_thread(thread_id))["items"]["data"]
        if [i["type"] for i in saved] == ["user_message", "assistant_message"]:
            break
        await asyncio.sleep(0.1)
    assert [i["type"] for i in saved] == ["user_message", "assistant_message"]
    assert saved[1]["content"][0]["text"] == GREETING_TEXT

    # Everything reconnected: a new turn works end to end.
    assert assistant_texts(await collect(client.send(thread_id, "hi"))) == [GREETING_TEXT]


async def test_nats_restarted_between_and_during_turns(servers: Servers, client: ChatKitClient) -> None:
    first = await collect(client.create_thread("hi"))
    thread_id = first[0].data["thread"]["id"]
    servers.nats.stop()
    await asyncio.sleep(0.5)
    servers.nats = servers.start_nats()

    # The gateway and the worker reconnect on their own; the stream and consumer survived on disk.
    again = await collect(client.send(thread_id, "hello"))
    assert assistant_texts(again) == [GREETING_TEXT], [(e.type, e.data) for e in again]
    saved = (await client.get_thread(thread_id))["items"]["data"]
    assert [i["type"] for i in saved] == ["user_message", "assistant_message"] * 2
