"""A user's threads by last activity, and thread search (titles and message text), for the chat page's sidebar.

ChatKit's `threads.list` keeps the SDK's contract (creation order). The sidebar lists threads by their last
activity instead: the time of their newest item (a thread with none yet: its creation), read through the thread
items' (thread_id, seq) index, so nothing is written on each message to keep it.

Search matches a thread whose title contains the query, or whose messages hold every word of it (the last one as
a word beginning, so it narrows as the user types), through the full-text index of migration 0006: FTS5 on SQLite,
a tsvector with a GIN index on PostgreSQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chatkit.store import NotFoundError
from chatkit.types import ThreadMetadata
from sqlalchemy import ColumnElement, and_, func, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.context import HasIdentity
from kitrelay.shared.store.chatkit_store import MAX_PAGE_SIZE, _owned_by
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import ThreadItemRow, ThreadRow, UTCDateTime

# The words a search looks for at most; the query's length is bounded by the caller.
MAX_SEARCH_TERMS = 8
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class ListedThread:
    thread: ThreadMetadata
    # The time of its newest item, or its creation when it has none.
    last_activity_at: datetime


@dataclass(frozen=True)
class ThreadListing:
    threads: list[ListedThread]
    has_more: bool
    # The cursor of the next page (the last thread's id) when there is more.
    after: str | None


def _listed_thread(data: str, created_at: datetime) -> ThreadMetadata:
    thread = ThreadMetadata.model_validate_json(data)
    # The column holds the first save's time; the JSON holds whatever the last save carried.
    thread.created_at = created_at
    return thread


def search_words(query: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(query)][:MAX_SEARCH_TERMS]


def _last_activity() -> ColumnElement[datetime]:
    newest_item = (
        select(ThreadItemRow.created_at)
        .where(ThreadItemRow.thread_id == ThreadRow.id)
        .order_by(ThreadItemRow.seq.desc())
        .limit(1)
        .correlate(ThreadRow)
        .scalar_subquery()
    )
    return func.coalesce(newest_item, ThreadRow.created_at, type_=UTCDateTime())


def _matching(dialect: str, query: str) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """Threads whose title holds `query`, or whose messages hold all its words."""
    pattern = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    words = search_words(query)
    if dialect == "sqlite":
        title = func.lower(func.json_extract(ThreadRow.data, "$.title"))
        # Each word a quoted FTS5 string (never an operator or a column filter); the last one a prefix.
        match = " ".join('"' + word.replace('"', '""') + '"' for word in words) + ("*" if words else "")
        content = ThreadRow.id.in_(
            select(literal_column("thread_id"))
            .select_from(text("thread_items_fts"))
            .where(text("thread_items_fts MATCH :match"))
        )
        params: dict[str, Any] = {"match": match}
    elif dialect == "postgresql":
        title = func.lower(text("(threads.data::jsonb ->> 'title')"))
        # Words are \w+ only, so none holds tsquery syntax; it is bound as a parameter all the same.
        tsquery = " & ".join(words) + (":*" if words else "")
        content = ThreadRow.id.in_(
            select(ThreadItemRow.thread_id).where(text("thread_items.search_vector @@ to_tsquery('simple', :match)"))
        )
        params = {"match": tsquery}
    else:
        raise NotImplementedError(f"no thread search on {dialect}")
    matches_title = title.like(pattern, escape="\\")
    return (or_(matches_title, content) if words else matches_title), params


async def list_threads(
    sessions: async_sessionmaker[AsyncSession],
    context: HasIdentity,
    *,
    limit: int,
    after: str | None = None,
    query: str | None = None,
) -> ThreadListing:
    """The caller's threads, most recently active first, `limit` at a time (after the thread `after`); only those
    matching `query` when one is given. NotFoundError for an `after` that is not one of the caller's threads."""
    size = min(max(limit, 1), MAX_PAGE_SIZE)
    activity = _last_activity().label("activity")
    statement = select(ThreadRow.data, ThreadRow.created_at, ThreadRow.id, activity).where(_owned_by(context))
    params: dict[str, Any] = {}
    async with read_session(sessions) as session:
        if query and query.strip():
            matching, params = _matching(session.get_bind().dialect.name, query.strip())
            statement = statement.where(matching)
        if after is not None:
            cursor_query = select(_last_activity()).where(ThreadRow.id == after, _owned_by(context))
            cursor = (await session.execute(cursor_query)).scalar_one_or_none()
            if cursor is None:
                raise NotFoundError(f"Thread {after} not found")
            # The id breaks ties, so a page boundary never skips or repeats a thread.
            statement = statement.where(
                or_(_last_activity() < cursor, and_(_last_activity() == cursor, ThreadRow.id < after))
            )
        statement = statement.order_by(activity.desc(), ThreadRow.id.desc()).limit(size + 1)
        rows = (await session.execute(statement, params)).all()
    listed = [ListedThread(_listed_thread(row.data, row.created_at), row.activity) for row in rows[:size]]
    has_more = len(rows) > size
    return ThreadListing(listed, has_more, listed[-1].thread.id if has_more and listed else None)
