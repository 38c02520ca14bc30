"""run_turn against real Redis and a real SQLite store: history in, events out, terminal entry last."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from agents import Model, ModelProvider
from agents.testing import ModelStep, ScriptedModel, assistant_message
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)

from kitrelay.agents.registry import build_agent
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_runner import TurnDeps, run_turn
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, Identity, TurnEnd, TurnEntry, TurnRequest
from kitrelay.shared.store.chatkit_store import SqlStore
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate_async
from tests.turn_streams import turn_entries

ALICE = Identity(user_id="alice", team_id="acme")


class _Ctx:
    identity = ALICE


class ScriptedProvider(ModelProvider):
    def __init__(self, model: Model) -> None:
        self.model = model

    def get_model(self, model_name: str | None) -> Model:
        return self.model


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await migrate_async(url)
    engine = make_engine(url)
    yield SqlStore(make_sessionmaker(engine))
    await engine.dispose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def deps_for(store: SqlStore, redis: aioredis.Redis, provider: ModelProvider, namespace: str) -> TurnDeps:
    return TurnDeps(
        redis=redis,
        store=store,
        tasks=TaskService(store._sessions),
        provider=provider,
        model=None,
        namespace=namespace,
        history_items=50,
        stream_ttl_s=60,
    )


async def seed_thread(store: SqlStore, texts: list[tuple[str, str]]) -> tuple[str, str]:
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await store.save_thread(thread, context=_Ctx())
    last_user = ""
    for role, text in texts:
        if role == "user":
            last_user = new_id("msg")
            item: UserMessageItem | AssistantMessageItem = UserMessageItem(
                id=last_user,
                thread_id=thread.id,
                created_at=datetime.now(),
                content=[UserMessageTextContent(text=text)],
                attachments=[],
                inference_options=InferenceOptions(),
            )
        else:
            item = AssistantMessageItem(
                id=new_id("msg"),
                thread_id=thread.id,
                created_at=datetime.now(),
                content=[AssistantMessageContent(text=text)],
            )
        await store.add_thread_item(thread.id, item, context=_Ctx())
    return thread.id, last_user


async def read_entries(redis: aioredis.Redis, namespace: str, turn_id: str) -> list[TurnEntry]:
    return [entry for _, entry in await turn_entries(redis, namespace, turn_id)]


async def test_the_model_sees_the_thread_history_not_only_the_new_message(
    store: SqlStore, redis: aioredis.Redis, unique_namespace: str
) -> None:
    thread_id, user_item = await seed_thread(
        store, [("user", "add task buy milk"), ("assistant", 'Added task #1 "buy milk".'), ("user", "and call Bob")]
    )
    model = ScriptedModel([ModelStep(output=[assistant_message("Noted.", item_id=new_id("msg"))])])
    request = TurnRequest(
        turn_id=new_id("turn"), thread_id=thread_id, identity=ALICE, agent="task", user_item_id=user_item
    )

    await run_turn(
        request,
        attempt=1,
        agent=build_agent("task"),
        deps=deps_for(store, redis, ScriptedProvider(model), unique_namespace),
    )

    assert model.first_call is not None
    sent = model.first_call.input
    assert isinstance(sent, list)
    texts = [str(item) for item in sent]
    assert "add task buy milk" in texts[0]
    assert "buy milk" in texts[1]
    assert "and call Bob" in texts[2]
    assert len(sent) == 3, "the new message is sent once, not twice"


async def test_every_event_is_saved_then_streamed_with_attempt_and_sequence(
    store: SqlStore, redis: aioredis.Redis, unique_namespace: str
) -> None:
    thread_id, user_item = await seed_thread(store, [("user", "hello")])
    reply_id = new_id("msg")
    model = ScriptedModel([ModelStep(output=[assistant_message("Hello there.", item_id=reply_id)])])
    turn_id = new_id("turn")
    request = TurnRequest(turn_id=turn_id, thread_id=thread_id, identity=ALICE, agent="task", user_item_id=user_item)

    await run_turn(
        request,
        attempt=3,
        agent=build_agent("task"),
        deps=deps_for(store, redis, ScriptedProvider(model), unique_namespace),
    )

    entries = await read_entries(redis, unique_namespace, turn_id)
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert {e.attempt for e in entries} == {3}
    assert {e.turn_id for e in entries} == {turn_id}
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "completed"
    assert all(isinstance(e.body, ChatKitEntry) for e in entries[:-1])
    done = [
        e.body.event
        for e in entries[:-1]
        if isinstance(e.body, ChatKitEntry) and e.body.event.type == "thread.item.done"
    ]
    assert [event.item.id for event in done] == [reply_id]
    saved = await store.load_item(thread_id, reply_id, context=_Ctx())
    assert isinstance(saved, AssistantMessageItem)
    assert saved.content[0].text == "Hello there."


async def test_a_failing_model_ends_the_turn_with_a_retryable_error(
    store: SqlStore, redis: aioredis.Redis, unique_namespace: str
) -> None:
    thread_id, user_item = await seed_thread(store, [("user", "hello")])
    model = ScriptedModel([ModelStep.raise_error(RuntimeError("provider down"))])
    turn_id = new_id("turn")
    request = TurnRequest(turn_id=turn_id, thread_id=thread_id, identity=ALICE, agent="task", user_item_id=user_item)

    await run_turn(
        request,
        attempt=1,
        agent=build_agent("task"),
        deps=deps_for(store, redis, ScriptedProvider(model), unique_namespace),
    )

    entries = await read_entries(redis, unique_namespace, turn_id)
    end = entries[-1].body
    assert isinstance(end, TurnEnd) and end.status == "failed"
    error = entries[-2].body
    assert isinstance(error, ChatKitEntry) and error.event.type == "error"
    assert error.event.allow_retry is True


async def test_a_thread_of_someone_else_is_never_answered(
    store: SqlStore, redis: aioredis.Redis, unique_namespace: str
) -> None:
    thread_id, user_item = await seed_thread(store, [("user", "hello")])
    model = ScriptedModel([])
    turn_id = new_id("turn")
    mallory = Identity(user_id="mallory", team_id="evil")
    request = TurnRequest(turn_id=turn_id, thread_id=thread_id, identity=mallory, agent="task", user_item_id=user_item)

    await run_turn(
        request,
        attempt=1,
        agent=build_agent("task"),
        deps=deps_for(store, redis, ScriptedProvider(model), unique_namespace),
    )

    assert not model.calls
    entries = await read_entries(redis, unique_namespace, turn_id)
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "failed"
