"""The worker against a real JetStream: bounded concurrency, load shared, acked only after the terminal entry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis
from chatkit.types import Page, ThreadItem, ThreadMetadata
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kitrelay.agents.context import TurnContext
from kitrelay.agents.offline_model import OfflineModelProvider
from kitrelay.agents.registry import build_agent
from kitrelay.services.turn_store import TurnStore
from kitrelay.services.worker import Worker
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, TurnEnd, TurnRequest
from kitrelay.shared.names import dead_letter_stream, dead_letter_subject, turns_consumer, turns_stream
from kitrelay.shared.settings import Settings
from kitrelay.shared.turn_bus import publish_turn
from tests.services.worker_env import ALICE, WorkerEnv, worker_env
from tests.turn_streams import turn_entries

Env = WorkerEnv


@pytest.fixture
async def env(nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path) -> AsyncIterator[WorkerEnv]:
    async with worker_env(nats_url, redis_url, unique_namespace, tmp_path) as built:
        yield built


def make_worker(
    env: Env, *, concurrency: int, token_delay_s: float = 0.0, redis: aioredis.Redis | None = None
) -> Worker:
    settings = Settings(
        NAMESPACE=env.namespace, WORKER_CONCURRENCY=concurrency, TURN_ACK_WAIT_S=5, WORKER_DRAIN_TIMEOUT_S=5
    )
    deps = env.deps(OfflineModelProvider(token_delay_s=token_delay_s), redis=redis)
    return Worker(kind="task", nc=env.nc, agent=build_agent("task"), deps=deps, settings=settings)


async def new_turn(env: Env, text: str) -> TurnRequest:
    thread_id, item_id = await env.new_thread(text)
    request = TurnRequest(
        turn_id=new_id("turn"), thread_id=thread_id, identity=ALICE, agent="task", user_item_id=item_id
    )
    await publish_turn(env.js, env.namespace, request)
    return request


async def ack_pending(env: Env) -> int:
    try:
        info = await env.js.consumer_info(turns_stream(env.namespace), turns_consumer(env.namespace, "task"))
    except nats.js.errors.NotFoundError:  # the worker has not created its consumer yet
        return 0
    return info.num_ack_pending


async def is_ended(env: Env, turn_id: str) -> bool:
    entries = await turn_entries(env.redis, env.namespace, turn_id)
    return bool(entries) and entries[-1][1].is_terminal


async def wait_until(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_turns_run_concurrently_up_to_the_bound_and_are_acked(env: Env) -> None:
    worker = make_worker(env, concurrency=2, token_delay_s=0.05)
    turns = [await new_turn(env, f"add task errand number {i}") for i in range(6)]
    running = asyncio.create_task(worker.run())
    peak = 0
    try:

        async def all_ended() -> bool:
            nonlocal peak
            peak = max(peak, await ack_pending(env))
            return all([await is_ended(env, t.turn_id) for t in turns])

        await wait_until(all_ended)

        # Acks follow the terminal entries closely; work-queue retention then deletes the turns.
        async def stream_empty() -> bool:
            return (await env.js.stream_info(turns_stream(env.namespace))).state.messages == 0

        await wait_until(stream_empty, timeout_s=5)
    finally:
        worker.stop()
        await running
    assert peak == 2, f"at most two turns in flight at once, and it did use both (peak {peak})"
    assert worker.turns_done == 6
    assert len(await env.tasks.list(ALICE)) == 6


async def test_a_turn_whose_events_cannot_be_written_is_not_acked(env: Env) -> None:
    # Redis on a port nobody listens on: the terminal entry can never be written.
    broken = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    worker = make_worker(env, concurrency=1, redis=broken)
    await new_turn(env, "add task never acknowledged")
    running = asyncio.create_task(worker.run())
    try:

        async def redelivered() -> bool:
            try:
                info = await env.js.consumer_info(turns_stream(env.namespace), turns_consumer(env.namespace, "task"))
            except nats.js.errors.NotFoundError:
                return False
            return info.num_redelivered >= 1

        await wait_until(redelivered)
        assert (await env.js.stream_info(turns_stream(env.namespace))).state.messages == 1
        assert worker.turns_done == 0
    finally:
        worker.stop()
        await running
        await broken.aclose()


async def test_workers_of_one_kind_share_one_consumer(env: Env) -> None:
    first, second = make_worker(env, concurrency=4), make_worker(env, concurrency=4)
    turns = [await new_turn(env, f"add task shared {i}") for i in range(8)]
    runs = [asyncio.create_task(w.run()) for w in (first, second)]
    try:

        async def all_ended() -> bool:
            return all([await is_ended(env, t.turn_id) for t in turns])

        await wait_until(all_ended)
    finally:
        for w in (first, second):
            w.stop()
        await asyncio.gather(*runs)
    assert first.turns_done + second.turns_done == 8
    names = [c.name for c in await env.js.consumers_info(turns_stream(env.namespace))]
    assert names == [turns_consumer(env.namespace, "task")]


class FailingStore(TurnStore):
    """A database that fails every thread read: the turn can never be run, however often it is delivered."""

    async def load_thread(self, thread_id: str, context: TurnContext) -> ThreadMetadata:
        raise RuntimeError("database unavailable")

    async def load_thread_with_items(
        self, thread_id: str, limit: int, context: TurnContext
    ) -> tuple[ThreadMetadata, Page[ThreadItem]]:
        raise RuntimeError("database unavailable")


async def test_a_turn_that_fails_every_delivery_is_dead_lettered_and_the_user_told(env: Env) -> None:
    settings = Settings(NAMESPACE=env.namespace, TURN_MAX_DELIVER=2, TURN_ACK_WAIT_S=2, WORKER_DRAIN_TIMEOUT_S=2)
    deps = env.deps(OfflineModelProvider())
    broken = dataclasses.replace(deps, store=FailingStore(env.store._sessions))
    worker = Worker(kind="task", nc=env.nc, agent=build_agent("task"), deps=broken, settings=settings)
    request = await new_turn(env, "add task doomed")
    running = asyncio.create_task(worker.run())
    try:

        async def ended() -> bool:
            return await is_ended(env, request.turn_id)

        await wait_until(ended, timeout_s=30)
    finally:
        worker.stop()
        await running
    entries = [entry for _, entry in await turn_entries(env.redis, env.namespace, request.turn_id)]
    end = entries[-1].body
    assert isinstance(end, TurnEnd) and end.status == "failed" and "2 deliveries" in (end.error or "")
    [error] = [e.body.event for e in entries if isinstance(e.body, ChatKitEntry)]
    assert error.type == "error" and error.allow_retry is True and "several attempts" in (error.message or "")
    dead = await env.js.pull_subscribe(dead_letter_subject(env.namespace, "task"), durable=f"probe-{new_id('c')}")
    [msg] = await dead.fetch(1, timeout=5)
    assert TurnRequest.model_validate_json(msg.data).turn_id == request.turn_id
    assert (await env.js.stream_info(turns_stream(env.namespace))).state.messages == 0
    await env.js.delete_stream(dead_letter_stream(env.namespace))
