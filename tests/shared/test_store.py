"""SqlStore, ChatKit's Store in SQL: every method, on SQLite and on PostgreSQL (the `store` fixture runs both)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from chatkit.server import ChatKitServer, NonStreamingResult, StreamingResult
from chatkit.store import _ID_PREFIXES as CHATKIT_ID_PREFIXES
from chatkit.store import NotFoundError
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    Attachment,
    FileAttachment,
    HiddenContextItem,
    ImageAttachment,
    InferenceOptions,
    Page,
    Thread,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from ulid import ULID

from kitrelay.shared.context import HasIdentity
from kitrelay.shared.ids import new_id
from kitrelay.shared.store.chatkit_store import ID_PREFIXES, ItemIdConflictError, SqlStore, thread_route
from kitrelay.shared.store.engine import SQLITE_BUSY_TIMEOUT_MS, make_engine, make_sessionmaker
from kitrelay.shared.store.models import AttachmentRow, ThreadItemRow
from tests.databases import StoreContext, new_identity
from tests.items import task_widget_item

# -- builders ---------------------------------------------------------------------------------------------------------


def new_context(team_id: str | None = None) -> StoreContext:
    return StoreContext(identity=new_identity(team_id))


def user_message(
    thread_id: str, text_: str, *, item_id: str | None = None, created_at: datetime | None = None
) -> UserMessageItem:
    return UserMessageItem(
        id=item_id or new_id("msg"),
        thread_id=thread_id,
        # What chatkit does: naive local time.
        created_at=created_at or datetime.now(),
        content=[UserMessageTextContent(text=text_)],
        attachments=[],
        inference_options=InferenceOptions(),
    )


def assistant_message(thread_id: str, text_: str, *, item_id: str | None = None) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=item_id or new_id("msg"),
        thread_id=thread_id,
        created_at=datetime.now(),
        content=[AssistantMessageContent(text=text_)],
    )


def text_of(item: ThreadItem) -> str:
    assert isinstance(item, UserMessageItem | AssistantMessageItem)
    part = item.content[0]
    assert isinstance(part, UserMessageTextContent | AssistantMessageContent)
    return part.text


async def new_thread(
    store: SqlStore, context: StoreContext, *, created_at: datetime | None = None, title: str | None = None
) -> ThreadMetadata:
    thread = ThreadMetadata(
        id=store.generate_thread_id(context), created_at=created_at or datetime.now(UTC), title=title
    )
    await store.save_thread(thread, context)
    return thread


async def all_pages(store: SqlStore, thread_id: str, order: str, limit: int, context: StoreContext) -> list[Page[Any]]:
    pages: list[Page[Any]] = []
    after: str | None = None
    while True:
        page = await store.load_thread_items(thread_id, after=after, limit=limit, order=order, context=context)
        pages.append(page)
        if not page.has_more:
            return pages
        after = page.after


async def item_rows(sessions: async_sessionmaker[AsyncSession], thread_id: str) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(ThreadItemRow).where(ThreadItemRow.thread_id == thread_id)
        return (await session.execute(query)).scalar_one()


# -- ids --------------------------------------------------------------------------------------------------------------


def test_id_prefixes_are_chatkits() -> None:
    assert ID_PREFIXES == CHATKIT_ID_PREFIXES


def test_generated_ids_are_unique_ulids_with_80_random_bits() -> None:
    store: SqlStore[StoreContext] = SqlStore(async_sessionmaker())
    context = new_context()
    thread = ThreadMetadata(id="thr_x", created_at=datetime.now(UTC))
    ids = [store.generate_thread_id(context) for _ in range(10_000)]
    ids += [store.generate_item_id(kind, thread, context) for kind in ID_PREFIXES for _ in range(1_000)]
    assert len(set(ids)) == len(ids)

    randomness: list[int] = []
    for generated in ids:
        prefix, _, suffix = generated.partition("_")
        assert prefix in ID_PREFIXES.values()
        assert len(suffix) == 26
        randomness.append(int.from_bytes(ULID.from_str(suffix.upper()).bytes[6:]))
    # Every one of the 80 random bits takes both values somewhere: fewer random bits would leave some fixed.
    all_ones = (1 << 80) - 1
    ored, anded = 0, all_ones
    for bits in randomness:
        ored |= bits
        anded &= bits
    assert ored == all_ones
    assert anded == 0
    assert store.generate_thread_id(context).startswith("thr_")
    assert store.generate_item_id("sdk_hidden_context", thread, context).startswith("shcx_")


# -- threads ----------------------------------------------------------------------------------------------------------


async def test_a_saved_thread_loads_back(store: SqlStore) -> None:
    context = new_context()
    thread = ThreadMetadata(
        id=store.generate_thread_id(context),
        created_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        title="Groceries",
        metadata={"agent": "task", "nested": {"n": 1}},
    )
    await store.save_thread(thread, context)

    loaded = await store.load_thread(thread.id, context)
    assert type(loaded) is ThreadMetadata
    assert loaded == thread
    assert loaded.created_at.utcoffset() == timedelta(0)


async def test_save_thread_is_an_upsert_that_strips_items_and_keeps_the_first_created_at(store: SqlStore) -> None:
    context = new_context()
    first = datetime(2024, 1, 1, tzinfo=UTC)
    thread = await new_thread(store, context, created_at=first, title="one")
    full = Thread(
        **thread.model_dump(),
        items=Page(data=[user_message(thread.id, "not stored with the thread")]),
    )
    full.title = "two"
    full.created_at = first + timedelta(days=3)
    await store.save_thread(full, context)

    loaded = await store.load_thread(thread.id, context)
    assert type(loaded) is ThreadMetadata
    assert loaded.title == "two"
    assert loaded.created_at == first
    assert (await store.load_thread_items(thread.id, None, 10, "asc", context)).data == []
    assert (await store.load_threads(10, None, "asc", context)).data == [loaded]


async def test_a_threads_route_is_set_with_a_turns_items_and_kept_by_later_saves(store: SqlStore) -> None:
    """The worker that answered writes the route; a gateway that read the thread before and saves it after (a title,
    a rename) keeps it, and the rest of what the gateway saved stays too."""
    context = new_context()
    thread = await new_thread(store, context, title="one")
    read_before = await store.load_thread(thread.id, context)
    assert thread_route(read_before) is None

    reply = assistant_message(thread.id, "Added.")
    await store.add_thread_items_with(thread.id, [reply], context, route="task")
    assert thread_route(await store.load_thread(thread.id, context)) == "task"

    read_before.title = "two"
    await store.save_thread(read_before, context)
    loaded = await store.load_thread(thread.id, context)
    assert (loaded.title, thread_route(loaded)) == ("two", "task")

    await store.add_thread_items_with(thread.id, [], context, route="research")
    loaded.title = "three"
    loaded.metadata["other"] = 1
    await store.save_thread(loaded, context)
    final = await store.load_thread(thread.id, context)
    assert (final.title, thread_route(final), final.metadata["other"]) == ("three", "research", 1)


async def test_load_thread_of_an_unknown_id_raises(store: SqlStore) -> None:
    with pytest.raises(NotFoundError):
        await store.load_thread(new_id("thr"), new_context())


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_load_threads_pages_through_the_callers_threads(store: SqlStore, order: str) -> None:
    context = new_context()
    base = datetime(2024, 3, 1, tzinfo=UTC)
    # Two threads share a created_at: the id breaks the tie, so no thread is skipped or repeated across pages.
    stamps = [base, base + timedelta(minutes=1), base + timedelta(minutes=1), base + timedelta(minutes=2), base]
    threads = [await new_thread(store, context, created_at=stamp) for stamp in stamps]
    await new_thread(store, new_context(context.identity.team_id))  # a teammate's: never listed

    expected = [t.id for t in sorted(threads, key=lambda t: (t.created_at, t.id), reverse=order == "desc")]
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await store.load_threads(limit=2, after=after, order=order, context=context)
        pages += 1
        assert len(page.data) == (2 if pages < 3 else 1)
        # The next page's cursor; the last page has none (as the SDK's own store).
        assert page.after == (page.data[-1].id if pages < 3 else None)
        seen += [t.id for t in page.data]
        if not page.has_more:
            break
        after = page.after
    assert pages == 3
    assert seen == expected

    everything = await store.load_threads(limit=5, after=None, order=order, context=context)
    assert [t.id for t in everything.data] == expected
    assert everything.has_more is False
    empty = await store.load_threads(limit=5, after=None, order=order, context=new_context())
    assert empty == Page(data=[], has_more=False, after=None)


async def test_load_threads_after_an_unknown_or_foreign_thread_raises(store: SqlStore) -> None:
    context, other = new_context(), new_context()
    await new_thread(store, context)
    foreign = await new_thread(store, other)
    for cursor in (new_id("thr"), foreign.id):
        with pytest.raises(NotFoundError):
            await store.load_threads(limit=10, after=cursor, order="desc", context=context)


async def test_a_thread_is_invisible_to_everyone_but_its_owner(store: SqlStore) -> None:
    owner = new_context()
    thread = await new_thread(store, owner, title="mine")
    item = user_message(thread.id, "private")
    await store.add_thread_item(thread.id, item, owner)

    teammate = new_context(owner.identity.team_id)
    # The same user id in another team is another person.
    namesake = StoreContext(identity=new_identity().model_copy(update={"user_id": owner.identity.user_id}))
    for intruder in (teammate, namesake):
        assert (await store.load_threads(10, None, "desc", intruder)).data == []
        attempts = [
            store.load_thread(thread.id, intruder),
            store.save_thread(thread.model_copy(update={"title": "stolen"}), intruder),
            store.load_thread_items(thread.id, None, 10, "asc", intruder),
            store.load_item(thread.id, item.id, intruder),
            store.load_widget_sender(thread.id, item.id, intruder),
            store.add_thread_item(thread.id, user_message(thread.id, "injected"), intruder),
            store.save_item(thread.id, item.model_copy(update={"content": []}), intruder),
            store.delete_thread_item(thread.id, item.id, intruder),
            store.delete_thread(thread.id, intruder),
        ]
        for attempt in attempts:
            with pytest.raises(NotFoundError):
                await attempt

    assert (await store.load_thread(thread.id, owner)).title == "mine"
    assert (await store.load_thread_items(thread.id, None, 10, "asc", owner)).data == [
        item.model_copy(update={"created_at": item.created_at.astimezone(UTC)})
    ]


async def test_delete_thread_deletes_its_items(store: SqlStore, db_sessions: async_sessionmaker[AsyncSession]) -> None:
    context = new_context()
    doomed, kept = await new_thread(store, context), await new_thread(store, context)
    for n in range(3):
        await store.add_thread_item(doomed.id, user_message(doomed.id, f"m{n}"), context)
    await store.add_thread_item(kept.id, user_message(kept.id, "stays"), context)

    await store.delete_thread(doomed.id, context)

    assert await item_rows(db_sessions, doomed.id) == 0
    assert await item_rows(db_sessions, kept.id) == 1
    with pytest.raises(NotFoundError):
        await store.load_thread(doomed.id, context)
    with pytest.raises(NotFoundError):
        await store.delete_thread(doomed.id, context)
    assert [t.id for t in (await store.load_threads(10, None, "asc", context)).data] == [kept.id]


# -- items ------------------------------------------------------------------------------------------------------------


async def test_add_thread_item_refuses_an_id_already_used_and_keeps_what_was_saved(store: SqlStore) -> None:
    """ChatKitServer adds every item a `respond` reports done: one that reports an item again (the SDK's own test
    re-sends a structured input still pending after its answer was saved) must not replace the saved item."""
    context = new_context()
    thread, other = await new_thread(store, context), await new_thread(store, context)
    answered = assistant_message(thread.id, "answered")
    await store.add_thread_item(thread.id, answered, context)

    for thread_id in (thread.id, other.id):
        with pytest.raises(ItemIdConflictError):
            await store.add_thread_item(
                thread_id, assistant_message(thread_id, "pending", item_id=answered.id), context
            )

    assert text_of(await store.load_item(thread.id, answered.id, context)) == "answered"
    assert [i.id for i in (await store.load_thread_items(thread.id, None, 10, "asc", context)).data] == [answered.id]
    assert (await store.load_thread_items(other.id, None, 10, "asc", context)).data == []
    # Replacing an item on purpose is save_item.
    await store.save_item(thread.id, assistant_message(thread.id, "edited", item_id=answered.id), context)
    assert text_of(await store.load_item(thread.id, answered.id, context)) == "edited"


async def test_add_thread_items_with_is_an_upsert_that_keeps_the_items_place(store: SqlStore) -> None:
    """kitrelay's own writer: the gateway and the worker both save the user's message, whichever comes first, and a
    redelivered turn saves its items again."""
    context = new_context()
    thread = await new_thread(store, context)
    a, b, c = (user_message(thread.id, name) for name in ("a", "b", "c"))
    for item in (a, b, c):
        await store.add_thread_item(thread.id, item, context)

    # A redelivered turn saves `a` again, changed, and the item after it.
    await store.add_thread_items_with(
        thread.id,
        [user_message(thread.id, "a, again", item_id=a.id), user_message(thread.id, "b", item_id=b.id)],
        context,
    )

    page = await store.load_thread_items(thread.id, None, 10, "asc", context)
    assert [i.id for i in page.data] == [a.id, b.id, c.id]
    assert [text_of(i) for i in page.data] == ["a, again", "b", "c"]


async def test_items_added_in_a_tight_loop_keep_insertion_order(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    same_instant = datetime.now()
    # Ids that sort backwards, and one shared created_at: only insertion order can explain the result.
    ids = [f"msg_{999 - n:03d}_{thread.id}" for n in range(200)]
    for item_id in ids:
        await store.add_thread_item(
            thread.id, user_message(thread.id, item_id, item_id=item_id, created_at=same_instant), context
        )

    ascending = await store.load_thread_items(thread.id, None, 500, "asc", context)
    descending = await store.load_thread_items(thread.id, None, 500, "desc", context)
    assert [i.id for i in ascending.data] == ids
    assert [i.id for i in descending.data] == ids[::-1]
    assert ascending.has_more is False


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_load_thread_items_pages_with_an_item_cursor(store: SqlStore, order: str) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    items = [user_message(thread.id, str(n)) for n in range(7)]
    for item in items:
        await store.add_thread_item(thread.id, item, context)
    expected = [i.id for i in (items if order == "asc" else items[::-1])]

    pages = await all_pages(store, thread.id, order, 3, context)
    assert [[i.id for i in p.data] for p in pages] == [expected[0:3], expected[3:6], expected[6:7]]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [p.after for p in pages] == [expected[2], expected[5], None]

    # `after` means strictly after that item, in the requested order.
    middle = await store.load_thread_items(thread.id, expected[3], 10, order, context)
    assert [i.id for i in middle.data] == expected[4:]
    last = await store.load_thread_items(thread.id, expected[-1], 10, order, context)
    assert last == Page(data=[], has_more=False, after=None)
    exact = await store.load_thread_items(thread.id, None, 7, order, context)
    assert exact.has_more is False
    assert len(exact.data) == 7


async def test_load_thread_items_after_an_unknown_or_foreign_item_raises(store: SqlStore) -> None:
    context = new_context()
    thread, other = await new_thread(store, context), await new_thread(store, context)
    elsewhere = user_message(other.id, "in the other thread")
    await store.add_thread_item(other.id, elsewhere, context)
    for cursor in (new_id("msg"), elsewhere.id):
        with pytest.raises(NotFoundError):
            await store.load_thread_items(thread.id, cursor, 10, "asc", context)


async def test_load_thread_items_rejects_an_unknown_order(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    with pytest.raises(ValueError, match="order"):
        await store.load_thread_items(thread.id, None, 10, "sideways", context)
    with pytest.raises(ValueError, match="order"):
        await store.load_threads(10, None, "newest", context)


async def test_items_round_trip_with_everything_they_carry(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    attachment = FileAttachment(id=new_id("atc"), name="a.txt", mime_type="text/plain", metadata={"k": "v"})
    message = user_message(thread.id, "see attached").model_copy(update={"attachments": [attachment]})
    hidden = HiddenContextItem(
        id=new_id("msg"), thread_id=thread.id, created_at=datetime.now(UTC), content={"tool": "x", "args": [1, 2]}
    )
    for item in (message, hidden):
        await store.add_thread_item(thread.id, item, context)

    loaded_message = await store.load_item(thread.id, message.id, context)
    assert isinstance(loaded_message, UserMessageItem)
    assert loaded_message.attachments == [attachment]
    assert loaded_message.attachments[0].metadata == {"k": "v"}
    assert await store.load_item(thread.id, hidden.id, context) == hidden


async def test_load_item_only_finds_items_of_that_thread(store: SqlStore) -> None:
    context = new_context()
    thread, other = await new_thread(store, context), await new_thread(store, context)
    item = assistant_message(thread.id, "hello")
    await store.add_thread_item(thread.id, item, context)

    assert text_of(await store.load_item(thread.id, item.id, context)) == "hello"
    assert await store.load_widget_sender(thread.id, item.id, context) is None  # not a widget
    for thread_id, item_id in ((other.id, item.id), (thread.id, new_id("msg"))):
        with pytest.raises(NotFoundError):
            await store.load_item(thread_id, item_id, context)
        with pytest.raises(NotFoundError):
            await store.load_widget_sender(thread_id, item_id, context)


async def test_a_widget_actions_sender_is_read_as_stored_and_redrawn_in_place(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    stored = task_widget_item(thread.id, "buy milk", "call mum")
    await store.add_thread_item(thread.id, stored, context)

    sender = await store.load_widget_sender(thread.id, stored.id, context)
    assert isinstance(sender, WidgetItem)
    assert (sender.id, sender.thread_id, sender.created_at, sender.copy_text) == (
        stored.id,
        thread.id,
        stored.created_at,
        stored.copy_text,
    )
    # The widget is the stored JSON, not validated into components: the handler replaces it.
    assert sender.widget == json.loads(stored.model_dump_json())["widget"]

    # What a task action does with it: the same item, a new widget, saved and read back whole.
    redrawn = sender.model_copy(update={"widget": task_widget_item(thread.id, "buy milk").widget, "copy_text": "x"})
    await store.save_item(thread.id, redrawn, context)
    loaded = await store.load_item(thread.id, stored.id, context)
    assert isinstance(loaded, WidgetItem)
    assert loaded.model_dump() == redrawn.model_dump()
    assert len((await store.load_thread_items(thread.id, None, 10, "asc", context)).data) == 1


async def test_items_of_a_thread_another_process_deleted_are_refused(
    store: SqlStore, db_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # This store remembers the thread's owner after its first write; another process (another store) deletes it.
    context = new_context()
    thread = await new_thread(store, context)
    await store.add_thread_item(thread.id, assistant_message(thread.id, "first"), context)
    other_process: SqlStore[StoreContext] = SqlStore(db_sessions)
    await other_process.delete_thread(thread.id, context)

    with pytest.raises(NotFoundError):
        await store.add_thread_item(thread.id, assistant_message(thread.id, "too late"), context)
    with pytest.raises(NotFoundError):
        await store.load_thread_items(thread.id, None, 10, "asc", context)
    # A thread's owner is remembered per identity: someone else is still checked.
    mine = await new_thread(store, context)
    await store.add_thread_item(mine.id, assistant_message(mine.id, "mine"), context)
    with pytest.raises(NotFoundError):
        await store.add_thread_item(
            mine.id, assistant_message(mine.id, "theirs"), new_context(context.identity.team_id)
        )


async def test_save_item_replaces_in_place_or_appends(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    first, second = assistant_message(thread.id, "draft"), assistant_message(thread.id, "second")
    await store.add_thread_item(thread.id, first, context)
    await store.add_thread_item(thread.id, second, context)

    await store.save_item(thread.id, assistant_message(thread.id, "final", item_id=first.id), context)
    new = assistant_message(thread.id, "new")
    await store.save_item(thread.id, new, context)

    page = await store.load_thread_items(thread.id, None, 10, "asc", context)
    assert [(i.id, text_of(i)) for i in page.data] == [(first.id, "final"), (second.id, "second"), (new.id, "new")]


async def test_an_item_id_used_by_another_thread_is_never_overwritten(store: SqlStore) -> None:
    context, stranger = new_context(), new_context()
    theirs = await new_thread(store, stranger)
    taken = assistant_message(theirs.id, "theirs")
    await store.add_thread_item(theirs.id, taken, stranger)
    mine = await new_thread(store, context)

    for write in (store.add_thread_item, store.save_item):
        with pytest.raises(ItemIdConflictError):
            await write(mine.id, assistant_message(mine.id, "mine", item_id=taken.id), context)

    assert text_of(await store.load_item(theirs.id, taken.id, stranger)) == "theirs"
    assert (await store.load_thread_items(mine.id, None, 10, "asc", context)).data == []


async def test_delete_thread_item(store: SqlStore) -> None:
    context = new_context()
    thread, other = await new_thread(store, context), await new_thread(store, context)
    items = [user_message(thread.id, str(n)) for n in range(3)]
    for item in items:
        await store.add_thread_item(thread.id, item, context)
    neighbour = user_message(other.id, "other thread")
    await store.add_thread_item(other.id, neighbour, context)

    await store.delete_thread_item(thread.id, items[1].id, context)
    # Again: a redelivered turn repeats its removals. And through the wrong thread, which must not delete it.
    await store.delete_thread_item(thread.id, items[1].id, context)
    await store.delete_thread_item(thread.id, neighbour.id, context)

    page = await store.load_thread_items(thread.id, None, 10, "asc", context)
    assert [i.id for i in page.data] == [items[0].id, items[2].id]
    with pytest.raises(NotFoundError):
        await store.load_item(thread.id, items[1].id, context)
    assert (await store.load_item(other.id, neighbour.id, context)).id == neighbour.id


async def test_adding_to_a_deleted_thread_raises(store: SqlStore) -> None:
    context = new_context()
    thread = await new_thread(store, context)
    await store.delete_thread(thread.id, context)
    with pytest.raises(NotFoundError):
        await store.add_thread_item(thread.id, user_message(thread.id, "late"), context)


# -- timestamps -------------------------------------------------------------------------------------------------------


@pytest.fixture
def local_time_is_utc_plus_5_30(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is UTC+05:30 (a POSIX TZ string: no tz database needed)."""
    monkeypatch.setenv("TZ", "XST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_is_utc_plus_5_30")
