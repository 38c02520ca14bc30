"""Per-deployment policies for double-texting and detached turns, each on its own gateway configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.client import ChatKitClient, ChatKitError
from kitrelay.services.turn_log import STOPPED_MARK
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.e2e.chat_view import assistant_texts, collect, until_text
from tests.system import RunningSystem, running_system


@pytest.fixture
def make_system(nats_url: str, redis_url: str, namespace: str, tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    started: list = []

    def make(suffix: str, **env: str) -> RunningSystem:
        database_url = sqlite_url(tmp_path / f"{suffix}.db")
        migrate(database_url)
        context = running_system(
            nats_url=nats_url,
            redis_url=redis_url,
            database_url=database_url,
            namespace=f"{namespace}{suffix}",
            log_dir=tmp_path,
            workers=("triage",),
            extra_env={"OFFLINE_TOKEN_DELAY_MS": "60", **env},
        )
        started.append(context)
        return context.__enter__()

    yield make
    for context in started:
        context.__exit__(None, None, None)


async def test_reject_refuses_a_second_message_before_storing_it(make_system: Callable[..., RunningSystem]) -> None:
    system = make_system("rj", DOUBLE_TEXT_POLICY="reject")
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        client = ChatKitClient(http)
        stream = client.create_thread("hello")
        events = await until_text(stream)
        thread_id = events[0].data["thread"]["id"]
        with pytest.raises(ChatKitError) as refused:
            await collect(client.send(thread_id, "are you there?"))
        assert refused.value.status_code == 409
        assert "still being written" in refused.value.body["message"]
        events += await collect(stream)
        assert assistant_texts(events) == [GREETING_TEXT]
        saved = (await client.get_thread(thread_id))["items"]["data"]
        assert [i["type"] for i in saved] == ["user_message", "assistant_message"], "the refused message was not kept"
        # Once the reply is done, the thread takes messages again.
        assert assistant_texts(await collect(client.send(thread_id, "hi"))) == [GREETING_TEXT]


async def test_interrupt_stops_the_running_reply_for_the_new_message(make_system: Callable[..., RunningSystem]) -> None:
    system = make_system("ir", DOUBLE_TEXT_POLICY="interrupt")
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        client = ChatKitClient(http)
        stream = client.create_thread("hello")
        first = await until_text(stream)
        thread_id = first[0].data["thread"]["id"]
        second = await collect(client.send(thread_id, "good morning"))
        first += await collect(stream)
        [stopped] = assistant_texts(first)
        assert stopped.endswith(STOPPED_MARK)
        assert assistant_texts(second) == [GREETING_TEXT]
        saved = (await client.get_thread(thread_id))["items"]["data"]
        texts = [i["content"][0]["text"] for i in saved if i["type"] == "assistant_message"]
        assert texts == [stopped, GREETING_TEXT]


async def test_cancel_policy_stops_a_turn_nobody_follows(make_system: Callable[..., RunningSystem]) -> None:
    # Slow tokens: the reply outlasts the grace, the watch key's expiry and the watchdog's next look, loaded or not.
    system = make_system("dc", DETACHED_TURN_POLICY="cancel", DETACHED_GRACE_S="1", OFFLINE_TOKEN_DELAY_MS="700")
    async with httpx.AsyncClient(base_url=system.base_url, timeout=60) as http:
        client = ChatKitClient(http)
        stream = client.create_thread("hello")
        events = await until_text(stream)
        await stream.aclose()  # nobody follows the turn any more
        thread_id = events[0].data["thread"]["id"]
        for _ in range(100):
            turns = (await http.get(f"/threads/{thread_id}/turns")).json()["data"]
            if turns[0]["status"] != "queued":
                break
            await asyncio.sleep(0.1)
        assert turns[0]["status"] == "cancelled"
        saved = (await client.get_thread(thread_id))["items"]["data"]
        assert saved[-1]["content"][0]["text"].endswith(STOPPED_MARK)
