"""Which worker run of a turn saved each item, and the newest run of a turn that was redelivered.

A redelivered turn's new attempt removes what a dead attempt saved before it reads the conversation, whether or
not the turn's Redis stream survived; and a run that was superseded (alive but too slow) cannot save any more.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
ID = sa.String(255)


def upgrade() -> None:
    # Nullable columns and an index: plain ALTER TABLE on both dialects, no SQLite table rebuild. Items saved before
    # (and user messages, which belong to no run) have none.
    op.add_column("thread_items", sa.Column("turn_id", ID, nullable=True))
    op.add_column("thread_items", sa.Column("turn_hop", sa.Integer(), nullable=True))
    op.add_column("thread_items", sa.Column("turn_attempt", sa.Integer(), nullable=True))
    op.create_index("ix_thread_items_turn_id", "thread_items", ["turn_id"])
    op.create_table(
        "turn_runs",
        sa.Column("turn_id", ID, nullable=False),
        sa.Column("thread_id", ID, nullable=False),
        sa.Column("hop", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"], ["threads.id"], name=op.f("fk_turn_runs_thread_id_threads"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("turn_id", name=op.f("pk_turn_runs")),
    )
    op.create_index("ix_turn_runs_thread_id", "turn_runs", ["thread_id"])


def downgrade() -> None:
    op.drop_index("ix_turn_runs_thread_id", table_name="turn_runs")
    op.drop_table("turn_runs")
    op.drop_index("ix_thread_items_turn_id", table_name="thread_items")
    with op.batch_alter_table("thread_items") as batch:
        batch.drop_column("turn_attempt")
        batch.drop_column("turn_hop")
        batch.drop_column("turn_id")
