"""ChatKit's `Store`, kept in SQL (SQLite or PostgreSQL) and scoped to whoever is calling.

A thread belongs to one user of one team; its items are reachable only through it. Asking for another user's
thread raises the same `NotFoundError` as asking for one that does not exist, so ids never reveal anything.
"""

from __future__ import annotations

import functools
import json
import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from chatkit.store import NotFoundError, Store, StoreItemType
from chatkit.types import Attachment, Page, ThreadItem, ThreadMetadata, UserMessageItem, WidgetItem
from pydantic import TypeAdapter
from sqlalchemy import (
    ColumnElement,
    Executable,
    Row,
    Select,
    and_,
    asc,
    bindparam,
    delete,
    desc,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.expression import ColumnCollection

from kitrelay.shared.context import HasIdentity
from kitrelay.shared.ids import new_id
from kitrelay.shared.settings import AGENT_KINDS, AgentKind
from kitrelay.shared.store.engine import read_connection, read_session
from kitrelay.shared.store.models import AttachmentRow, ThreadItemRow, ThreadRow, TurnRunRow, as_utc

# chatkit's own prefixes (its `_ID_PREFIXES` is private); tests check they still match.
ID_PREFIXES: dict[StoreItemType, str] = {
    "thread": "thr",
    "message": "msg",
    "tool_call": "tc",
    "workflow": "wf",
    "task": "tsk",
    "attachment": "atc",
    "sdk_hidden_context": "shcx",
}

# A page never holds more than this, whatever a client asks for; `has_more` tells it to fetch the rest.
MAX_PAGE_SIZE = 1000
# Threads whose owner a store remembers (see SqlStore._owners).
OWNER_MEMO_SIZE = 10_000

# Whatever context type a caller uses, the store only reads its identity.
C = TypeVar("C", bound=HasIdentity)
# What a page holds: threads or items.
P = TypeVar("P", ThreadMetadata, ThreadItem)

_items: TypeAdapter[ThreadItem] = TypeAdapter(ThreadItem)
_attachments: TypeAdapter[Attachment] = TypeAdapter(Attachment)


# Set while `add_thread_item` writes through `add_thread_items_with`: that write adds, and never replaces, an item.
# A context variable, so that a concurrent upsert of another task is not affected.
_ADDING_ONLY: ContextVar[bool] = ContextVar("kitrelay_store_adding_only", default=False)

# A statement and its parameters, for a write that joins another's transaction (`SqlStore.add_thread_item_with`).
Statement = tuple[Executable, Mapping[str, Any]]

# A thread's route: the agent kind that answered its last message, where its next message goes (sticky routing).
# It lives in the thread's metadata, which ChatKit keeps on the server (never sent to a client, never set by one):
# the worker that answered writes it with the turn's end, every gateway replica reads it with the thread.
ROUTE_KEY = "kitrelay_route"


def thread_route(thread: ThreadMetadata) -> AgentKind | None:
    """The kind that answered the thread's last message (None: a new thread, or one no agent has answered yet)."""
    route = thread.metadata.get(ROUTE_KEY)
    return next((kind for kind in AGENT_KINDS if kind == route), None)


class ItemIdConflictError(Exception):
    """An item id that is already taken (item ids are unique store-wide): by any item, for `add_thread_item`; by an
    item of another thread, for the writes that replace an item in place."""


@dataclass(frozen=True)
class WorkerRun:
    """One worker's run of a turn: the turn's hop (handoffs before it) and the run's delivery attempt. The items
    a run saves carry it, so that a later attempt of the same hop can remove them (`SqlStore.supersede_run`)."""

    turn_id: str
    hop: int
    attempt: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.hop, self.attempt)


class RunSupersededError(Exception):
    """A newer run of the turn took over from this one (it was redelivered while this run was still alive):
    this run may not save anything any more."""


