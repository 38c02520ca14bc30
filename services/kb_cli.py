"""`kitrelay kb`: look after a team's knowledge base (load, list, search, delete documents) and read feedback.

Every command works on the database of `DATABASE_URL`, which must be migrated (`kitrelay migrate`). Mistakes an
operator can make (a missing file, a type we cannot read, an unknown id, an unmigrated database) end with a red
message and exit code 1 (or Typer's usage error, code 2), never a traceback.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from kitrelay.services.cli_output import console, fail, id_column, print_json_lines, print_table, when

# The machinery of each command (SQLAlchemy, the knowledge service, PDF extraction) is imported when it runs: the
# `kitrelay` command imports this module to list its commands, and `kitrelay chat` must start fast.
if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from kitrelay.services.knowledge import DocumentRecord, KnowledgeService

T = TypeVar("T")

app = typer.Typer(help="A team's knowledge base (what the research agent searches) and feedback.", no_args_is_help=True)

TeamOption = Annotated[str, typer.Option("--team", help="The team whose knowledge base this is.")]


class FeedbackKind(StrEnum):
    positive = "positive"
    negative = "negative"


class _Vote(NamedTuple):
    user_id: str
    thread_id: str
    item_id: str
    kind: str
    created_at: datetime


@dataclass(frozen=True)
class _LoadedFile:
    path: Path
    mime_type: str
    text: str
    byte_size: int


@app.command()
def add(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Text, Markdown or PDF files.", metavar="PATH", exists=True, dir_okay=False, readable=True),
    ],
    team: TeamOption,
    title: Annotated[str | None, typer.Option(help="The title (one file only); else its H1 or file name.")] = None,
) -> None:
    """Load documents into the team's knowledge base, as an administrator."""
    from kitrelay.services.documents import title_from

    if title is not None and len(paths) > 1:
        raise typer.BadParameter("a title can only be given for a single file", param_hint="--title")
    # Every file is read before any is stored: one unreadable file leaves the knowledge base as it was.
    loaded = [_load(path) for path in paths]

    async def store(knowledge: KnowledgeService) -> list[DocumentRecord]:
        return [
            await knowledge.add_document(
                team,
                title=title or title_from(file.text, file.path.name),
                text=file.text,
                source="admin",
                mime_type=file.mime_type,
                byte_size=file.byte_size,
            )
            for file in loaded
        ]

    records = _run(store)
    table = Table(id_column("id"), "title", "chunks", title=f"added to {escape(team)}")
    for record in records:
        table.add_row(record.id, escape(record.title), str(record.chunk_count))
    print_table(table)


@app.command("list")
def list_documents(
    team: TeamOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line instead of a table.")] = False,
) -> None:
    """List the team's documents, newest first."""

    async def documents(knowledge: KnowledgeService) -> list[DocumentRecord]:
        return await knowledge.list_documents(team)

    records = _run(documents)
    if as_json:
        print_json_lines(record.model_dump(mode="json") for record in records)
        return
    if not records:
        console.print(f"team {escape(team)} has no documents")
        return
    table = Table(id_column("id"), "title", "source", "type", "chunks", "bytes", "added")
    for record in records:
        table.add_row(
            record.id,
            escape(record.title),
            record.source,
            record.mime_type,
            str(record.chunk_count),
            str(record.byte_size),
            when(record.created_at),
        )
    print_table(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="A question or some words.")],
    team: TeamOption,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many documents.")] = 5,
) -> None:
    """Search the team's documents the way the research agent does."""

    async def hits(knowledge: KnowledgeService) -> list[tuple[str, str | None, str]]:
        return [(hit.title, hit.heading, hit.snippet) for hit in await knowledge.search(team, query, limit=limit)]

    found = _run(hits)
    if not found:
        console.print("no document matches")
        return
    table = Table("rank", "title", "heading", "snippet")
    for rank, (title, heading, snippet) in enumerate(found, start=1):
        table.add_row(str(rank), escape(title), escape(heading or ""), escape(snippet))
    print_table(table)


@app.command()
def delete(document_id: Annotated[str, typer.Argument(help="The document's id.")], team: TeamOption) -> None:
    """Delete a document (and its chunks) from the team's knowledge base."""

    async def remove(knowledge: KnowledgeService) -> None:
        await knowledge.delete_document(team, document_id)

    _run(remove)
    console.print(f"deleted {escape(document_id)}")


@app.command()
def feedback(
    team: TeamOption,
    kind: Annotated[FeedbackKind | None, typer.Option(help="Only this kind of vote.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many votes.")] = 50,
) -> None:
    """List the feedback the team's users gave on assistant answers, newest first."""
    from sqlalchemy import select

    from kitrelay.shared.store.engine import read_session
    from kitrelay.shared.store.models import FeedbackRow

    query = select(
        FeedbackRow.user_id, FeedbackRow.thread_id, FeedbackRow.item_id, FeedbackRow.kind, FeedbackRow.created_at
    ).where(FeedbackRow.team_id == team)
    if kind is not None:
        query = query.where(FeedbackRow.kind == kind.value)
    # The id breaks ties between votes cast in the same instant.
    query = query.order_by(FeedbackRow.created_at.desc(), FeedbackRow.id.desc()).limit(limit)

    async def votes(sessions: async_sessionmaker[AsyncSession]) -> list[_Vote]:
        async with read_session(sessions) as session:
            return [_Vote(**row._mapping) for row in (await session.execute(query)).all()]

    rows = _run_sessions(votes)
    if not rows:
        console.print(f"no {kind.value + ' ' if kind else ''}feedback for team {escape(team)}")
        return
    table = Table("user", id_column("thread"), id_column("item"), "kind", "when")
    for user_id, thread_id, item_id, vote, created_at in rows:
        colour = "green" if vote == FeedbackKind.positive else "red"
        table.add_row(escape(user_id), thread_id, item_id, f"[{colour}]{vote}[/{colour}]", when(created_at))
    print_table(table)


def _load(path: Path) -> _LoadedFile:
    from kitrelay.services.documents import UnsupportedDocumentError, extract_text, normalize_mime

    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    guessed, _ = mimetypes.guess_type(path.name)
    mime_type = normalize_mime(guessed or "application/octet-stream", path.name)
    try:
        text = extract_text(data, mime_type=mime_type, filename=path.name)
    except UnsupportedDocumentError as exc:
        fail(str(exc))
    if not text.strip():
        fail(f"{path} has no text")
    return _LoadedFile(path=path, mime_type=mime_type, text=text, byte_size=len(data))


def _run(work: Callable[[KnowledgeService], Awaitable[T]]) -> T:
    from kitrelay.services.knowledge import KnowledgeService

    return _run_sessions(lambda sessions: work(KnowledgeService(sessions)))


def _run_sessions(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    """Run `work` on the configured database, turning what an operator can get wrong into a message."""
    import asyncio

    from sqlalchemy.exc import SQLAlchemyError

    from kitrelay.services.knowledge import DocumentNotFoundError
    from kitrelay.shared.settings import Settings
    from kitrelay.shared.store.engine import make_engine, make_sessionmaker

    database_url = Settings().DATABASE_URL

    async def run() -> T:
        engine = make_engine(database_url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except DocumentNotFoundError as exc:
        fail(f"no document {exc.args[0]} in this team")
    except ValueError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        # Most likely an unmigrated database or a server that is not there. The driver's own message is the useful
        # part; SQLAlchemy's adds the statement and a link.
        detail = getattr(exc, "orig", None) or exc
        fail(f"database error: {detail}. Is DATABASE_URL right, and is the database migrated (kitrelay migrate)?")
