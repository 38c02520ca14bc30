"""The turn's single writer on a real Redis and SQLite store: item updates a model produces faster than Redis
takes them are packed into one entry per write, in order, while a slow model still gets one entry per update; a
turn's last reply is saved with the turn's end in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ErrorEvent,
    HiddenContextItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    UserMessageItem,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine

from kitrelay.agents.context import TurnContext
from kitrelay.services.turn_log import PACK_MAX_EVENTS, TurnLog, TurnLogWriteError
from kitrelay.services.turns import start_statement
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import ChatKitEntry, PackEntry, TurnEnd
from kitrelay.shared.names import turn_stream_key
from tests.databases import sqlite_statements, statements
from tests.items import task_widget_item, user_message
from tests.services.worker_env import ALICE, StoreContext, WorkerEnv, worker_env
from tests.turn_streams import entry_events, turn_entries


@pytest.fixture
async def env(nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path) -> AsyncIterator[WorkerEnv]:
    async with worker_env(nats_url, redis_url, unique_namespace, tmp_path) as built:
        yield built


def _turn_log(
    env: WorkerEnv,
    thread_id: str,
    *,
    redis: aioredis.Redis | None = None,
    ttl_s: int = 60,
    question: UserMessageItem | None = None,
) -> tuple[TurnLog, str]:
    turn_id = new_id("turn")
    context = TurnContext(
        identity=ALICE, turn_id=turn_id, thread_id=thread_id, tasks=env.tasks, knowledge=env.knowledge
    )
    log = TurnLog(
        redis=redis or env.redis,
        store=env.store,
        turns=env.turns,
        context=context,
        namespace=env.namespace,
        thread_id=thread_id,
        turn_id=turn_id,
        hop=0,
        attempt=1,
        ttl_s=ttl_s,
        ttl_after_end_s=60,
        agent="task",
        question=question,
    )
    return log, turn_id


def _message(thread_id: str, text: str = "") -> AssistantMessageItem:
    return AssistantMessageItem(
        id=new_id("msg"), thread_id=thread_id, created_at=datetime.now(), content=[AssistantMessageContent(text=text)]
    )


def _delta(item_id: str, text: str) -> ThreadItemUpdatedEvent:
    return ThreadItemUpdatedEvent(
        item_id=item_id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )


async def test_updates_a_fast_model_produces_go_out_packed_in_order_and_the_reply_is_saved_whole(
    env: WorkerEnv,
) -> None:
    thread_id, _ = await env.new_thread("write a lot")
    log, turn_id = _turn_log(env, thread_id)
    item = _message(thread_id)
    words = [f"w{n} " for n in range(300)]

    await log.emit(ThreadItemAddedEvent(item=item))
    for word in words:  # no await in between that waits for anything: a model faster than Redis
        await log.emit(_delta(item.id, word))
    await log.emit(
        ThreadItemDoneEvent(item=item.model_copy(update={"content": [AssistantMessageContent(text="".join(words))]}))
    )
    await log.end("completed")

    entries = [entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)]
    packs = [e.body for e in entries if isinstance(e.body, PackEntry)]
    assert packs, "updates were written one entry each"
    assert all(len(pack.events) <= PACK_MAX_EVENTS for pack in packs)
    assert len(entries) < len(words) // 4
    assert [e.seq for e in entries] == list(range(len(entries)))
    events = entry_events(entries)
    assert [e.type for e in events] == ["thread.item.added", *["thread.item.updated"] * 300, "thread.item.done"]
    assert [e.update.delta for e in events if isinstance(e, ThreadItemUpdatedEvent)] == words  # type: ignore[union-attr]
    assert isinstance(entries[-1].body, TurnEnd)
    assert log.events == len(events) + 1  # and the end
    saved = await env.db.load_item(thread_id, item.id, context=StoreContext(ALICE))
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "".join(words)


async def test_a_model_slower_than_a_write_gets_an_entry_per_update_without_waiting(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("take your time")
    log, turn_id = _turn_log(env, thread_id)
    item = _message(thread_id)
    await log.emit(ThreadItemAddedEvent(item=item))
    for n in range(5):
        await log.emit(_delta(item.id, f"t{n} "))
        # The update is on the stream while the model thinks about the next token: nothing waits for a pack.
        await asyncio.sleep(0.05)
        assert len(await turn_entries(env.redis, env.namespace, turn_id)) == n + 2
    await log.end("completed")
    entries = [entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)]
    assert all(isinstance(e.body, ChatKitEntry | TurnEnd) for e in entries)
    assert {e.v for e in entries} == {2}  # single events stay readable by relays that know no packs


async def test_a_stop_saves_the_text_of_updates_still_queued(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("stop me")
    log, turn_id = _turn_log(env, thread_id)
    item = _message(thread_id)
    await log.emit(ThreadItemAddedEvent(item=item))
    for word in ("half ", "a ", "reply"):
        await log.emit(_delta(item.id, word))
    await log.stop("the user stopped it")

    events = entry_events([entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)])
    updates = [e.update.delta for e in events if isinstance(e, ThreadItemUpdatedEvent)]  # type: ignore[union-attr]
    assert updates == ["half ", "a ", "reply"]
    done = next(e for e in events if isinstance(e, ThreadItemDoneEvent) and e.item.id == item.id)
    assert isinstance(done.item, AssistantMessageItem) and done.item.content[0].text.startswith("half a reply")
    assert events.index(done) > max(events.index(e) for e in events if isinstance(e, ThreadItemUpdatedEvent))


async def test_a_queued_write_redis_refuses_fails_the_turn_log_not_silently(env: WorkerEnv, tmp_path: Path) -> None:
    thread_id, _ = await env.new_thread("nowhere to write")
    # A Redis client of a server that is not there (a unix socket nobody listens on): every write fails.
    gone = aioredis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"), retry=Retry(NoBackoff(), 0))
    log, _ = _turn_log(env, thread_id, redis=gone)
    item = _message(thread_id)
    try:
        await log.emit(_delta(item.id, "lost? "))  # queued: the write fails in the background
        with pytest.raises(TurnLogWriteError):
            for _ in range(100):
                await asyncio.sleep(0.05)
                await log.emit(_delta(item.id, "no "))
        # The end is not written either (and no queued write is left to fail it later).
        with pytest.raises(RedisConnectionError):
            await log.end("completed")
    finally:
        await gone.aclose()


async def test_the_streams_expiry_is_pushed_out_by_its_first_entry_then_every_tenth_of_it(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("expire me")
    log, turn_id = _turn_log(env, thread_id, ttl_s=2)
    key = turn_stream_key(env.namespace, turn_id)
    item = _message(thread_id)

    await log.emit(ThreadItemAddedEvent(item=item))
    first = await env.redis.pttl(key)
    await env.redis.pexpire(key, 1000)
    await log.emit(ThreadItemAddedEvent(item=_message(thread_id)))  # a moment later: the expiry is left as it is
    kept = await env.redis.pttl(key)
    await asyncio.sleep(0.25)  # more than a tenth of the 2 s TTL
    await log.emit(ThreadItemAddedEvent(item=_message(thread_id)))
    pushed = await env.redis.pttl(key)

    assert 1500 < first <= 2000
    assert 500 < kept <= 1000
    assert 1500 < pushed <= 2000


def write_transactions(engine: AsyncEngine) -> contextlib.AbstractContextManager[list[str]]:
    """The write transactions the database begins (every one takes SQLite's write lock), as it receives them."""
    return sqlite_statements(engine, lambda statement: statement == "BEGIN IMMEDIATE")


async def _stream_events(env: WorkerEnv, turn_id: str) -> list[ThreadStreamEvent]:
    return entry_events([entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)])