class SqlStore(Store[C]):
    """ChatKit threads, items and attachment metadata in the kitrelay database.

    Every method opens its own short transaction and closes it before returning.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # Threads this process has seen belong to a caller, so that writing a turn's items does not read the
        # thread again before each one. A thread never changes owner, and a deleted thread's items cannot be
        # written (its foreign key), so the memo needs no expiry; it is only bounded.
        self._owners: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def _owner_key(self, thread_id: str, context: C) -> tuple[str, str, str]:
        return (context.identity.team_id, context.identity.user_id, thread_id)

    def _remember_owner(self, thread_id: str, context: C) -> None:
        key = self._owner_key(thread_id, context)
        self._owners[key] = None
        self._owners.move_to_end(key)
        if len(self._owners) > OWNER_MEMO_SIZE:
            self._owners.popitem(last=False)

    async def _require_owned(self, session: AsyncSession, thread_id: str, context: C) -> None:
        if self._owner_key(thread_id, context) not in self._owners:
            await _require_thread(session, thread_id, context)
            self._remember_owner(thread_id, context)

    # -- ids ------------------------------------------------------------------------------------------------------

    def generate_thread_id(self, context: C) -> str:
        # chatkit's default has 32 random bits; a ULID has 80.
        return new_id(ID_PREFIXES["thread"])

    def generate_item_id(self, item_type: StoreItemType, thread: ThreadMetadata, context: C) -> str:
        return new_id(ID_PREFIXES[item_type])

    # -- threads --------------------------------------------------------------------------------------------------

    async def load_thread(self, thread_id: str, context: C) -> ThreadMetadata:
        async with read_connection(self._sessions) as connection:
            thread = await _own_thread(connection, thread_id, context)
        self._remember_owner(thread_id, context)
        return thread

    async def save_thread(self, thread: ThreadMetadata, context: C) -> None:
        identity = context.identity
        metadata = thread_metadata(thread)
        metadata.created_at = as_utc(metadata.created_at)
        values = {
            "id": metadata.id,
            "team_id": identity.team_id,
            "user_id": identity.user_id,
            "created_at": metadata.created_at,
            "updated_at": datetime.now(UTC),
        }
        async with self._sessions() as session, session.begin():
            # The route is the workers' to write (`add_thread_items_with`): a thread read before a turn ended and
            # saved after it (a title, a rename) keeps the route that turn wrote.
            stored = (await session.execute(_THREAD_DATA, {"thread_id": metadata.id})).scalar_one_or_none()
            route = _route_in(stored) if stored is not None else None
            if route is not None and metadata.metadata.get(ROUTE_KEY) != route:
                metadata.metadata = {**metadata.metadata, ROUTE_KEY: route}
            values["data"] = metadata.model_dump_json()
            # created_at is left out of the update: a thread keeps the time of its first save.
            stmt = _upsert(session, ThreadRow, update=("updated_at", "data"), only_if=_same_owner)
            saved = (await session.execute(stmt, values)).first()
        if saved is None:
            raise NotFoundError(f"Thread {metadata.id} not found")

    async def load_threads(self, limit: int, after: str | None, order: str, context: C) -> Page[ThreadMetadata]:
        descending = _is_descending(order)
        async with read_session(self._sessions) as session:
            query = _owned_threads(context)
            if after is not None:
                cursor_row = select(ThreadRow.created_at, ThreadRow.id).where(ThreadRow.id == after, _owned_by(context))
                cursor = (await session.execute(cursor_row)).first()
                if cursor is None:
                    raise NotFoundError(f"Thread {after} not found")
                created_at, cursor_id = cursor
                beyond = operator.lt if descending else operator.gt
                # The id breaks created_at ties, so a page boundary never skips or repeats a thread.
                query = query.where(
                    or_(
                        beyond(ThreadRow.created_at, created_at),
                        and_(ThreadRow.created_at == created_at, beyond(ThreadRow.id, cursor_id)),
                    )
                )
            direction = desc if descending else asc
            query = query.order_by(direction(ThreadRow.created_at), direction(ThreadRow.id))
            size = _page_size(limit)
            rows = list((await session.execute(query.limit(size + 1))).scalars())
        threads = [_thread_from_row(row) for row in rows[:size]]
        return make_page(threads, has_more=len(rows) > size)

    async def delete_thread(self, thread_id: str, context: C) -> None:
        async with self._sessions() as session, session.begin():
            # Items go with the thread: ON DELETE CASCADE.
            stmt = delete(ThreadRow).where(ThreadRow.id == thread_id, _owned_by(context)).returning(ThreadRow.id)
            deleted = (await session.execute(stmt)).first()
        self._owners.pop(self._owner_key(thread_id, context), None)
        if deleted is None:
            raise NotFoundError(f"Thread {thread_id} not found")

    # -- items ----------------------------------------------------------------------------------------------------

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: C
    ) -> Page[ThreadItem]:
        descending = _is_descending(order)
        if after is None:
            # Every turn's read: the ownership check and the page in one statement.
            async with read_connection(self._sessions) as connection:
                _, page = await _own_thread_with_items(connection, thread_id, limit, context, descending=descending)
            return page
        async with read_session(self._sessions) as session:
            await _require_thread(session, thread_id, context)
            return await _items_page_after(session, thread_id, after, limit, descending=descending)

    async def load_thread_with_items(
        self, thread_id: str, limit: int, context: C
    ) -> tuple[ThreadMetadata, Page[ThreadItem]]:
        """The thread and its newest `limit` items (newest first) in one read: what a turn starts from. One
        transaction instead of `load_thread` and `load_thread_items`, whose ownership check reads the thread too."""
        async with read_connection(self._sessions) as connection:
            thread, page = await _own_thread_with_items(connection, thread_id, limit, context, descending=True)
        self._remember_owner(thread_id, context)
        return thread, page

    async def add_thread_item(self, thread_id: str, item: ThreadItem, context: C) -> None:
        """A new item, last in the thread. An id already taken raises ItemIdConflictError and changes nothing, as
        in the SDK's own store: ChatKitServer adds every item a `respond` reports done, and one that reports an
        existing id again (a responder re-sending an item still pending after its answer was saved) must not
        replace what was saved. Replacing an item is `save_item`.

        kitrelay's own writers call `add_thread_items_with`, an upsert, instead: the user's message is saved by
        whichever of the gateway and the worker comes first, and a redelivered turn saves its items again. This
        write goes through it too, marked as adding only, since subclasses watch every item write there
        (services/turn_store.py)."""
        adding = _ADDING_ONLY.set(True)
        try:
            await self.add_thread_items_with(thread_id, [item], context)
        finally:
            _ADDING_ONLY.reset(adding)

    async def save_item(self, thread_id: str, item: ThreadItem, context: C) -> None:
        await self.add_thread_items_with(thread_id, [item], context)

    async def add_thread_item_with(
        self, thread_id: str, item: ThreadItem, context: C, also: Sequence[Statement]
    ) -> None:
        """One item, written as `add_thread_items_with` does (an upsert), with more writes in the same transaction:
        all of them are saved, or none. A write transaction costs more than its statements (SQLite's lock, the
        session, the commit): a turn's last item and the turn's end go in one."""
        await self.add_thread_items_with(thread_id, [item], context, also)

    async def add_thread_items_with(
        self,
        thread_id: str,
        items: Sequence[ThreadItem],
        context: C,
        also: Sequence[Statement] = (),
        *,
        run: WorkerRun | None = None,
        route: AgentKind | None = None,
    ) -> None:
        """Several items, in this order, and more writes, in one transaction. Each is an upsert: an item already
        saved keeps its place in the thread, and its content is replaced. kitrelay's turns write through here (the
        worker's turn log, the gateway's held user message), since their writes repeat: the user's message is saved
        by the gateway or the worker, whichever comes first, and a redelivered turn saves its items again. Every
        item write of the store but `add_thread_item` comes through here.

        A worker's `run` tags the items it saves (never a user's message, which is the user's, whoever saves it)
        and is fenced: RunSupersededError, nothing written, once a newer run of the turn has superseded it.
        `route` becomes the thread's route (`thread_route`), in the same transaction."""
        rows = [_item_row(thread_id, item, None if isinstance(item, UserMessageItem) else run) for item in items]
        adding_only = _ADDING_ONLY.get()
        async with self._sessions() as session, session.begin():
            await self._require_owned(session, thread_id, context)
            if run is not None:
                await _check_run(session, thread_id, run)
            if adding_only:
                stmt = _insert_new(session, ThreadItemRow)
            else:
                # seq and thread_id stay as first written; an id taken in another thread is never overwritten.
                stmt = _upsert(session, ThreadItemRow, update=("type", "created_at", "data"), only_if=_same_thread)
            for values in rows:
                try:
                    saved = (await session.execute(stmt, values)).first()
                except IntegrityError as exc:
                    # The thread was deleted between the check and the write (foreign key violation).
                    raise NotFoundError(f"Thread {thread_id} not found") from exc
                if saved is None:
                    # Raised inside the transaction: the writes that came along are rolled back with it.
                    taken_by = "an item" if adding_only else "an item of another thread"
                    raise ItemIdConflictError(f"Item id {values['id']} is already used by {taken_by}")
            for statement, parameters in also:
                await session.execute(statement, parameters)
            if route is not None:
                await _set_route(session, thread_id, route)

    async def load_item(self, thread_id: str, item_id: str, context: C) -> ThreadItem:
        return _item_from_json((await self._own_item(thread_id, item_id, context, ThreadItemRow.data)).data)

    async def load_widget_sender(self, thread_id: str, item_id: str, context: C) -> WidgetItem | None:
        """The widget item a widget action came from, for a handler that redraws it in place; None when the item
        is not a widget, NotFoundError when the caller cannot see it. Its widget is left as stored, not validated:
        the handler replaces it (or passes on only the item's id), and a team's task list takes milliseconds to
        validate, twice per click in a relayed turn (the gateway's ChatKit server and the worker)."""
        row = await self._own_item(
            thread_id, item_id, context, ThreadItemRow.type, ThreadItemRow.created_at, ThreadItemRow.data
        )
        if row.type != "widget":
            return None
        # Written by this store from a validated WidgetItem: every field but the widget is taken as it is.
        fields = json.loads(row.data)
        fields["created_at"] = row.created_at
        return WidgetItem.model_construct(**fields)

    async def load_widget_items(self, thread_id: str, context: C) -> list[WidgetItem]:
        """Every widget item of one of the caller's threads, oldest first (a change to a task redraws each widget
        that shows it: agents/task_views.py); NotFoundError for a thread they cannot see."""
        async with read_session(self._sessions) as session:
            await _require_thread(session, thread_id, context)
            query = (
                select(ThreadItemRow.data)
                .where(ThreadItemRow.thread_id == thread_id, ThreadItemRow.type == "widget")
                .order_by(ThreadItemRow.seq)
            )
            datas = list((await session.execute(query)).scalars())
        return [item for item in map(_item_from_json, datas) if isinstance(item, WidgetItem)]

    async def _own_item(
        self, thread_id: str, item_id: str, context: C, *columns: InstrumentedAttribute[Any]
    ) -> Row[Any]:
        """Columns of one of the caller's thread's items; NotFoundError for an item they cannot see."""
        async with read_session(self._sessions) as session:
            query = (
                select(*columns)
                .join(ThreadRow, ThreadRow.id == ThreadItemRow.thread_id)
                .where(ThreadItemRow.id == item_id, ThreadItemRow.thread_id == thread_id, _owned_by(context))
            )
            row = (await session.execute(query)).first()
        if row is None:
            raise NotFoundError(f"Item {item_id} not found")
        return row

    async def delete_thread_item(self, thread_id: str, item_id: str, context: C) -> None:
        async with self._sessions() as session, session.begin():
            await self._require_owned(session, thread_id, context)
            # Deleting an item that is already gone is fine: a redelivered turn repeats its removals.
            await session.execute(
                delete(ThreadItemRow).where(ThreadItemRow.thread_id == thread_id, ThreadItemRow.id == item_id)
            )

    # -- attachments ----------------------------------------------------------------------------------------------

    async def save_attachment(self, attachment: Attachment, context: C) -> None:
        identity = context.identity
        values = {
            "id": attachment.id,
            "team_id": identity.team_id,
            "user_id": identity.user_id,
            "thread_id": attachment.thread_id,
            "created_at": datetime.now(UTC),
            "data": attachment.model_dump_json(),
        }
        async with self._sessions() as session, session.begin():
            # The uploader and the upload time stay as first saved; later saves (e.g. gaining a thread id) only
            # update the metadata, and only from within the owning team.
            stmt = _upsert(session, AttachmentRow, update=("thread_id", "data"), only_if=_same_team)
            saved = (await session.execute(stmt, values)).first()
        if saved is None:
            raise NotFoundError(f"Attachment {attachment.id} not found")

    async def load_attachment(self, attachment_id: str, context: C) -> Attachment:
        async with read_session(self._sessions) as session:
            query = select(AttachmentRow.data).where(
                AttachmentRow.id == attachment_id, AttachmentRow.team_id == context.identity.team_id
            )
            data = (await session.execute(query)).scalar_one_or_none()
        if data is None:
            raise NotFoundError(f"Attachment {attachment_id} not found")
        return _attachments.validate_json(data)

    async def delete_attachment(self, attachment_id: str, context: C) -> None:
        """Delete the metadata of one of the team's attachments. Deleting one that is not there (never saved,
        already deleted, or another team's) does nothing, as in the SDK's own store: ChatKitServer calls this
        after the attachment store has deleted the bytes, and a retried `attachments.delete` must get as far."""
        async with self._sessions() as session, session.begin():
            await session.execute(
                delete(AttachmentRow).where(
                    AttachmentRow.id == attachment_id, AttachmentRow.team_id == context.identity.team_id
                )
            )

    # -- worker runs ----------------------------------------------------------------------------------------------

    async def supersede_run(self, thread_id: str, run: WorkerRun, context: C) -> list[str]:
        """Make `run`, a redelivered attempt, the turn's newest run: what earlier attempts of its hop saved is
        removed (their ids are returned, oldest first), and from now on they cannot save anything (RunSupersededError).
        Run before the new attempt reads the conversation, so that it answers from the thread as it was before the
        turn. Raises RunSupersededError if a newer run already took over, NotFoundError if the thread is gone."""
        async with self._sessions() as session, session.begin():
            await self._require_owned(session, thread_id, context)
            await _check_run(session, thread_id, run)
            earlier = (
                delete(ThreadItemRow)
                .where(
                    ThreadItemRow.turn_id == run.turn_id,
                    ThreadItemRow.turn_hop == run.hop,
                    ThreadItemRow.turn_attempt < run.attempt,
                )
                .returning(ThreadItemRow.seq, ThreadItemRow.id)
            )
            removed = sorted((await session.execute(earlier)).all())
            values = {"turn_id": run.turn_id, "thread_id": thread_id, "hop": run.hop, "attempt": run.attempt}
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            stmt = insert(TurnRunRow).values(values)
            await session.execute(
                stmt.on_conflict_do_update(index_elements=["turn_id"], set_={"hop": run.hop, "attempt": run.attempt})
            )
        return [item_id for _, item_id in removed]


