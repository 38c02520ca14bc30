"""Full-text search over the messages of threads (the chat page's thread search: titles and content).

Only the text of user and assistant messages is indexed (not widgets, hidden context or tool calls), per dialect,
and only this migration knows about it (`include_in_autogenerate` hides it from autogenerate):
* PostgreSQL: `thread_items.search_vector`, a STORED generated tsvector of the message's text parts (the 'simple'
  configuration: no stemming, so a search as you type matches word beginnings), with a GIN index.
* SQLite: `thread_items_fts`, an FTS5 table of the same text, kept in step with thread_items by triggers (an upsert
  that replaces an item fires the update trigger; a deleted thread's items go by ON DELETE CASCADE, which fires the
  delete trigger). A later batch migration that rebuilds thread_items drops the triggers with the old table and must
  create them again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from the models: a migration must keep meaning what it meant when written.
MESSAGE_TYPES = "('user_message', 'assistant_message')"
SEARCH_VECTOR = (
    f"CASE WHEN type IN {MESSAGE_TYPES} THEN jsonb_to_tsvector('simple', "
    "jsonb_path_query_array(data::jsonb, '$.content[*].text'), '[\"string\"]') END"
)
# The text parts of an item's content, joined (SQLite's JSON1 functions).
SQLITE_TEXT = "(SELECT group_concat(json_extract(value, '$.text'), ' ') FROM json_each({row}.data, '$.content'))"
SQLITE_INSERT = (
    "INSERT INTO thread_items_fts (rowid, text, thread_id) "
    f"SELECT new.seq, {SQLITE_TEXT.format(row='new')}, new.thread_id WHERE new.type IN {MESSAGE_TYPES};"
)
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE thread_items_fts USING fts5(text, thread_id UNINDEXED, tokenize='unicode61')",
    f"CREATE TRIGGER thread_items_fts_ai AFTER INSERT ON thread_items BEGIN {SQLITE_INSERT} END",
    "CREATE TRIGGER thread_items_fts_ad AFTER DELETE ON thread_items BEGIN "
    "DELETE FROM thread_items_fts WHERE rowid = old.seq; END",
    "CREATE TRIGGER thread_items_fts_au AFTER UPDATE ON thread_items BEGIN "
    f"DELETE FROM thread_items_fts WHERE rowid = old.seq; {SQLITE_INSERT} END",
    # What was written before this migration.
    "INSERT INTO thread_items_fts (rowid, text, thread_id) "
    f"SELECT seq, {SQLITE_TEXT.format(row='thread_items')}, thread_id FROM thread_items WHERE type IN {MESSAGE_TYPES}",
]


def upgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.add_column(
            "thread_items",
            sa.Column("search_vector", postgresql.TSVECTOR(), sa.Computed(SEARCH_VECTOR, persisted=True)),
        )
        op.create_index("ix_thread_items_search_vector", "thread_items", ["search_vector"], postgresql_using="gin")
    elif dialect == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)


def downgrade() -> None:
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        op.drop_index("ix_thread_items_search_vector", table_name="thread_items")
        op.drop_column("thread_items", "search_vector")
    elif dialect == "sqlite":
        for trigger in ("thread_items_fts_au", "thread_items_fts_ad", "thread_items_fts_ai"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS thread_items_fts")
