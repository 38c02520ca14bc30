"""The turns of each thread: who asked, which agent kind answered it, how it ended, and its trace id."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.messages import Identity, TurnStatus
from kitrelay.shared.settings import AgentKind
from kitrelay.shared.store.chatkit_store import Statement
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import ThreadRow, TurnRow

TurnState = Literal["queued", "completed", "failed", "cancelled"]
# Core statements built once: an ORM insert costs a third more per turn, on the way to its first event.
_TURNS = cast(Table, TurnRow.__table__)
_COLUMNS = ("id", "thread_id", "team_id", "user_id", "agent", "status", "created_at", "ended_at", "trace_id")
_VALUES = f"INSERT INTO turns ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + name for name in _COLUMNS)})"
_TYPED = [bindparam(name, type_=_TURNS.c[name].type) for name in _COLUMNS]
# The gateway records a turn once its first event is relayed, so a worker may end the turn first (`end_statement`): the
# record then keeps its end and takes the rest from the gateway's. `agent` is the kind that answered: the gateway
# writes the entry agent, the worker that ends the turn (after any handoffs) writes its own kind, and the end wins
# whichever comes first. Plain SQL, since SQLite and PostgreSQL write ON CONFLICT the same way and a statement here
# is built before its dialect is known.
_START_TURN = text(
    f"{_VALUES} ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, trace_id = excluded.trace_id"
).bindparams(*_TYPED)
_END_TURN = text(
    f"{_VALUES} ON CONFLICT (id) DO UPDATE SET status = excluded.status, ended_at = excluded.ended_at, "
    "agent = excluded.agent WHERE turns.status = 'queued'"
).bindparams(*_TYPED)
# Only the first end counts: a late duplicate (a redelivered run, the gateway giving up) changes nothing.
_FINISH_TURN = (
    update(_TURNS)
    .where(_TURNS.c.id == bindparam("turn_id"), _TURNS.c.status == "queued")
    .values(status=bindparam("end_status"), ended_at=bindparam("end_at"))
)


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
        await self.record(
            start_statement(identity, turn_id=turn_id, thread_id=thread_id, agent=agent, trace_id=trace_id)
        )

    async def record(self, statement: Statement) -> None:
        """Write one of this module's statements (`start_statement`, `finish_statement`) in a transaction of its own."""
        async with self._sessions() as session, session.begin():
            await session.execute(*statement)

    async def finish(self, turn_id: str, status: TurnStatus) -> None:
        """Record how the turn ended. Only the first end counts: a late duplicate changes nothing."""
        await self.record(finish_statement(turn_id, status))

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


def finish_statement(turn_id: str, status: TurnStatus) -> Statement:
    """`TurnRecords.finish` as a statement, for a transaction that writes more (the turn's last item)."""
    return _FINISH_TURN, {"turn_id": turn_id, "end_status": status, "end_at": datetime.now(UTC)}


def start_statement(
    identity: Identity, *, turn_id: str, thread_id: str, agent: str, trace_id: str | None = None
) -> Statement:
    """`TurnRecords.start` as a statement, for a transaction that writes more (the user's message). A record a
    worker's end already wrote keeps its end and its agent."""
    row = _row(identity, turn_id=turn_id, thread_id=thread_id, agent=agent, trace_id=trace_id, status="queued")
    return _START_TURN, row


def end_statement(
    identity: Identity, *, turn_id: str, thread_id: str, agent: str, trace_id: str | None, status: TurnStatus
) -> Statement:
    """A worker's end of a turn: `agent` is that worker's kind, the one that answered (the turn's last hop). The
    gateway's record of the turn may not be committed yet (it is written while the turn is published): then this
    writes the record, ended, and the gateway's start fills in the rest. Only the first end counts."""
    row = _row(identity, turn_id=turn_id, thread_id=thread_id, agent=agent, trace_id=trace_id, status=status)
    return _END_TURN, row


def _row(
    identity: Identity,
    *,
    turn_id: str,
    thread_id: str,
    agent: str,
    trace_id: str | None,
    status: TurnState,
) -> dict[str, object]:
    now = datetime.now(UTC)
    return {
        "id": turn_id,
        "thread_id": thread_id,
        "team_id": identity.team_id,
        "user_id": identity.user_id,
        "agent": agent,
        "status": status,
        "created_at": now,
        "ended_at": None if status == "queued" else now,
        "trace_id": trace_id,
    }
