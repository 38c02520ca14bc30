"""Fault injection with real processes and servers: crashes, disconnects, restarts, stops and double-texting
lose nothing and duplicate nothing. Each test asserts what the client shows and what the thread saved."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.client import ChatKitClient, StreamEvent
from kitrelay.services.turn_log import STOPPED_MARK
from kitrelay.shared.names import turn_stream_key
from tests.e2e.chat_view import assistant_texts, collect, progress_lines, until_text
from tests.system import RunningSystem, running_system

# Slow enough that a reply takes ~1.5 s, so there is time to break things in the middle of it.
SLOW = {"OFFLINE_TOKEN_DELAY_MS": "60", "TURN_ACK_WAIT_S": "2"}


@pytest.fixture(scope="module")
def durable(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    """Two gateways and two triage workers on shared servers (greetings are answered by triage itself)."""
    workdir = tmp_path_factory.mktemp("durable")
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        namespace=f"{namespace}du",
        log_dir=workdir,
        workers=("triage", "triage"),
        extra_env=SLOW,
    ) as running:
        running.env["SECOND_GATEWAY"] = running.start_gateway("gateway-2")
        yield running


@pytest.fixture
async def http(durable: RunningSystem) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=durable.base_url, timeout=60) as client:
        yield client


def turn_of(events: list[StreamEvent]) -> str:
    return next(e.turn_id for e in events if e.turn_id)


def last_id(events: list[StreamEvent]) -> str:
    return [e.id for e in events if e.id][-1]


async def saved(client: ChatKitClient, thread_id: str) -> list[dict]:
    return [item for item in (await client.get_thread(thread_id))["items"]["data"]]


def worker_running(system: RunningSystem, turn_id: str) -> str:
    return next(
        name for name in system.processes if name.startswith("worker") and f"turn {turn_id} " in system.log(name)
    )


async def test_a_worker_killed_mid_turn_is_replaced_and_the_reply_appears_once(
    durable: RunningSystem, http: httpx.AsyncClient
) -> None:
    client = ChatKitClient(http)
    stream = client.create_thread("hello")
    events = await until_text(stream)
    turn_id = turn_of(events)
    victim = worker_running(durable, turn_id)
    durable.kill(victim)  # SIGKILL, mid-reply
    events += await collect(stream)
    try:
        assert assistant_texts(events) == [GREETING_TEXT], "the client shows the reply once, complete"
        assert any(e.type == "thread.item.removed" for e in events), "the dead attempt's partial reply was withdrawn"
        thread_id = events[0].data["thread"]["id"]
        items = await saved(client, thread_id)
        assert [i["type"] for i in items] == ["user_message", "assistant_message"]
        assert items[1]["content"][0]["text"] == GREETING_TEXT
        survivor = next(n for n in durable.processes if n.startswith("worker-triage"))
        assert re.search(rf"turn {turn_id} \(triage, message\) hop 0 attempt 2 started", durable.log(survivor))
    finally:
        durable.start(victim, "worker", "--agent", "triage")


async def test_a_gateway_killed_mid_stream_loses_nothing_and_another_gateway_gives_the_rest(
    durable: RunningSystem,
) -> None:
    async with httpx.AsyncClient(base_url=durable.env["SECOND_GATEWAY"], timeout=60) as doomed_http:
        events = await until_text(ChatKitClient(doomed_http).create_thread("hello"))
        durable.kill("gateway-2")
    try:
        async with httpx.AsyncClient(base_url=durable.base_url, timeout=60) as http:
            client = ChatKitClient(http)
            rest = await collect(client.follow(turn_of(events), after=last_id(events)))
            ids = [e.id for e in events + rest if e.id]
            assert len(ids) == len(set(ids)), "nothing twice"
            assert assistant_texts(events + rest) == [GREETING_TEXT]
            items = await saved(client, events[0].data["thread"]["id"])
            assert [i["type"] for i in items] == ["user_message", "assistant_message"]
    finally:
        durable.env["SECOND_GATEWAY"] = durable.start_gateway("gateway-2")


async def test_a_dropped_client_re_attaches_and_several_tabs_follow_one_turn(http: httpx.AsyncClient) -> None:
    client = ChatKitClient(http)
    stream = client.create_thread("hello")
    events = await until_text(stream)
    await stream.aclose()  # the connection drops mid-reply
    turn_id = turn_of(events)

    resumed, tab_a, tab_b = await asyncio.gather(
        collect(client.follow(turn_id, after=last_id(events))),
        collect(client.follow(turn_id)),
        collect(client.follow(turn_id)),
    )

    assert assistant_texts(events + resumed) == [GREETING_TEXT]
    assert [e.id for e in tab_a] == [e.id for e in tab_b], "every tab sees the same events"
    assert assistant_texts(tab_a) == [GREETING_TEXT]
    items = await saved(client, events[0].data["thread"]["id"])
    assert items[-1]["content"][0]["text"] == GREETING_TEXT, "a disconnect is not a stop: the reply was saved whole"


async def test_stop_ends_the_reply_within_a_second_and_saves_it_marked_stopped(
    durable: RunningSystem, http: httpx.AsyncClient
) -> None:
    client = ChatKitClient(http)
    stream = client.create_thread("hello")
    events = await until_text(stream)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await client.cancel(turn_of(events)) == "stopping"
    events += await collect(stream)
    assert loop.time() - started < 1.0
    [text] = assistant_texts(events)
    assert text.endswith(STOPPED_MARK) and text.removesuffix(STOPPED_MARK) != GREETING_TEXT
    thread_id = events[0].data["thread"]["id"]
    items = await saved(client, thread_id)
    assert [i["type"] for i in items] == ["user_message", "assistant_message"]
    assert items[1]["content"][0]["text"] == text
    # The status is recorded just after the end entry that closed the stream.
    for _ in range(50):
        turns = (await http.get(f"/threads/{thread_id}/turns")).json()["data"]
        if turns[0]["status"] != "queued":
            break
        await asyncio.sleep(0.05)
    assert [t["status"] for t in turns] == ["cancelled"]
    # A stop is not a failure: nothing of it is logged as an error (ChatKit's reader of the run's events used to
    # leave a step behind whose end asyncio reported as "Task exception was never retrieved").
    worker = worker_running(durable, turn_of(events))
    assert "never retrieved" not in durable.log(worker)


async def test_two_messages_at_once_are_answered_in_turn(http: httpx.AsyncClient) -> None:
    client = ChatKitClient(http)
    first = await collect(client.create_thread("hi"))
    thread_id = first[0].data["thread"]["id"]

    one, two = await asyncio.gather(
        collect(client.send(thread_id, "hello")), collect(client.send(thread_id, "good morning"))
    )

    assert assistant_texts(one) == [GREETING_TEXT] and assistant_texts(two) == [GREETING_TEXT]
    waited = [s for s in (one, two) if progress_lines(s)]
    assert len(waited) == 1, "one of them waited for the other"
    items = await saved(client, thread_id)
    kinds = [i["type"] for i in items]
    assert kinds.count("assistant_message") == 3
    # The replies do not interleave: each is whole, and the waiting one comes after the other.
    texts = [i["content"][0]["text"] for i in items if i["type"] == "assistant_message"]
    assert texts == [GREETING_TEXT] * 3


async def test_a_finished_turn_expires_from_redis_on_its_own(
    durable: RunningSystem, http: httpx.AsyncClient, redis_url: str
) -> None:
    events = await collect(ChatKitClient(http).create_thread("hi"))
    key = turn_stream_key(durable.env["NAMESPACE"], turn_of(events))
    redis = aioredis.Redis.from_url(redis_url)
    try:
        ttl = await redis.ttl(key)
    finally:
        await redis.aclose()
    assert 0 < ttl <= 600


async def test_sigterm_drains_a_worker_and_a_gateway_without_cutting_the_reply(durable: RunningSystem) -> None:
    async with httpx.AsyncClient(base_url=durable.env["SECOND_GATEWAY"], timeout=60) as http:
        client = ChatKitClient(http)
        stream = client.create_thread("hello")
        events = await until_text(stream)
        turn_id = turn_of(events)
        worker = worker_running(durable, turn_id)
        durable.processes[worker].send_signal(signal.SIGTERM)
        durable.processes["gateway-2"].send_signal(signal.SIGTERM)
        events += await collect(stream)
    try:
        assert assistant_texts(events) == [GREETING_TEXT], "both finished the reply before exiting"
        assert durable.stop(worker) == 0
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status still says SIGTERM.
        assert durable.stop("gateway-2") in (0, -signal.SIGTERM)
        assert "Finished server process" in durable.log("gateway-2")
        logs = "".join(durable.log(name) for name in durable.processes if name.startswith("worker"))
        assert f"turn {turn_id} (triage, message) hop 0 attempt 2" not in logs, "finished, not handed back"
    finally:
        durable.start(worker, "worker", "--agent", "triage")
        durable.env["SECOND_GATEWAY"] = durable.start_gateway("gateway-2")
