"""Team task lists: the domain behind the task agent's tools.

Tasks belong to a team. Anyone in the team may see and change them; a task of another team does not exist as
far as the caller can tell (`TaskNotFoundError`, exactly as for an unknown number).

A task is named by its number within its team (`TaskRecord.number`, "task #3"), counted from 1 per team and never
reused; every method takes that number. The row's global key stays inside this module: a team never learns how
many tasks other teams have made.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Select, case, delete, func, insert, literal, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.task_events import TaskEventPublisher
from kitrelay.shared.messages import Identity, TaskChange, TaskChangeKind, TaskSnapshot
from kitrelay.shared.store.engine import read_session
from kitrelay.shared.store.models import TITLE_MAX_LENGTH, TaskCounterRow, TaskRow, UTCDateTime

TaskStatus = Literal["all", "open", "done"]

# What every query hands back, in TaskRecord's field order.
_COLUMNS = (
    TaskRow.number,
    TaskRow.team_id,
    TaskRow.owner_id,
    TaskRow.assignee_id,
    TaskRow.title,
    TaskRow.done,
    TaskRow.due_date,
    TaskRow.created_at,
    TaskRow.completed_at,
)


class TaskRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    # The task's number in its team: what is shown after '#' and what every method takes.
    number: int
    team_id: str
    owner_id: str
    assignee_id: str | None
    title: str
    done: bool
    due_date: date | None
    created_at: datetime
    completed_at: datetime | None


class TaskNotFoundError(LookupError):
    """No task with this number in the caller's team."""


class TaskService:
    """Create, read, update and delete a team's tasks. Each call is one short transaction.

    With `events`, every change is published to the team's event stream once it is committed (a worker's tool, a
    widget click and the CLI all change tasks through here), so that every open page of the team shows it."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, events: TaskEventPublisher | None = None) -> None:
        self._sessions = sessions
        self._events = events

    async def _published(self, identity: Identity, change: TaskChangeKind, task: TaskRecord) -> TaskRecord:
        if self._events is not None:
            snapshot = TaskSnapshot(
                number=task.number,
                title=task.title,
                done=task.done,
                assignee_id=task.assignee_id,
                due_date=task.due_date.isoformat() if task.due_date else None,
            )
            await self._events.publish(identity.team_id, TaskChange(change=change, task=snapshot, by=identity.user_id))
        return task

    async def add(
        self,
        identity: Identity,
        *,
        title: str,
        due_date: date | None = None,
        assignee_id: str | None = None,
        request_key: str | None = None,
    ) -> TaskRecord:
        """Create a task. With a `request_key`, creating again with the same key returns the first task instead:
        a turn redelivered after a crash re-runs its tools without adding a second copy."""
        if request_key is not None:
            existing = await self._by_request_key(identity, request_key)
            if existing is not None:
                return existing
        now = datetime.now(UTC)
        values: dict[str, Any] = {
            "team_id": identity.team_id,
            "owner_id": identity.user_id,
            "assignee_id": _clean_assignee(assignee_id),
            "title": _clean_title(title),
            "done": False,
            "due_date": due_date,
            "created_at": now,
            "completed_at": None,
            "updated_at": now,
            "request_key": request_key,
        }
        try:
            async with self._sessions() as session, session.begin():
                # The team's next number, in the same transaction: the counter's row lock orders a team's inserts.
                values["number"] = await _next_number(session, identity.team_id)
                row = (await session.execute(insert(TaskRow).values(values).returning(*_COLUMNS))).one()
        except IntegrityError:
            # Two attempts of one turn raced on the same key: the other one's task is the task.
            if request_key is None or (existing := await self._by_request_key(identity, request_key)) is None:
                raise
            return existing
        return await self._published(identity, "added", _record(row._mapping))

    async def _by_request_key(self, identity: Identity, request_key: str) -> TaskRecord | None:
        query = select(*_COLUMNS).where(TaskRow.request_key == request_key, TaskRow.team_id == identity.team_id)
        async with read_session(self._sessions) as session:
            row = (await session.execute(query)).first()
        return None if row is None else _record(row._mapping)

    async def list(
        self,
        identity: Identity,
        *,
        status: TaskStatus = "all",
        assignee_id: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[TaskRecord]:
        """The team's tasks, open ones first, each group in creation order."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        query = (
            select(*_COLUMNS)
            .where(*_filters(identity, status, assignee_id))
            .order_by(TaskRow.done.asc(), TaskRow.number.asc())
            .limit(limit)
        )
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return [_record(row._mapping) for row in rows]

    async def by_numbers(self, identity: Identity, numbers: Iterable[int]) -> dict[int, TaskRecord]:
        """The team's tasks of these numbers, by number; a number that names no task (any more) is left out."""
        wanted = sorted(set(numbers))
        if not wanted:
            return {}
        query = select(*_COLUMNS).where(TaskRow.team_id == identity.team_id, TaskRow.number.in_(wanted))
        async with read_session(self._sessions) as session:
            rows = (await session.execute(query)).all()
        return {task.number: task for task in (_record(row._mapping) for row in rows)}

    async def count(self, identity: Identity, *, status: TaskStatus = "all", assignee_id: str | None = None) -> int:
        query: Select[int] = select(func.count()).select_from(TaskRow).where(*_filters(identity, status, assignee_id))
        async with read_session(self._sessions) as session:
            return (await session.execute(query)).scalar_one()

    async def get(self, identity: Identity, number: int) -> TaskRecord:
        query = select(*_COLUMNS).where(*_task(identity, number))
        async with read_session(self._sessions) as session:
            row = (await session.execute(query)).first()
        if row is None:
            raise TaskNotFoundError(number)
        return _record(row._mapping)

    async def complete(self, identity: Identity, number: int) -> TaskRecord:
        now = datetime.now(UTC)
        # Completing a done task keeps its original completion time.
        completed_at = func.coalesce(TaskRow.completed_at, _timestamp(now))
        task = await self._update(identity, number, {"done": True, "completed_at": completed_at, "updated_at": now})
        return await self._published(identity, "completed", task)

    async def reopen(self, identity: Identity, number: int) -> TaskRecord:
        task = await self._update(
            identity, number, {"done": False, "completed_at": None, "updated_at": datetime.now(UTC)}
        )
        return await self._published(identity, "reopened", task)

    async def set_done(self, identity: Identity, number: int, *, done: bool) -> TaskRecord:
        """Complete or reopen: the same request twice leaves the same state (a widget click is replayable)."""
        return await (self.complete(identity, number) if done else self.reopen(identity, number))

    async def toggle(self, identity: Identity, number: int) -> TaskRecord:
        now = datetime.now(UTC)
        # One statement reads and flips the flag, so two quick clicks never both see the same old value.
        completed_at = case((TaskRow.done, None), else_=_timestamp(now))
        task = await self._update(
            identity, number, {"done": not_(TaskRow.done), "completed_at": completed_at, "updated_at": now}
        )
        return await self._published(identity, "completed" if task.done else "reopened", task)

    async def rename(self, identity: Identity, number: int, *, title: str) -> TaskRecord:
        task = await self._update(identity, number, {"title": _clean_title(title), "updated_at": datetime.now(UTC)})
        return await self._published(identity, "renamed", task)

    async def assign(self, identity: Identity, number: int, *, assignee_id: str | None) -> TaskRecord:
        """Give the task to a member of the team (None takes it back)."""
        assignee = _clean_assignee(assignee_id)
        task = await self._update(identity, number, {"assignee_id": assignee, "updated_at": datetime.now(UTC)})
        return await self._published(identity, "assigned", task)

    async def set_due_date(self, identity: Identity, number: int, *, due_date: date | None) -> TaskRecord:
        task = await self._update(identity, number, {"due_date": due_date, "updated_at": datetime.now(UTC)})
        return await self._published(identity, "due_date", task)

    async def delete(self, identity: Identity, number: int) -> TaskRecord:
        """Delete a task and return it as it was."""
        stmt = delete(TaskRow).where(*_task(identity, number)).returning(*_COLUMNS)
        async with self._sessions() as session, session.begin():
            row = (await session.execute(stmt)).first()
        if row is None:
            raise TaskNotFoundError(number)
        return await self._published(identity, "deleted", _record(row._mapping))

    async def _update(self, identity: Identity, number: int, values: Mapping[str, Any]) -> TaskRecord:
        stmt = (
            update(TaskRow)
            .where(*_task(identity, number))
            .values(dict(values))
            .returning(*_COLUMNS)
            # Sessions are never reused, so there are no loaded objects to refresh.
            .execution_options(synchronize_session=False)
        )
        async with self._sessions() as session, session.begin():
            row = (await session.execute(stmt)).first()
        if row is None:
            raise TaskNotFoundError(number)
        return _record(row._mapping)


