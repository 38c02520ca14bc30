"""The database tables, as SQLAlchemy 2 declarative models. Alembic migrations create them; nothing else does."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from alembic.runtime.environment import NameFilterParentNames, NameFilterType

# Explicit constraint names, so migrations (and SQLite batch rebuilds) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 255
TITLE_MAX_LENGTH = 500

# Short enumerations kept as strings (with CHECK constraints), so adding a value needs no type migration.
ENUM_LENGTH = 32
MIME_TYPE_LENGTH = 255

# Full-text search over document chunks is per dialect and lives only in the migrations (0002): the models describe
# the portable tables, and autogenerate must neither drop nor re-create what they leave out (see
# `include_in_autogenerate`).
# PostgreSQL: a generated tsvector column on document_chunks, with a GIN index.
CHUNK_SEARCH_VECTOR_COLUMN = "search_vector"
CHUNK_SEARCH_VECTOR_INDEX = "ix_document_chunks_search_vector"
# SQLite: an external-content FTS5 table over document_chunks; FTS5 keeps its index in shadow tables named after it.
CHUNK_FTS_TABLE = "document_chunks_fts"
# The same for the text of thread messages (0006): a tsvector column and its index, or an FTS5 table.
ITEM_SEARCH_VECTOR_COLUMN = "search_vector"
ITEM_SEARCH_VECTOR_INDEX = "ix_thread_items_search_vector"
ITEM_FTS_TABLE = "thread_items_fts"

# BIGINT on PostgreSQL; on SQLite only a column declared exactly INTEGER PRIMARY KEY becomes the rowid alias.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def as_utc(value: datetime) -> datetime:
    """The same instant as a UTC-aware datetime. A naive value is read as local time, which is what chatkit's
    `datetime.now()` produces."""
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is always UTC, in and out.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values, which were written
    as UTC and get UTC attached again on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def include_in_autogenerate(name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames) -> bool:
    """Alembic's `include_name` filter: hide the hand-made full-text search objects from autogenerate.

    Without it, `alembic revision --autogenerate` would propose dropping the FTS5 table (and its shadow tables) on
    SQLite and the tsvector column and its index on PostgreSQL, since no model declares them.
    """
    if type_ == "table":
        return not (name or "").startswith((CHUNK_FTS_TABLE, ITEM_FTS_TABLE))
    hidden = {
        "document_chunks": (CHUNK_SEARCH_VECTOR_COLUMN, CHUNK_SEARCH_VECTOR_INDEX),
        "thread_items": (ITEM_SEARCH_VECTOR_COLUMN, ITEM_SEARCH_VECTOR_INDEX),
    }.get(str(parent_names.get("table_name")))
    if hidden is not None:
        if type_ == "column":
            return name != hidden[0]
        if type_ == "index":
            return name != hidden[1]
    return True


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ThreadRow(Base):
    """A ChatKit thread: its ThreadMetadata JSON plus the columns queries filter and sort on."""

    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_owner", "team_id", "user_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    data: Mapped[str] = mapped_column(Text)


class ThreadItemRow(Base):
    """One ThreadItem. `seq` is the thread's order: insertion order, independent of clocks and ties."""

    __tablename__ = "thread_items"
    # AUTOINCREMENT on SQLite: a deleted last item's seq is never handed out again.
    __table_args__ = (Index("ix_thread_items_thread_id_seq", "thread_id", "seq"), {"sqlite_autoincrement": True})

    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("threads.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    data: Mapped[str] = mapped_column(Text)
    # The worker run that saved the item (a turn's hop and its delivery attempt); none for a user's message. A
    # redelivered run removes what an earlier attempt of its hop saved (shared/store/chatkit_store.py).
    turn_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), index=True)
    turn_hop: Mapped[int | None] = mapped_column(Integer)
    turn_attempt: Mapped[int | None] = mapped_column(Integer)


class TurnRunRow(Base):
    """The newest run of a turn that superseded an earlier attempt: no older run of the turn saves items any more.
    Written only when a turn is redelivered (rare); a turn without a row has only ever had its first attempts."""

    __tablename__ = "turn_runs"

    turn_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    hop: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)


class AttachmentRow(Base):
    """Attachment metadata (the file itself lives wherever the AttachmentStore put it)."""

    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    thread_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    data: Mapped[str] = mapped_column(Text)


class TaskRow(Base):
    """A team's to-do item, managed by the task agent's tools."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_request_key", "request_key", unique=True),
        Index("ix_tasks_team_id_number", "team_id", "number", unique=True),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    # What people see and name ("task #3"): numbered per team from 1 (task_counters), so a team learns nothing of
    # how many tasks other teams have. `id` stays the row's key and is never shown.
    number: Mapped[int] = mapped_column(BigInteger)
    owner_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    assignee_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    done: Mapped[bool]
    due_date: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when a turn's tool created the task: a redelivered turn that runs the tool again gets the same task back.
    request_key: Mapped[str | None] = mapped_column(String(ID_LENGTH))


class TaskCounterRow(Base):
    """The last task number a team has given out; numbers are never reused, even after a task is deleted (a widget
    drawn earlier still names the task it showed)."""

    __tablename__ = "task_counters"

    team_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


class TurnRow(Base):
    """One turn of a thread: a user message answered, or a widget action carried out, by the workers."""

    __tablename__ = "turns"
    __table_args__ = (Index("ix_turns_thread_id_created_at", "thread_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("threads.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    agent: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    # queued until a worker ends it: completed, failed or cancelled.
    status: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The W3C trace id of the turn, so an operator can go from a conversation to its trace.
    trace_id: Mapped[str | None] = mapped_column(String(64))


class DocumentRow(Base):
    """A document of a team's knowledge base, with its full text (the chunks are what search looks at)."""

    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint("source IN ('upload', 'admin')", name="source"),
        Index("ix_documents_team_id_attachment_id", "team_id", "attachment_id"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    # "upload": a user attached it in a chat; "admin": loaded by an operator (`kitrelay kb add`).
    source: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    mime_type: Mapped[str] = mapped_column(String(MIME_TYPE_LENGTH))
    # The ChatKit attachment it was extracted from, so deleting the attachment can delete the document.
    attachment_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_by: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    byte_size: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)


class DocumentChunkRow(Base):
    """A searchable piece of a document: a few paragraphs under one heading.

    `id` is the SQLite rowid the FTS5 index refers to; AUTOINCREMENT keeps a deleted chunk's id from being reused.
    `team_id` repeats the document's, so a search filters by team without joining documents first.
    """

    __tablename__ = "document_chunks"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    document_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH), index=True)
    position: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class FeedbackRow(Base):
    """A user's thumbs up or down on an assistant item. One vote per user and item: a new vote replaces the old."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("user_id", "item_id"),
        CheckConstraint("kind IN ('positive', 'negative')", name="kind"),
        Index("ix_feedback_team_id_created_at", "team_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    thread_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(ENUM_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
