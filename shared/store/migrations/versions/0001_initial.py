"""Initial schema: threads, thread items, attachments and tasks.

Revision ID: 0001
Revises:
Create Date: 2025-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
ID = sa.String(255)
# The models read these back as UTC-aware datetimes (UTCDateTime); in the database they are plain timestamptz.
TIMESTAMP = sa.DateTime(timezone=True)
BIG_INT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "threads",
        sa.Column("id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threads")),
    )
    op.create_index("ix_threads_owner", "threads", ["team_id", "user_id", "created_at", "id"])

    op.create_table(
        "thread_items",
        sa.Column("seq", BIG_INT_PK, autoincrement=True, nullable=False),
        sa.Column("id", ID, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"], ["threads.id"], name=op.f("fk_thread_items_thread_id_threads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_thread_items")),
        sa.UniqueConstraint("id", name=op.f("uq_thread_items_id")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_thread_items_thread_id_seq", "thread_items", ["thread_id", "seq"])

    op.create_table(
        "attachments",
        sa.Column("id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("thread_id", ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
    )

    op.create_table(
        "tasks",
        sa.Column("id", BIG_INT_PK, autoincrement=True, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("owner_id", ID, nullable=False),
        sa.Column("assignee_id", ID, nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index(op.f("ix_tasks_team_id"), "tasks", ["team_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_tasks_team_id"), table_name="tasks")
    op.drop_table("tasks")
    op.drop_table("attachments")
    op.drop_index("ix_thread_items_thread_id_seq", table_name="thread_items")
    op.drop_table("thread_items")
    op.drop_index("ix_threads_owner", table_name="threads")
    op.drop_table("threads")