def _item_row(thread_id: str, item: ThreadItem, run: WorkerRun | None = None) -> dict[str, Any]:
    created_at = as_utc(item.created_at)
    data = item.model_copy(update={"created_at": created_at}).model_dump_json()
    return {
        "id": item.id,
        "thread_id": thread_id,
        "type": item.type,
        "created_at": created_at,
        "data": data,
        "turn_id": run.turn_id if run else None,
        "turn_hop": run.hop if run else None,
        "turn_attempt": run.attempt if run else None,
    }


_NEWEST_RUN = select(TurnRunRow.hop, TurnRunRow.attempt).where(TurnRunRow.turn_id == bindparam("turn_id"))


async def _lock_runs_of(session: AsyncSession, thread_id: str) -> None:
    """On PostgreSQL, make the run checks and supersedings of a thread's turns take turns (a row lock on the
    thread that its items' inserts do not wait for); SQLite's transactions all take the one write lock anyway."""
    if session.get_bind().dialect.name == "postgresql":
        lock = select(ThreadRow.id).where(ThreadRow.id == thread_id).with_for_update(key_share=True)
        await session.execute(lock)


async def _check_run(session: AsyncSession, thread_id: str, run: WorkerRun) -> None:
    await _lock_runs_of(session, thread_id)
    newest = (await session.execute(_NEWEST_RUN, {"turn_id": run.turn_id})).first()
    if newest is not None and tuple(newest) > run.order:
        raise RunSupersededError(f"turn {run.turn_id}: run {run.order} was superseded by run {tuple(newest)}")