async def test_timestamps_come_back_utc_aware(store: SqlStore) -> None:
    context = new_context()
    naive_local = datetime(2024, 1, 1, 12, 0)  # chatkit's datetime.now(): 06:30 UTC here
    in_utc = datetime(2024, 1, 1, 6, 30, tzinfo=UTC)

    thread = await new_thread(store, context, created_at=naive_local)
    item = user_message(thread.id, "hi", created_at=naive_local)
    await store.add_thread_item(thread.id, item, context)

    loaded_thread = await store.load_thread(thread.id, context)
    loaded_item = await store.load_item(thread.id, item.id, context)
    listed = (await store.load_thread_items(thread.id, None, 10, "asc", context)).data[0]
    for value in (loaded_thread.created_at, loaded_item.created_at, listed.created_at):
        assert value == in_utc
        assert value.utcoffset() == timedelta(0)

    # Threads sort by instant, not by the wall-clock time they were written with.
    east = await new_thread(store, context, created_at=datetime(2024, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=8))))
    west = await new_thread(store, context, created_at=datetime(2024, 1, 1, 5, 0, tzinfo=timezone(timedelta(hours=-2))))
    listed_threads = (await store.load_threads(10, None, "asc", context)).data
    assert [t.id for t in listed_threads] == [east.id, thread.id, west.id]  # 05:00Z, 06:30Z, 07:00Z
    assert [t.created_at.utcoffset() for t in listed_threads] == [timedelta(0)] * 3


