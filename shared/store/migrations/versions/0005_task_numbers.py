"""Task numbers per team: what users see and name ("task #3") counts from 1 in each team.

Existing tasks keep the number they were shown with (their id), so chat history and widgets drawn before this
migration still name the right task; each team's counter starts after its highest one.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
ID = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "task_counters",
        sa.Column("team_id", ID, nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("team_id", name=op.f("pk_task_counters")),
    )
    # NOT NULL with a default to fill existing rows: a plain ALTER TABLE on both dialects, no SQLite table rebuild.
    op.add_column("tasks", sa.Column("number", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute("UPDATE tasks SET number = id")
    op.execute(
        "INSERT INTO task_counters (team_id, last_number) SELECT team_id, MAX(number) FROM tasks GROUP BY team_id"
    )
    if op.get_context().dialect.name != "sqlite":
        # The service always gives a number; SQLite keeps the default (dropping it would rebuild the table).
        op.alter_column("tasks", "number", server_default=None)
    op.create_index("ix_tasks_team_id_number", "tasks", ["team_id", "number"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_tasks_team_id_number", table_name="tasks")
    op.drop_column("tasks", "number")
    op.drop_table("task_counters")