# Read under the thread's row lock on PostgreSQL (the one item writes take, `_lock_runs_of`); SQLite's write
# transaction holds its one lock already.
_THREAD_DATA = select(ThreadRow.data).where(ThreadRow.id == bindparam("thread_id")).with_for_update(key_share=True)
_SET_THREAD_DATA = update(ThreadRow).where(ThreadRow.id == bindparam("thread_id")).values(data=bindparam("new_data"))


def _route_in(data: str) -> AgentKind | None:
    metadata = json.loads(data).get("metadata")
    route = metadata.get(ROUTE_KEY) if isinstance(metadata, dict) else None
    return next((kind for kind in AGENT_KINDS if kind == route), None)


async def _set_route(session: AsyncSession, thread_id: str, route: AgentKind) -> None:
    """The thread's route, changed in its stored metadata alone (whatever else a gateway saved meanwhile stays)."""
    stored = (await session.execute(_THREAD_DATA, {"thread_id": thread_id})).scalar_one_or_none()
    if stored is None:
        return  # deleted meanwhile: its items' writes refuse the turn anyway
    data = json.loads(stored)
    metadata = data.get("metadata")
    data["metadata"] = {**(metadata if isinstance(metadata, dict) else {}), ROUTE_KEY: route}
    await session.execute(_SET_THREAD_DATA, {"thread_id": thread_id, "new_data": json.dumps(data)})


