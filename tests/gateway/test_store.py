"""The gateway's store on a real database (each dialect): a request reads a thread from the database once, however
often the access check and the ChatKit SDK ask for it, and never hands out the copy it keeps; the user's message
that starts a turn is saved with the turn's record, in one transaction, and never lost when no turn starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from chatkit.actions import Action
from chatkit.store import NotFoundError
from chatkit.types import ThreadCustomActionParams, ThreadMetadata, ThreadsCustomActionReq, WidgetItem
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.requests import check_access
from kitrelay.gateway.store import GatewayStore
from kitrelay.services.turns import TurnRecords, start_statement
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from tests.databases import (
    db_engine,
    db_sessions,
    is_select_of,
    migrated_db_url,
    postgres_database_url,
    sqlite_database_url,
    statements,
)
from tests.items import task_widget_item, user_message

__all__ = ["db_engine", "db_sessions", "migrated_db_url", "postgres_database_url", "sqlite_database_url"]

ALICE = Identity(user_id="alice", team_id="acme")


@pytest.fixture
def thread_reads(db_engine: AsyncEngine) -> Iterator[list[str]]:
    """The SELECTs of the threads table the engine runs, as they happen."""
    with statements(db_engine, is_select_of("FROM threads")) as reads:
        yield reads


async def test_a_request_reads_its_thread_once_and_each_caller_gets_its_own_copy(
    db_sessions: async_sessionmaker[AsyncSession], thread_reads: list[str]
) -> None:
    store = GatewayStore(db_sessions)
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(), title="first")
    await store.save_thread(thread, context=RequestContext(identity=ALICE))
    # A save reads the thread's stored route under its write lock (the route is the workers' to write): counted
    # apart from a request's reads of the thread.
    assert len(thread_reads) == 1
    thread_reads.clear()
    request = RequestContext(identity=ALICE)

    checked = await store.load_thread(thread.id, request)
    sdk_copy = await store.load_thread(thread.id, request)
    assert len(thread_reads) == 1
    assert sdk_copy == checked and sdk_copy is not checked
    sdk_copy.title = "changed, not saved"
    assert (await store.load_thread(thread.id, request)).title == "first"

    # A save is read back from the database, by this request and by the next.
    sdk_copy.title = "renamed"
    await store.save_thread(sdk_copy, request)
    assert len(thread_reads) == 2
    assert (await store.load_thread(thread.id, request)).title == "renamed"
    assert (await store.load_thread(thread.id, RequestContext(identity=ALICE))).title == "renamed"
    assert len(thread_reads) == 4


async def test_a_widget_actions_sender_is_read_once_by_the_access_check_and_not_validated(
    db_sessions: async_sessionmaker[AsyncSession], db_engine: AsyncEngine
) -> None:
    store = GatewayStore(db_sessions)
    thread = await _saved_thread(store)
    widget = task_widget_item(thread.id, "buy milk")
    await store.add_thread_item(thread.id, widget, RequestContext(identity=ALICE))
    click = ThreadsCustomActionReq(
        params=ThreadCustomActionParams(thread_id=thread.id, item_id=widget.id, action=Action(type="task.toggle"))
    )
    request = RequestContext(identity=ALICE)

    with statements(db_engine, is_select_of("FROM thread_items")) as item_reads:
        await check_access(click, store, request)
        sender = await store.load_item(thread.id, widget.id, request)  # what the ChatKit SDK does next
    assert len(item_reads) == 1
    assert isinstance(sender, WidgetItem) and sender.id == widget.id
    # The widget as stored, not validated: the relay passes on only the item's id.
    assert sender.widget == json.loads(widget.model_dump_json())["widget"]
    # Any other item, or another request, is read from the database.
    assert (await store.load_item(thread.id, widget.id, RequestContext(identity=ALICE))).model_dump() == (
        widget.model_dump()
    )


async def test_a_thread_deleted_in_the_request_is_gone_for_it(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    store = GatewayStore(db_sessions)
    request = RequestContext(identity=ALICE)
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await store.save_thread(thread, request)
    await store.load_thread(thread.id, request)
    await store.delete_thread(thread.id, request)
    with pytest.raises(NotFoundError):
        await store.load_thread(thread.id, request)


@pytest.fixture
def commits(db_engine: AsyncEngine) -> Iterator[list[None]]:
    """One entry per transaction the engine commits."""
    committed: list[None] = []

    def record(_conn: Any) -> None:
        committed.append(None)

    event.listen(db_engine.sync_engine, "commit", record)
    yield committed
    event.remove(db_engine.sync_engine, "commit", record)


async def _saved_thread(store: GatewayStore) -> ThreadMetadata:
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await store.save_thread(thread, RequestContext(identity=ALICE))
    return thread


async def test_a_message_that_starts_a_turn_is_saved_with_the_turns_record_in_one_transaction(
    db_sessions: async_sessionmaker[AsyncSession], commits: list[None]
) -> None:
    store = GatewayStore(db_sessions)
    thread = await _saved_thread(store)
    request = RequestContext(identity=ALICE, hold_user_message=True)
    message = user_message(thread.id, "hello")
    commits.clear()  # the thread's own

    await store.add_thread_item(thread.id, message, request)
    assert request.held is not None and request.held.item == message
    assert commits == []  # held for the turn
    assert (await store.load_thread_items(thread.id, None, 10, "asc", RequestContext(identity=ALICE))).data == []

    held = request.take_held()
    assert held is not None and request.take_held() is None  # taken: nobody saves it twice
    turn_id = new_id("turn")
    await held.save([start_statement(ALICE, turn_id=turn_id, thread_id=thread.id, agent="triage")])

    assert len(commits) == 1
    saved = await store.load_thread_items(thread.id, None, 10, "asc", RequestContext(identity=ALICE))
    assert [item.id for item in saved.data] == [message.id]
    record = await TurnRecords(db_sessions).get(ALICE, turn_id)
    assert record.status == "queued" and record.thread_id == thread.id


async def test_a_held_message_no_turn_takes_is_saved_alone_and_before_the_thread_is_read(
    db_sessions: async_sessionmaker[AsyncSession],
) -> None:
    store = GatewayStore(db_sessions)
    thread = await _saved_thread(store)
    request = RequestContext(identity=ALICE, hold_user_message=True)
    first, second = user_message(thread.id, "one"), user_message(thread.id, "two")

    await store.add_thread_item(thread.id, first, request)
    # The request reads the thread's items: it sees its own message.
    page = await store.load_thread_items(thread.id, None, 10, "asc", request)
    assert [item.id for item in page.data] == [first.id] and request.held is None

    await store.add_thread_item(thread.id, second, request)
    await request.save_held()  # the turn never started
    await request.save_held()  # nothing left: no second write
    page = await store.load_thread_items(thread.id, None, 10, "asc", RequestContext(identity=ALICE))
    assert [item.id for item in page.data] == [first.id, second.id]

    # Without the flag (any other request) a message is saved at once.
    third = user_message(thread.id, "three")
    other = RequestContext(identity=ALICE)
    await store.add_thread_item(thread.id, third, other)
    assert other.held is None
    page = await store.load_thread_items(thread.id, None, 10, "asc", RequestContext(identity=ALICE))
    assert page.data[-1].id == third.id
