"""Thumbs up and down on assistant replies (ChatKit's `items.feedback`), kept per user and item.

A user has one opinion of an item: voting again replaces the earlier vote instead of adding a second one. The
ChatKit server checks that the thread and items are the caller's before `record` is called.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.messages import Identity
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import FeedbackRow

FeedbackKind = Literal["positive", "negative"]
FEEDBACK_KINDS: tuple[FeedbackKind, ...] = get_args(FeedbackKind)

# A listing never returns more than this, whatever the caller asks for.
MAX_LIST_LIMIT = 1000

_COLUMNS = (
    FeedbackRow.id,
    FeedbackRow.team_id,
    FeedbackRow.user_id,
    FeedbackRow.thread_id,
    FeedbackRow.item_id,
    FeedbackRow.kind,
    FeedbackRow.created_at,
)


class FeedbackRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    team_id: str
    user_id: str
    thread_id: str
    item_id: str
    kind: FeedbackKind
    created_at: datetime


class FeedbackService:
    """Records and lists feedback. Each call is one short transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def record(self, identity: Identity, *, thread_id: str, item_ids: list[str], kind: FeedbackKind) -> None:
        """One vote per (user, item): a new vote on an item the user already rated replaces the old one, and
        takes the new time."""
        _check_kind(kind)
        # One statement must not touch a row twice (PostgreSQL refuses), so repeated ids collapse to one.
        unique_ids = list(dict.fromkeys(item_ids))
        if not unique_ids:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "team_id": identity.team_id,
                "user_id": identity.user_id,
                "thread_id": thread_id,
                "item_id": item_id,
                "kind": kind,
                "created_at": now,
            }
            for item_id in unique_ids
        ]
        async with self._sessions() as session, session.begin():
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            stmt = insert(FeedbackRow).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "item_id"],
                set_={"kind": stmt.excluded.kind, "created_at": stmt.excluded.created_at},
            )
            await session.execute(stmt)

    async def of_thread(self, identity: Identity, thread_id: str) -> dict[str, FeedbackKind]:
        """The caller's votes on a thread's items, by item id: what the page shows pressed when it opens the thread."""
        query = select(FeedbackRow.item_id, FeedbackRow.kind).where(
            FeedbackRow.team_id == identity.team_id,
            FeedbackRow.user_id == identity.user_id,
            FeedbackRow.thread_id == thread_id,
        )
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return {row.item_id: row.kind for row in rows}

    async def list(
        self, team_id: str, *, kind: FeedbackKind | None = None, limit: int = 50
    ) -> builtins.list[FeedbackRecord]:
        """The team's feedback, newest first."""
        if kind is not None:
            _check_kind(kind)
        if limit < 0:
            raise ValueError("limit must not be negative")
        query = select(*_COLUMNS).where(FeedbackRow.team_id == team_id)
        if kind is not None:
            query = query.where(FeedbackRow.kind == kind)
        # The id breaks ties between votes cast in the same instant.
        query = query.order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc()).limit(min(limit, MAX_LIST_LIMIT))
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return [FeedbackRecord.model_validate(dict(row._mapping)) for row in rows]


def _check_kind(kind: str) -> None:
    if kind not in FEEDBACK_KINDS:
        raise ValueError(f"feedback kind must be 'positive' or 'negative', not {kind!r}")