def _owned_by(context: HasIdentity) -> ColumnElement[bool]:
    """Threads of the calling user. A team id is part of it: the same user id in another team is someone else."""
    identity = context.identity
    return and_(ThreadRow.team_id == identity.team_id, ThreadRow.user_id == identity.user_id)


def _owned_threads(context: HasIdentity) -> Select[ThreadRow]:
    return select(ThreadRow).where(_owned_by(context))


# The reads of every turn, built once (building a statement cost a third of such a read); `_own` fills them in.
_IS_OWN_THREAD = (
    ThreadRow.id == bindparam("thread_id"),
    ThreadRow.team_id == bindparam("team_id"),
    ThreadRow.user_id == bindparam("user_id"),
)
_OWN_THREAD = select(ThreadRow.data, ThreadRow.created_at).where(*_IS_OWN_THREAD)
_OWN_THREAD_ID = select(ThreadRow.id).where(*_IS_OWN_THREAD)


def _own_thread_and_first_items(*, descending: bool) -> Select[tuple[str, datetime, str | None]]:
    """The caller's thread and its first items (from the newest, or the oldest), a row per item: no row at all when
    the thread is not theirs, one row without an item for a thread that has none. Each statement costs more than
    its work in the database (SQLAlchemy's execution, PostgreSQL's round trip), and every turn starts with this
    read."""
    items = (
        select(ThreadItemRow.data, ThreadItemRow.seq)
        .where(ThreadItemRow.thread_id == bindparam("thread_id"))
        .order_by(desc(ThreadItemRow.seq) if descending else asc(ThreadItemRow.seq))
        .limit(bindparam("size"))
        .subquery()
    )
    return (
        select(ThreadRow.data, ThreadRow.created_at, items.c.data.label("item"))
        .outerjoin(items, true())
        .where(*_IS_OWN_THREAD)
        .order_by(desc(items.c.seq) if descending else asc(items.c.seq))
    )