def _task(identity: Identity, number: int) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return TaskRow.team_id == identity.team_id, TaskRow.number == number


async def _next_number(session: AsyncSession, team_id: str) -> int:
    """Take the team's next task number: one upsert of its counter, returning the new value."""
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    first = dialect_insert(TaskCounterRow).values(team_id=team_id, last_number=1)
    stmt = first.on_conflict_do_update(
        index_elements=["team_id"], set_={"last_number": TaskCounterRow.last_number + 1}
    ).returning(TaskCounterRow.last_number)
    return int((await session.execute(stmt)).scalar_one())


def _clean_title(title: str) -> str:
    cleaned = title.strip()
    if not cleaned:
        raise ValueError("a task needs a title")
    if len(cleaned) > TITLE_MAX_LENGTH:
        raise ValueError(f"a task title has at most {TITLE_MAX_LENGTH} characters")
    return cleaned


def _clean_assignee(assignee_id: str | None) -> str | None:
    # People write "@bob"; the id is "bob".
    if assignee_id is None:
        return None
    cleaned = assignee_id.strip().removeprefix("@").strip()
    if not cleaned:
        raise ValueError("an assignee needs a name")
    if len(cleaned) > 255:
        raise ValueError("an assignee name has at most 255 characters")
    return cleaned


def _filters(identity: Identity, status: TaskStatus, assignee_id: str | None) -> builtins.list[ColumnElement[bool]]:
    filters = [TaskRow.team_id == identity.team_id]
    if status == "open":
        filters.append(TaskRow.done.is_(False))
    elif status == "done":
        filters.append(TaskRow.done.is_(True))
    elif status != "all":
        raise ValueError(f"status must be 'all', 'open' or 'done', not {status!r}")
    if assignee_id is not None:
        filters.append(TaskRow.assignee_id == _clean_assignee(assignee_id))
    return filters


def _timestamp(value: datetime) -> ColumnElement[datetime]:
    # Typed, so the value goes through UTCDateTime like a plain column assignment would.
    return literal(value, UTCDateTime())


def _record(row: RowMapping) -> TaskRecord:
    return TaskRecord.model_validate(dict(row))