async def test_timestamp_columns_store_the_instant_whatever_the_offset(
    db_sessions: async_sessionmaker[AsyncSession],
) -> None:
    """UTCDateTime itself, for code that writes rows without going through the store's own normalisation."""
    eastern = datetime(2024, 6, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    row = AttachmentRow(id=new_id("atc"), team_id="t", user_id="u", thread_id=None, created_at=eastern, data="{}")
    async with db_sessions() as session, session.begin():
        session.add(row)
    async with db_sessions() as session:
        stored = (
            await session.execute(select(AttachmentRow.created_at).where(AttachmentRow.id == row.id))
        ).scalar_one()
        earlier = (
            select(func.count())
            .select_from(AttachmentRow)
            .where(AttachmentRow.id == row.id, AttachmentRow.created_at < datetime(2024, 6, 1, 8, 30, tzinfo=UTC))
        )
        assert (await session.execute(earlier)).scalar_one() == 1
    assert stored == datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
    assert stored.tzinfo is UTC


# -- attachments ------------------------------------------------------------------------------------------------------


async def test_attachments_round_trip_within_the_team_only(store: SqlStore) -> None:
    uploader = new_context()
    teammate = new_context(uploader.identity.team_id)
    outsider = new_context()
    file = FileAttachment(id=new_id("atc"), name="notes.txt", mime_type="text/plain", metadata={"bucket": "b1"})
    image = ImageAttachment(
        id=new_id("atc"), name="cat.png", mime_type="image/png", preview_url="https://example.com/cat.png"
    )
    for attachment in (file, image):
        await store.save_attachment(attachment, uploader)

    loaded: list[Attachment] = [await store.load_attachment(a.id, teammate) for a in (file, image)]
    assert loaded == [file, image]
    assert isinstance(loaded[1], ImageAttachment)

    for attempt in (
        store.load_attachment(file.id, outsider),
        store.save_attachment(file.model_copy(update={"name": "hijacked.txt"}), outsider),
    ):
        with pytest.raises(NotFoundError):
            await attempt
    # Another team's delete does nothing, as it does for an attachment that does not exist.
    await store.delete_attachment(file.id, outsider)
    assert await store.load_attachment(file.id, uploader) == file

    # Saved again once its message lands in a thread.
    in_thread = file.model_copy(update={"thread_id": new_id("thr")})
    await store.save_attachment(in_thread, uploader)
    assert await store.load_attachment(file.id, uploader) == in_thread

    await store.delete_attachment(file.id, teammate)
    with pytest.raises(NotFoundError):
        await store.load_attachment(file.id, uploader)
    assert await store.load_attachment(image.id, uploader) == image


async def test_deleting_an_attachment_again_or_one_never_saved_does_nothing(store: SqlStore) -> None:
    """ChatKitServer deletes the bytes, then the metadata: a retried `attachments.delete` must get past the
    metadata that the first attempt already deleted (or that was never saved)."""
    context = new_context()
    file = FileAttachment(id=new_id("atc"), name="notes.txt", mime_type="text/plain")
    await store.save_attachment(file, context)

    await store.delete_attachment(file.id, context)
    await store.delete_attachment(file.id, context)
    await store.delete_attachment(new_id("atc"), context)

    with pytest.raises(NotFoundError):
        await store.load_attachment(file.id, context)


# -- concurrency ------------------------------------------------------------------------------------------------------


async def test_two_processes_worth_of_engines_write_one_thread_at_once(migrated_db_url: str) -> None:
    """A gateway and a worker each have their own engine (and pool) on the same database."""
    engines = [make_engine(migrated_db_url) for _ in range(2)]
    try:
        stores: list[SqlStore[StoreContext]] = [SqlStore(make_sessionmaker(engine)) for engine in engines]
        context = new_context()
        thread = await new_thread(stores[0], context)

        async def writer(store: SqlStore, name: str) -> list[str]:
            ids = [f"msg_{name}_{n:02d}_{thread.id}" for n in range(40)]
            for item_id in ids:
                await store.add_thread_item(thread.id, user_message(thread.id, item_id, item_id=item_id), context)
            return ids

        async def reader(store: SqlStore) -> None:
            for _ in range(40):
                await store.load_thread_items(thread.id, None, 20, "desc", context)

        written = await asyncio.gather(
            writer(stores[0], "a"), writer(stores[1], "b"), writer(stores[1], "c"), reader(stores[0])
        )

        stored = [i.id for i in (await stores[0].load_thread_items(thread.id, None, 500, "asc", context)).data]
        assert sorted(stored) == sorted(written[0] + written[1] + written[2])
        for ids in written[:3]:
            assert [i for i in stored if i in set(ids)] == ids
    finally:
        for engine in engines:
            await engine.dispose()


# -- engine -----------------------------------------------------------------------------------------------------------


async def test_sqlite_connections_are_set_up_for_several_processes(sqlite_database_url: str) -> None:
    engine = make_engine(sqlite_database_url)
    try:
        async with engine.connect() as connection:
            pragmas = {
                name: (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
    finally:
        await engine.dispose()
    assert pragmas == {"journal_mode": "wal", "busy_timeout": SQLITE_BUSY_TIMEOUT_MS, "foreign_keys": 1}


# -- with the SDK -----------------------------------------------------------------------------------------------------


class EchoServer(ChatKitServer[HasIdentity]):
    """Answers every user message with its text, so the SDK drives the store the way it does in production."""

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: HasIdentity
    ) -> AsyncIterator[ThreadStreamEvent]:
        assert input_user_message is not None
        yield ThreadItemDoneEvent(
            item=AssistantMessageItem(
                id=self.store.generate_item_id("message", thread, context),
                thread_id=thread.id,
                created_at=datetime.now(),
                content=[AssistantMessageContent(text=f"echo: {text_of(input_user_message)}")],
            )
        )


async def call(server: EchoServer, context: StoreContext, request: dict[str, Any]) -> Any:
    result = await server.process(json.dumps(request).encode(), context)
    if isinstance(result, StreamingResult):
        return [json.loads(frame.removeprefix(b"data: ")) async for frame in result]
    assert isinstance(result, NonStreamingResult)
    return json.loads(result.json)


def user_input(text_: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text_}], "attachments": [], "inference_options": {}}