_OWN_THREAD_NEWEST_ITEMS = _own_thread_and_first_items(descending=True)
_OWN_THREAD_OLDEST_ITEMS = _own_thread_and_first_items(descending=False)


def _own(thread_id: str, context: HasIdentity) -> dict[str, str]:
    return {"thread_id": thread_id, "team_id": context.identity.team_id, "user_id": context.identity.user_id}


async def _own_thread(connection: AsyncConnection, thread_id: str, context: HasIdentity) -> ThreadMetadata:
    row = (await connection.execute(_OWN_THREAD, _own(thread_id, context))).first()
    if row is None:
        raise NotFoundError(f"Thread {thread_id} not found")
    return _thread_from_row(row)


async def _own_thread_with_items(
    connection: AsyncConnection, thread_id: str, limit: int, context: HasIdentity, *, descending: bool
) -> tuple[ThreadMetadata, Page[ThreadItem]]:
    """The caller's thread and a page of its items from the newest (or the oldest), in one statement."""
    size = _page_size(limit)
    query = _OWN_THREAD_NEWEST_ITEMS if descending else _OWN_THREAD_OLDEST_ITEMS
    rows = (await connection.execute(query, {**_own(thread_id, context), "size": size + 1})).all()
    if not rows:
        raise NotFoundError(f"Thread {thread_id} not found")
    datas = [row.item for row in rows if row.item is not None]
    items = [_item_from_json(data) for data in datas[:size]]
    return _thread_from_row(rows[0]), make_page(items, has_more=len(datas) > size)


async def _require_thread(session: AsyncSession, thread_id: str, context: HasIdentity) -> None:
    if (await session.execute(_OWN_THREAD_ID, _own(thread_id, context))).first() is None:
        raise NotFoundError(f"Thread {thread_id} not found")


def thread_metadata(thread: ThreadMetadata) -> ThreadMetadata:
    """A thread's metadata alone: `thread` may be a Thread carrying a page of items."""
    return ThreadMetadata.model_validate(thread.model_dump(exclude={"items"}))


