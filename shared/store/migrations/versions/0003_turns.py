"""Turns (one per answered message or widget action, with status and trace id) and idempotent task creation.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
ID = sa.String(255)
TIMESTAMP = sa.DateTime(timezone=True)
ENUM = sa.String(32)


def upgrade() -> None:
    op.create_table(
        "turns",
        sa.Column("id", ID, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("team_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("agent", ENUM, nullable=False),
        sa.Column("status", ENUM, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("trace_id", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["thread_id"], ["threads.id"], name=op.f("fk_turns_thread_id_threads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_turns")),
    )
    op.create_index("ix_turns_thread_id_created_at", "turns", ["thread_id", "created_at"])
    # A nullable column and a unique index: plain ALTER TABLE on both dialects, no SQLite table rebuild.
    op.add_column("tasks", sa.Column("request_key", ID, nullable=True))
    op.create_index("ix_tasks_request_key", "tasks", ["request_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_tasks_request_key", table_name="tasks")
    op.drop_column("tasks", "request_key")
    op.drop_index("ix_turns_thread_id_created_at", table_name="turns")
    op.drop_table("turns")
