"""`kitrelay turns THREAD_ID`: a thread's turns for an operator, each with the agent that answered it, its status
and trace id (and a link to the trace when TRACE_DASHBOARD_URL is set), straight from the database of
`DATABASE_URL`.

An admin command: it reads any thread, whoever it belongs to (the HTTP route `GET /threads/{id}/turns` answers
only the thread's owner)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kitrelay.services.cli_output import fail, id_column, print_json_lines, print_table, when
from kitrelay.services.kb_cli import _run_sessions

# Imported when the command runs (SQLAlchemy, the OpenTelemetry SDK): `kitrelay chat` and `--help` start fast.
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from kitrelay.services.turns import TurnRecord


def turns(
    thread_id: Annotated[str, typer.Argument(help="The thread whose turns to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line instead of a table.")] = False,
) -> None:
    """List a thread's turns, oldest first: the agent that answered, status, times and trace id."""
    from sqlalchemy import select

    from kitrelay.services.turns import TurnRecord
    from kitrelay.shared.settings import Settings
    from kitrelay.shared.store.engine import read_session
    from kitrelay.shared.store.models import TurnRow
    from kitrelay.shared.telemetry import trace_url

    query = select(TurnRow).where(TurnRow.thread_id == thread_id).order_by(TurnRow.created_at, TurnRow.id)

    async def load(sessions: async_sessionmaker[AsyncSession]) -> list[TurnRecord]:
        async with read_session(sessions) as session:
            rows = (await session.execute(query)).scalars().all()
        return [TurnRecord.model_validate(row, from_attributes=True) for row in rows]

    records = _run_sessions(load)
    if not records:
        fail(f"no turns for thread {thread_id}")
    dashboard = Settings().TRACE_DASHBOARD_URL
    if as_json:
        print_json_lines(
            record.model_dump(mode="json") | {"trace_url": trace_url(dashboard, record.trace_id)} for record in records
        )
        return
    table = Table(id_column("turn"), "agent", "status", "started", "ended", id_column("trace id"))
    if dashboard:
        table.add_column("trace", overflow="fold")
    for record in records:
        row = [
            record.id,
            record.agent,
            record.status,
            when(record.created_at),
            when(record.ended_at) if record.ended_at else "-",
            record.trace_id or "-",
        ]
        if dashboard:
            row.append(escape(trace_url(dashboard, record.trace_id) or "-"))
        table.add_row(*row)
    print_table(table)
