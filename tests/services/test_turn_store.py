"""The turn store on a real database (each dialect): one opening read, and the SDK's re-read answered from it
until the turn writes an item; the turn's own message is in its history even before its write commits."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from chatkit.store import NotFoundError
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kitrelay.agents.context import TurnContext
from kitrelay.services.knowledge import KnowledgeService
from kitrelay.services.tasks import TaskService
from kitrelay.services.turn_store import TurnStore
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from tests.databases import is_select_of, statements

ALICE = Identity(user_id="alice", team_id="acme")
MALLORY = Identity(user_id="mallory", team_id="acme")
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(db_sessions: async_sessionmaker[AsyncSession]) -> TurnStore:
    return TurnStore(db_sessions)


def turn(db_sessions: async_sessionmaker[AsyncSession], identity: Identity = ALICE) -> TurnContext:
    return TurnContext(
        identity=identity,
        turn_id=new_id("turn"),
        thread_id="",
        tasks=TaskService(db_sessions),
        knowledge=KnowledgeService(db_sessions),
    )


def message(thread_id: str, n: int) -> UserMessageItem:
    return UserMessageItem(
        id=f"msg_{thread_id}_{n}",
        thread_id=thread_id,
        created_at=START + timedelta(seconds=n),
        content=[UserMessageTextContent(text=f"message {n}")],
        attachments=[],
        inference_options=InferenceOptions(),
    )


async def thread_with(store: TurnStore, context: TurnContext, count: int) -> str:
    """A thread of `count` user messages, msg_<thread id>_0 first (see `ids`)."""
    thread = ThreadMetadata(id=new_id("thr"), created_at=START, title="groceries")
    await store.save_thread(thread, context)
    for n in range(count):
        await store.add_thread_item(thread.id, message(thread.id, n), context)
    return thread.id


def ids(thread_id: str, *numbers: int) -> list[str]:
    return [f"msg_{thread_id}_{n}" for n in numbers]


def item_reads(engine: AsyncEngine) -> contextlib.AbstractContextManager[list[str]]:
    """The statements that read thread items, as the database receives them."""
    return statements(engine, is_select_of("thread_items"))


async def test_a_turn_opens_with_its_thread_and_history_oldest_first(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 5)

    thread, history = await store.open_turn(thread_id, 3, context)

    assert (thread.id, thread.title) == (thread_id, "groceries")
    assert [item.id for item in history] == ids(thread_id, 2, 3, 4)


@pytest.mark.parametrize(
    ("count", "newest", "more"), [(4, (3, 2), True), (1, (0,), False)], ids=["a longer thread", "a one-item thread"]
)
async def test_the_sdk_reread_of_the_newest_items_is_answered_without_the_database(
    store: TurnStore,
    db_sessions: async_sessionmaker[AsyncSession],
    db_engine: AsyncEngine,
    count: int,
    newest: tuple[int, ...],
    more: bool,
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, count)
    await store.open_turn(thread_id, 50, context)

    with item_reads(db_engine) as reads:
        # What chatkit.agents.stream_agent_response asks before a run's first event.
        page = await store.load_thread_items(thread_id, None, 2, "desc", context)

    assert reads == []
    assert [item.id for item in page.data] == ids(thread_id, *newest)
    assert page.has_more is more
    assert page.after == ids(thread_id, newest[-1])[0]
    # The same items as the database gives (the read-ahead sets its own `after` cursor).
    from_database = await super(TurnStore, store).load_thread_items(thread_id, None, 2, "desc", context)
    assert (page.data, page.has_more) == (from_database.data, from_database.has_more)


async def test_what_the_reread_returns_is_a_copy(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 2)
    await store.open_turn(thread_id, 50, context)

    first = await store.load_thread_items(thread_id, None, 1, "desc", context)
    first.data[0].thread_id = "changed by the caller"
    again = await store.load_thread_items(thread_id, None, 1, "desc", context)

    assert again.data[0].thread_id == thread_id


async def test_an_item_the_turn_writes_ends_the_read_ahead(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession], db_engine: AsyncEngine
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 2)
    await store.open_turn(thread_id, 50, context)
    reply = AssistantMessageItem(
        id=new_id("msg"), thread_id=thread_id, created_at=START + timedelta(minutes=1), content=[]
    )
    await store.add_thread_item(thread_id, reply, context)

    with item_reads(db_engine) as reads:
        newest = await store.load_thread_items(thread_id, None, 2, "desc", context)

    assert reads != []
    assert [item.id for item in newest.data] == [reply.id, *ids(thread_id, 1)]
    # A later save of the reply is read back too, not an old copy.
    reply.content = [AssistantMessageContent(text="done")]
    await store.save_item(thread_id, reply, context)
    saved = (await store.load_thread_items(thread_id, None, 1, "desc", context)).data[0]
    assert isinstance(saved, AssistantMessageItem) and saved.content[0].text == "done"


@pytest.mark.parametrize(
    ("after", "limit", "order"),
    [(3, 2, "desc"), (None, 2, "asc"), (None, 5, "desc")],
    ids=["a later page", "oldest first", "more than was read"],
)
async def test_reads_beyond_the_read_ahead_go_to_the_database(
    store: TurnStore,
    db_sessions: async_sessionmaker[AsyncSession],
    db_engine: AsyncEngine,
    after: int | None,
    limit: int,
    order: str,
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 6)
    await store.open_turn(thread_id, 3, context)
    cursor = None if after is None else ids(thread_id, after)[0]

    with item_reads(db_engine) as reads:
        page = await store.load_thread_items(thread_id, cursor, limit, order, context)

    assert reads != []
    assert page == await super(TurnStore, store).load_thread_items(thread_id, cursor, limit, order, context)


async def test_load_history_reads_ahead_for_a_caller_that_holds_the_thread(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession], db_engine: AsyncEngine
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 3)

    history = await store.load_history(thread_id, 50, context)
    with item_reads(db_engine) as reads:
        newest = await store.load_thread_items(thread_id, None, 2, "desc", context)

    assert [item.id for item in history] == ids(thread_id, 0, 1, 2)
    assert reads == []
    assert [item.id for item in newest.data] == ids(thread_id, 2, 1)


@pytest.mark.parametrize(
    ("saved", "limit", "history", "more"),
    [
        (False, 50, (0, 1, 2, 3), False),
        (True, 50, (0, 1, 2, 3), False),
        (False, 3, (1, 2, 3), True),
    ],
    ids=["not committed yet", "already saved", "at the limit"],
)
async def test_the_turns_message_is_in_its_history_whether_or_not_its_write_has_committed(
    store: TurnStore,
    db_sessions: async_sessionmaker[AsyncSession],
    db_engine: AsyncEngine,
    saved: bool,
    limit: int,
    history: tuple[int, ...],
    more: bool,
) -> None:
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 3)
    new = message(thread_id, 3)
    if saved:
        await store.add_thread_item(thread_id, new, context)

    loaded = await store.load_history(thread_id, limit, context, turn_message=new)
    with item_reads(db_engine) as reads:
        newest = await store.load_thread_items(thread_id, None, limit, "desc", context)

    assert [item.id for item in loaded] == ids(thread_id, *history)
    # The SDK's re-read sees it too, still without the database.
    assert reads == []
    assert [item.id for item in newest.data] == ids(thread_id, *reversed(history))
    assert newest.has_more is more


async def test_a_message_that_waited_for_the_previous_reply_comes_after_it(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Sent while the previous reply was being written (it waited for it), the message was made before that reply's
    items but comes after them: it is what the turn answers. Placed by its time, the model read the reply's widget
    (given to it as a user's line) as the newest message, and answered that."""
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 2)
    new = message(thread_id, 2)
    reply = AssistantMessageItem(
        id="reply",
        thread_id=thread_id,
        created_at=START + timedelta(seconds=3),
        content=[AssistantMessageContent(text="ok")],
    )
    await store.add_thread_item(thread_id, reply, context)

    loaded = await store.load_history(thread_id, 50, context, turn_message=new)

    assert [item.id for item in loaded] == [*ids(thread_id, 0, 1), "reply", *ids(thread_id, 2)]


