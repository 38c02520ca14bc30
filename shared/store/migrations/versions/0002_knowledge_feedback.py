"""Knowledge base (documents, their chunks, full-text search over the chunks) and feedback on assistant items.

Full-text search is per dialect, and only this migration knows about it (the models leave it out, and
`include_in_autogenerate` hides it from autogenerate):

* PostgreSQL: `document_chunks.search_vector`, a STORED generated tsvector of heading and text, with a GIN index.
* SQLite: `document_chunks_fts`, an external-content FTS5 table over document_chunks (porter stemming), kept in
  step by triggers. A later batch migration that rebuilds document_chunks drops those triggers with the old table
  and must create them again.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
ID = sa.String(255)
TIMESTAMP = sa.DateTime(timezone=True)
BIG_INT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ENUM = sa.String(32)

SEARCH_VECTOR = "to_tsvector('english', coalesce(heading, '') || ' ' || \"text\")"

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE document_chunks_fts USING fts5("
    "heading, text, content='document_chunks', content_rowid='id', tokenize='porter unicode61')",
    # An external-content table stores no text of its own: each change must hand it the old values to forget and
    # the new ones to index. Deleting a document deletes its chunks by ON DELETE CASCADE, which fires these too.
    "CREATE TRIGGER document_chunks_fts_ai AFTER INSERT ON document_chunks BEGIN "
    "INSERT INTO document_chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text); END",
    "CREATE TRIGGER document_chunks_fts_ad AFTER DELETE ON document_chunks BEGIN "
    "INSERT INTO document_chunks_fts (document_chunks_fts, rowid, heading, text) "
    "VALUES ('delete', old.id, old.heading, old.text); END",
    "CREATE TRIGGER document_chunks_fts_au AFTER UPDATE ON document_chunks BEGIN "
    "INSERT INTO document_chunks_fts (document_chunks_fts, rowid, heading, text) "
    "VALUES ('delete', old.id, old.heading, old.text); "
    "INSERT INTO document_chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text); END",
]


def upgrade() -> None:
    dialect = op.get_context().dialect.name

    op.create_table(
        "documents",
        sa.Column("id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("source", ENUM, nullable=False),
        sa.Column("mime_type", sa.String(255), nullable=False),
        sa.Column("attachment_id", ID, nullable=True),
        sa.Column("created_by", ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("byte_size", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.CheckConstraint("source IN ('upload', 'admin')", name=op.f("ck_documents_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
    )
    op.create_index(op.f("ix_documents_team_id"), "documents", ["team_id"])
    op.create_index("ix_documents_team_id_attachment_id", "documents", ["team_id", "attachment_id"])

    chunk_columns: list[sa.Column[object]] = [
        sa.Column("id", BIG_INT_PK, autoincrement=True, nullable=False),
        sa.Column("document_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("heading", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
    ]
    if dialect == "postgresql":
        chunk_columns.append(
            sa.Column("search_vector", postgresql.TSVECTOR(), sa.Computed(SEARCH_VECTOR, persisted=True))
        )
    op.create_table(
        "document_chunks",
        *chunk_columns,
        sa.ForeignKeyConstraint(
            ["document_id"], ["documents.id"], name=op.f("fk_document_chunks_document_id_documents"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_document_chunks")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_document_chunks_document_id"), "document_chunks", ["document_id"])
    op.create_index(op.f("ix_document_chunks_team_id"), "document_chunks", ["team_id"])
    if dialect == "postgresql":
        op.create_index(
            "ix_document_chunks_search_vector", "document_chunks", ["search_vector"], postgresql_using="gin"
        )
    elif dialect == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)

    op.create_table(
        "feedback",
        sa.Column("id", BIG_INT_PK, autoincrement=True, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("item_id", ID, nullable=False),
        sa.Column("kind", ENUM, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('positive', 'negative')", name=op.f("ck_feedback_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("user_id", "item_id", name=op.f("uq_feedback_user_id_item_id")),
    )
    op.create_index("ix_feedback_team_id_created_at", "feedback", ["team_id", "created_at"])


def downgrade() -> None:
    dialect = op.get_context().dialect.name

    op.drop_index("ix_feedback_team_id_created_at", table_name="feedback")
    op.drop_table("feedback")

    if dialect == "sqlite":
        for trigger in ("document_chunks_fts_au", "document_chunks_fts_ad", "document_chunks_fts_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS document_chunks_fts")
    elif dialect == "postgresql":
        op.drop_index("ix_document_chunks_search_vector", table_name="document_chunks")
    op.drop_index(op.f("ix_document_chunks_team_id"), table_name="document_chunks")
    op.drop_index(op.f("ix_document_chunks_document_id"), table_name="document_chunks")
    op.drop_table("document_chunks")

    op.drop_index("ix_documents_team_id_attachment_id", table_name="documents")
    op.drop_index(op.f("ix_documents_team_id"), table_name="documents")
    op.drop_table("documents")
