"""Per-deployment policies for double-texting and detached turns, each on its own gateway (or worker) configuration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.client import ChatKitClient, ChatKitError
from kitrelay.services.turn_log import STOPPED_MARK
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.e2e.chat_view import assistant_texts, collect, until_text
from tests.system import running_system


@pytest.fixture(scope="module")
def double_texting(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """DOUBLE_TEXT_POLICY is a gateway's: one triage worker, and a gateway per policy (policy -> base URL)."""
    workdir = tmp_path_factory.mktemp("double-texting")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=f"{namespace}dt",
        log_dir=workdir,
        workers=("triage",),
        extra_env={"OFFLINE_TOKEN_DELAY_MS": "60", "DOUBLE_TEXT_POLICY": "reject"},
    ) as system:
        interrupt = system.start_gateway("gateway-interrupt", env={"DOUBLE_TEXT_POLICY": "interrupt"})
        yield {"reject": system.base_url, "interrupt": interrupt}


async def test_reject_refuses_a_second_message_before_storing_it(double_texting: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=double_texting["reject"], timeout=60) as http:
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


async def test_interrupt_stops_the_running_reply_for_the_new_message(double_texting: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=double_texting["interrupt"], timeout=60) as http:
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


async def test_cancel_policy_stops_a_turn_nobody_follows(
    nats_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    database_url = sqlite_url(tmp_path / "kitrelay.db")
    migrate(database_url)
    # Slow tokens: the reply outlasts the grace, the watch key's expiry and the watchdog's next look, loaded or not.
    env = {"DETACHED_TURN_POLICY": "cancel", "DETACHED_GRACE_S": "1", "OFFLINE_TOKEN_DELAY_MS": "700"}
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=f"{namespace}dc",
        log_dir=tmp_path,
        workers=("triage",),
        extra_env=env,
    ) as system:
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