async def test_another_users_thread_cannot_be_opened(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    thread_id = await thread_with(store, turn(db_sessions), 2)

    with pytest.raises(NotFoundError):
        await store.open_turn(thread_id, 50, turn(db_sessions, MALLORY))
    with pytest.raises(NotFoundError):
        await store.open_turn("thr_missing", 50, turn(db_sessions))


async def test_a_turns_read_of_its_thread_and_history_is_one_statement(
    store: TurnStore, db_sessions: async_sessionmaker[AsyncSession], db_engine: AsyncEngine
) -> None:
    """The ownership check and the items in one round trip: every turn starts with this read."""
    context = turn(db_sessions)
    thread_id = await thread_with(store, context, 3)
    empty_id = await thread_with(store, context, 0)

    with statements(db_engine, lambda statement: statement.lstrip().upper().startswith("SELECT")) as reads:
        history = await store.load_history(thread_id, 50, turn(db_sessions))
        thread, opened = await store.open_turn(thread_id, 2, turn(db_sessions))
        empty = await store.load_history(empty_id, 50, turn(db_sessions))

    assert len(reads) == 3
    assert [item.id for item in history] == ids(thread_id, 0, 1, 2)
    assert (thread.title, [item.id for item in opened]) == ("groceries", ids(thread_id, 1, 2))
    assert empty == []
    with pytest.raises(NotFoundError):
        await store.load_history(thread_id, 50, turn(db_sessions, MALLORY))