async def test_a_turns_last_reply_and_its_end_are_one_transaction_and_one_round_trip(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("say hi")
    log, turn_id = _turn_log(env, thread_id)
    await env.turns.start(ALICE, turn_id=turn_id, thread_id=thread_id, agent="triage")
    item = _message(thread_id)
    await log.emit(ThreadItemAddedEvent(item=item))
    await log.emit(_delta(item.id, "Hi!"))
    await log.emit(ThreadItemDoneEvent(item=_message(thread_id, "Hi!").model_copy(update={"id": item.id})))
    # Held: neither saved nor on the stream until the turn says what comes next.
    assert [e.type for e in await _stream_events(env, turn_id)] == ["thread.item.added", "thread.item.updated"]

    with write_transactions(env.engine) as begun:
        await log.end("completed")

    assert len(begun) == 1  # the reply and the turn's end; before, two transactions
    entries = [entry for _, entry in await turn_entries(env.redis, env.namespace, turn_id)]
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert isinstance(entries[-1].body, TurnEnd) and entries[-1].body.status == "completed"
    assert isinstance(entries[-2].body, ChatKitEntry) and entries[-2].body.event.type == "thread.item.done"
    assert log.events == 4
    saved = await env.db.load_item(thread_id, item.id, context=StoreContext(ALICE))
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "Hi!"
    record = await env.turns.get(ALICE, turn_id)
    assert record.status == "completed" and record.ended_at is not None


async def test_a_held_reply_is_saved_and_published_before_whatever_comes_next(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("two replies")
    log, turn_id = _turn_log(env, thread_id)
    first, second = _message(thread_id, "one"), _message(thread_id)
    await log.emit(ThreadItemAddedEvent(item=first))
    await log.emit(ThreadItemDoneEvent(item=first))
    await log.emit(ThreadItemAddedEvent(item=second))

    events = await _stream_events(env, turn_id)
    assert [(e.type, e.item.id) for e in events if isinstance(e, ThreadItemAddedEvent | ThreadItemDoneEvent)] == [
        ("thread.item.added", first.id),
        ("thread.item.done", first.id),
        ("thread.item.added", second.id),
    ]
    assert len(events) == 3
    saved = await env.db.load_item(thread_id, first.id, context=StoreContext(ALICE))
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "one"


async def test_a_widget_and_the_tools_hidden_result_are_one_transaction_and_the_result_is_never_published(
    env: WorkerEnv,
) -> None:
    """A widget tool's turn: its widget, the tool's result kept for the model (hidden), the reply, the end. Two
    transactions (before, three), and nothing hidden on the stream for the relay to drop."""
    thread_id, _ = await env.new_thread("add task write report")
    log, turn_id = _turn_log(env, thread_id)
    card = task_widget_item(thread_id)
    hidden = HiddenContextItem(id=new_id("hcx"), thread_id=thread_id, created_at=datetime.now(), content={"n": 1})
    reply = _message(thread_id, "Added.")

    with write_transactions(env.engine) as begun:
        await log.emit(ThreadItemDoneEvent(item=card))
        assert begun == []
        await log.emit(ThreadItemDoneEvent(item=hidden))
        # Shown at once with its tool's result, one transaction: a model may take seconds to say more.
        assert len(begun) == 1
        assert [e.type for e in await _stream_events(env, turn_id)] == ["thread.item.done"]
        await log.emit(ThreadItemAddedEvent(item=_message(thread_id).model_copy(update={"id": reply.id})))
        assert len(begun) == 1
        await log.emit(ThreadItemDoneEvent(item=reply))
        await log.end("completed")
    assert len(begun) == 2

    events = await _stream_events(env, turn_id)
    assert [(e.type, e.item.id) for e in events if isinstance(e, ThreadItemAddedEvent | ThreadItemDoneEvent)] == [
        ("thread.item.done", card.id),
        ("thread.item.added", reply.id),
        ("thread.item.done", reply.id),
    ]
    assert len(events) == 3
    assert (await _thread_item_ids(env, thread_id))[1:] == [card.id, hidden.id, reply.id]


async def test_a_hidden_result_with_nothing_held_joins_the_next_write(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("hidden first")
    log, turn_id = _turn_log(env, thread_id)
    hidden = HiddenContextItem(id=new_id("hcx"), thread_id=thread_id, created_at=datetime.now(), content={"n": 1})
    reply = _message(thread_id, "Done.")
    with write_transactions(env.engine) as begun:
        await log.emit(ThreadItemDoneEvent(item=hidden))
        await log.emit(ThreadItemDoneEvent(item=reply))
        await log.end("completed")
    assert len(begun) == 1
    assert [e.type for e in await _stream_events(env, turn_id)] == ["thread.item.done"]
    assert (await _thread_item_ids(env, thread_id))[1:] == [hidden.id, reply.id]


async def test_a_stop_saves_a_held_reply_whole_and_records_the_stop(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread("stop after the reply")
    log, turn_id = _turn_log(env, thread_id)
    await env.turns.start(ALICE, turn_id=turn_id, thread_id=thread_id, agent="triage")
    item = _message(thread_id, "complete")
    await log.emit(ThreadItemAddedEvent(item=item))
    await log.emit(ThreadItemDoneEvent(item=item))
    await log.stop("the user stopped it")

    saved = await env.db.load_item(thread_id, item.id, context=StoreContext(ALICE))
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "complete"  # finished: not marked
    types = [e.type for e in await _stream_events(env, turn_id)]
    assert types[:2] == ["thread.item.added", "thread.item.done"]
    assert (await env.turns.get(ALICE, turn_id)).status == "cancelled"


async def _thread_item_ids(env: WorkerEnv, thread_id: str) -> list[str]:
    page = await env.db.load_thread_items(thread_id, None, 20, "asc", context=StoreContext(ALICE))
    return [item.id for item in page.data]


async def test_the_users_message_is_saved_before_the_first_item_of_the_hop_in_its_transaction(env: WorkerEnv) -> None:
    """The gateway had not saved the message (it saves it once the worker has read the conversation, or it died):
    the worker's first write saves it, before the reply, and the gateway's later save keeps that place."""
    thread_id, earlier = await env.new_thread("an earlier message")
    question = user_message(thread_id, "what now?")
    log, turn_id = _turn_log(env, thread_id, question=question)
    reply, widget = _message(thread_id, "this"), _message(thread_id, "that")
    await log.emit(ThreadItemAddedEvent(item=reply))
    with write_transactions(env.engine) as begun:
        await log.emit(ThreadItemDoneEvent(item=reply))
        await log.emit(ThreadItemAddedEvent(item=widget))  # saves the held reply, with the message first
    assert len(begun) == 1
    assert await _thread_item_ids(env, thread_id) == [earlier, question.id, reply.id]

    await log.emit(ThreadItemDoneEvent(item=widget))
    await log.end("completed")
    # The gateway's save of the message and the turn's record, late: an upsert, the message keeps its place.
    record = start_statement(ALICE, turn_id=turn_id, thread_id=thread_id, agent="triage")
    await env.db.add_thread_item_with(thread_id, question, StoreContext(ALICE), [record])
    assert await _thread_item_ids(env, thread_id) == [earlier, question.id, reply.id, widget.id]
    assert (await env.turns.get(ALICE, turn_id)).status == "completed"


async def test_a_hop_that_saves_no_item_saves_the_users_message_with_the_turns_end(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread()
    question = user_message(thread_id, "hello?")
    log, turn_id = _turn_log(env, thread_id, question=question)
    await log.emit(ErrorEvent(code="custom", message="Sorry.", allow_retry=True))
    assert await _thread_item_ids(env, thread_id) == []  # not a write of the store: nothing saved yet

    with write_transactions(env.engine) as begun:
        await log.end("failed", error="the model failed")

    assert len(begun) == 1  # the message and the turn's record together
    assert await _thread_item_ids(env, thread_id) == [question.id]
    assert (await env.turns.get(ALICE, turn_id)).status == "failed"


async def test_a_hop_whose_message_is_saved_writes_it_no_more(env: WorkerEnv) -> None:
    thread_id, _ = await env.new_thread()
    question = user_message(thread_id, "once")
    log, _ = _turn_log(env, thread_id, question=question)
    first, second = _message(thread_id, "one"), _message(thread_id, "two")
    await log.emit(ThreadItemDoneEvent(item=first))
    await log.emit(ThreadItemAddedEvent(item=second))
    with statements(env.engine, lambda statement: statement.startswith("INSERT INTO thread_items")) as inserts:
        await log.emit(ThreadItemDoneEvent(item=second))
        await log.emit(ThreadItemAddedEvent(item=_message(thread_id)))
    assert len(inserts) == 1  # the second reply only
    assert await _thread_item_ids(env, thread_id) == [question.id, first.id, second.id]