async def _items_page_after(
    session: AsyncSession, thread_id: str, after: str, limit: int, *, descending: bool
) -> Page[ThreadItem]:
    """A page of the thread's items after the item `after` (the thread's ownership already checked)."""
    size = _page_size(limit)
    cursor_seq = (
        await session.execute(
            select(ThreadItemRow.seq).where(ThreadItemRow.thread_id == thread_id, ThreadItemRow.id == after)
        )
    ).scalar_one_or_none()
    if cursor_seq is None:
        raise NotFoundError(f"Item {after} not found")
    beyond = ThreadItemRow.seq < cursor_seq if descending else ThreadItemRow.seq > cursor_seq
    order = desc(ThreadItemRow.seq) if descending else asc(ThreadItemRow.seq)
    query = select(ThreadItemRow.data).where(ThreadItemRow.thread_id == thread_id, beyond).order_by(order)
    rows = list((await session.execute(query.limit(size + 1))).scalars())
    items = [_item_from_json(data) for data in rows[:size]]
    return make_page(items, has_more=len(rows) > size)


def make_page(data: list[P], *, has_more: bool) -> Page[P]:
    """A page of a listing: `after`, the cursor of the next page, is the last id shown when there is more, else
    None (as the SDK's own store and its tests have it)."""
    return Page(data=data, has_more=has_more, after=data[-1].id if has_more and data else None)


def _thread_from_row(row: ThreadRow | Row[str, datetime] | Row[tuple[str, datetime, str | None]]) -> ThreadMetadata:
    thread = ThreadMetadata.model_validate_json(row.data)
    # The column holds the first save's time, in UTC; the JSON holds whatever the last save carried.
    thread.created_at = row.created_at
    return thread


def _item_from_json(data: str) -> ThreadItem:
    item = _items.validate_json(data)
    item.created_at = as_utc(item.created_at)
    return item


def _upsert(
    session: AsyncSession,
    model: type[ThreadRow | ThreadItemRow | AttachmentRow],
    *,
    update: tuple[str, ...],
    only_if: Callable[[ColumnCollection[str, Any]], ColumnElement[bool]],
) -> ReturningInsert[Any]:
    """INSERT ... ON CONFLICT (id) DO UPDATE ... WHERE only_if(excluded) RETURNING the row's id (an item's seq), for
    either dialect; its values are given when it is executed."""
    return _upsert_statement(session.get_bind().dialect.name, model, update, only_if)


@functools.cache
def _upsert_statement(
    dialect: str,
    model: type[ThreadRow | ThreadItemRow | AttachmentRow],
    update: tuple[str, ...],
    only_if: Callable[[ColumnCollection[str, Any]], ColumnElement[bool]],
) -> ReturningInsert[Any]:
    # Built once per table and dialect: building it for every write cost a third of the write's time.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(model)
    returned = model.seq if model is ThreadItemRow else model.id
    return stmt.on_conflict_do_update(
        index_elements=["id"],
        set_={name: stmt.excluded[name] for name in update},
        where=only_if(stmt.excluded),
    ).returning(returned)


def _insert_new(session: AsyncSession, model: type[ThreadItemRow]) -> ReturningInsert[Any]:
    """INSERT ... ON CONFLICT (id) DO NOTHING RETURNING the row's seq: no row back when the id is taken."""
    return _insert_new_statement(session.get_bind().dialect.name, model)


@functools.cache
def _insert_new_statement(dialect: str, model: type[ThreadItemRow]) -> ReturningInsert[Any]:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model).on_conflict_do_nothing(index_elements=["id"]).returning(model.seq)


def _same_owner(new: ColumnCollection[str, Any]) -> ColumnElement[bool]:
    return and_(ThreadRow.team_id == new.team_id, ThreadRow.user_id == new.user_id)


def _same_thread(new: ColumnCollection[str, Any]) -> ColumnElement[bool]:
    return and_(ThreadItemRow.thread_id == new.thread_id)


def _same_team(new: ColumnCollection[str, Any]) -> ColumnElement[bool]:
    return and_(AttachmentRow.team_id == new.team_id)


def _is_descending(order: str) -> bool:
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    return order == "desc"


def _page_size(limit: int) -> int:
    return min(max(limit, 1), MAX_PAGE_SIZE)