async def test_chatkit_server_runs_on_the_store(store: SqlStore) -> None:
    server = EchoServer(store)
    context = new_context()

    events = await call(server, context, {"type": "threads.create", "params": {"input": user_input("one")}})
    thread_id = events[0]["thread"]["id"]
    assert thread_id.startswith("thr_")
    await call(
        server,
        context,
        {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": user_input("two")}},
    )

    listed = await call(server, context, {"type": "threads.list", "params": {"limit": 10}})
    assert [t["id"] for t in listed["data"]] == [thread_id]
    items = await call(server, context, {"type": "items.list", "params": {"thread_id": thread_id, "order": "asc"}})
    assert [(i["type"], text_of(await store.load_item(thread_id, i["id"], context))) for i in items["data"]] == [
        ("user_message", "one"),
        ("assistant_message", "echo: one"),
        ("user_message", "two"),
        ("assistant_message", "echo: two"),
    ]
    newest = await call(server, context, {"type": "items.list", "params": {"thread_id": thread_id, "limit": 1}})
    assert newest["has_more"] is True
    assert newest["data"][0]["id"] == items["data"][-1]["id"]

    # Retry deletes what came after the user message and answers again.
    retried = items["data"][2]["id"]
    await call(
        server, context, {"type": "threads.retry_after_item", "params": {"thread_id": thread_id, "item_id": retried}}
    )
    after_retry = await store.load_thread_items(thread_id, None, 10, "asc", context)
    assert [i.id for i in after_retry.data][:3] == [i["id"] for i in items["data"][:3]]
    assert len(after_retry.data) == 4
    assert after_retry.data[3].id != items["data"][3]["id"]

    await call(server, context, {"type": "threads.update", "params": {"thread_id": thread_id, "title": "Renamed"}})
    full = await call(server, context, {"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    assert full["title"] == "Renamed"
    assert len(full["items"]["data"]) == 4

    with pytest.raises(NotFoundError):
        await call(server, new_context(), {"type": "threads.get_by_id", "params": {"thread_id": thread_id}})
    await call(server, context, {"type": "threads.delete", "params": {"thread_id": thread_id}})
    with pytest.raises(NotFoundError):
        await store.load_thread(thread_id, context)
