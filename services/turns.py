"""The turns of each thread: who asked, which agent kind took it, how it ended, and its trace id."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.messages import Identity, TurnStatus
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import ThreadRow, TurnRow

TurnState = Literal["queued", "completed", "failed", "cancelled"]
# A Core statement built once: an ORM insert costs a third more per turn, on the way to its first event.
_INSERT_TURN = insert(cast(Table, TurnRow.__table__))


class TurnRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    thread_id: str
    team_id: str
    user_id: str
    agent: AgentKind
    status: TurnState
    created_at: datetime
    ended_at: datetime | None
    trace_id: str | None


class TurnNotFoundError(LookupError):
    """No such turn for this caller (the same answer whether it does not exist or is someone else's)."""


class TurnRecords:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def start(
        self, identity: Identity, *, turn_id: str, thread_id: str, agent: str, trace_id: str | None = None
    ) -> None:
        row = {
            "id": turn_id,
            "thread_id": thread_id,
            "team_id": identity.team_id,
            "user_id": identity.user_id,
            "agent": agent,
            "status": "queued",
            "created_at": datetime.now(UTC),
            "ended_at": None,
            "trace_id": trace_id,
        }
        async with self._sessions() as session, session.begin():
            await session.execute(_INSERT_TURN, row)

    async def finish(self, turn_id: str, status: TurnStatus) -> None:
        """Record how the turn ended. Only the first end counts: a late duplicate changes nothing."""
        stmt = (
            update(TurnRow)
            .where(TurnRow.id == turn_id, TurnRow.status == "queued")
            .values(status=status, ended_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        async with self._sessions() as session, session.begin():
            await session.execute(stmt)

    async def get(self, identity: Identity, turn_id: str) -> TurnRecord:
        query = select(TurnRow).where(
            TurnRow.id == turn_id, TurnRow.team_id == identity.team_id, TurnRow.user_id == identity.user_id
        )
        async with read_session(self._sessions) as session:
            row = (await session.execute(query)).scalar_one_or_none()
        if row is None:
            raise TurnNotFoundError(turn_id)
        return _record(row)

    async def get_any(self, turn_id: str) -> TurnRecord | None:
        """A turn whoever it belongs to: for the gateway's own bookkeeping, never for answering a caller."""
        async with read_session(self._sessions) as session:
            row = (await session.execute(select(TurnRow).where(TurnRow.id == turn_id))).scalar_one_or_none()
        return None if row is None else _record(row)

    async def for_thread(self, identity: Identity, thread_id: str) -> builtins.list[TurnRecord]:
        """The thread's turns, oldest first (empty for a thread that is not the caller's)."""
        query = (
            select(TurnRow)
            .join(ThreadRow, ThreadRow.id == TurnRow.thread_id)
            .where(
                TurnRow.thread_id == thread_id,
                ThreadRow.team_id == identity.team_id,
                ThreadRow.user_id == identity.user_id,
            )
            .order_by(TurnRow.created_at, TurnRow.id)
        )
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).scalars().all()
        return [_record(row) for row in rows]


def _record(row: TurnRow) -> TurnRecord:
    return TurnRecord.model_validate(row, from_attributes=True)
