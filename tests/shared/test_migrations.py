"""The Alembic migrations: they build the schema the models describe, on SQLite and PostgreSQL, from scratch."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from kitrelay.shared.store.engine import alembic_config, make_engine, migrate, migrate_async
from kitrelay.shared.store.models import Base, include_in_autogenerate
from tests.databases import postgres_database, sqlite_url

T = TypeVar("T")

TABLES_0001 = {"threads", "thread_items", "attachments", "tasks"}
TABLES_0002 = TABLES_0001 | {"documents", "document_chunks", "feedback"}
TABLES_0003 = TABLES_0002 | {"turns"}
TABLES = TABLES_0003 | {"turn_runs", "task_counters"}
# SQLite's full-text index of document chunks: the FTS5 table and the shadow tables FTS5 keeps its index in (an
# external-content table has no `_content` shadow).
SQLITE_FTS_TABLES = {f"document_chunks_fts{suffix}" for suffix in ("", "_data", "_idx", "_docsize", "_config")}
SQLITE_FTS_TRIGGERS = {"document_chunks_fts_ai", "document_chunks_fts_ad", "document_chunks_fts_au"}
# 0006: the full-text index of thread messages (an FTS5 table with content of its own: a `_content` shadow too).
SQLITE_ITEM_FTS_TRIGGERS = {"thread_items_fts_ai", "thread_items_fts_ad", "thread_items_fts_au"}
SQLITE_ITEM_FTS_TABLES = {
    f"thread_items_fts{suffix}" for suffix in ("", "_data", "_idx", "_docsize", "_config", "_content")
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody has migrated yet, new for each test."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "fresh.db")
        return
    with postgres_database(request.getfixturevalue("pg_url")) as url:
        yield url


def on_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run `work` on a plain (sync-API) connection to `url`, from sync test code."""

    async def run() -> T:
        engine = make_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def tables(url: str) -> set[str]:
    return on_connection(url, lambda c: set(inspect(c).get_table_names()))


def current_revision(url: str) -> str | None:
    return on_connection(url, lambda c: MigrationContext.configure(c).get_current_revision())


def expected_tables(url: str, tables: set[str] = TABLES) -> set[str]:
    """Every table a migrated database has: the models' tables, alembic's, and SQLite's full-text index."""
    fts = SQLITE_FTS_TABLES if url.startswith("sqlite") and "document_chunks" in tables else set()
    if url.startswith("sqlite") and tables == TABLES:
        fts = fts | SQLITE_ITEM_FTS_TABLES
    return tables | fts | {"alembic_version"}


def schema_differences(url: str, *, include_name: Any = include_in_autogenerate) -> list[Any]:
    """What `alembic revision --autogenerate` would find to do, with env.py's filter unless told otherwise."""

    def differences(connection: Connection) -> list[Any]:
        opts = {"compare_type": True, "include_name": include_name}
        context = MigrationContext.configure(connection, opts=opts)
        return list(compare_metadata(context, Base.metadata))

    return on_connection(url, differences)


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    return heads[0]


def test_upgrade_head_creates_the_schema(empty_db_url: str) -> None:
    assert tables(empty_db_url) == set()
    migrate(empty_db_url)
    assert tables(empty_db_url) == expected_tables(empty_db_url)
    assert current_revision(empty_db_url) == head()


def test_upgrading_twice_changes_nothing(empty_db_url: str) -> None:
    migrate(empty_db_url)

    def add_thread(connection: Connection) -> None:
        connection.execute(
            text(
                "INSERT INTO threads (id, team_id, user_id, created_at, updated_at, data) "
                "VALUES ('thr_1', 't', 'u', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}')"
            )
        )
        connection.commit()

    on_connection(empty_db_url, add_thread)
    migrate(empty_db_url)
    assert current_revision(empty_db_url) == head()
    assert on_connection(empty_db_url, lambda c: c.execute(text("SELECT id FROM threads")).scalars().all()) == ["thr_1"]


def test_the_migrated_schema_matches_the_models(empty_db_url: str) -> None:
    """What `alembic revision --autogenerate` would find to do: nothing."""
    migrate(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_autogenerate_ignores_only_the_full_text_search_objects(empty_db_url: str) -> None:
    """Unfiltered, the comparison sees exactly the hand-made search objects; the filter hides nothing else."""
    migrate(empty_db_url)
    unfiltered = schema_differences(empty_db_url, include_name=None)
    if empty_db_url.startswith("sqlite"):
        fts_tables = SQLITE_FTS_TABLES | SQLITE_ITEM_FTS_TABLES
        assert sorted(op[0] for op in unfiltered) == ["remove_table"] * len(fts_tables)
        assert {op[1].name for op in unfiltered} == fts_tables
    else:
        assert sorted(
            (op[0], op[2] if op[0] == "remove_column" else "", op[3].name if op[0] == "remove_column" else op[1].name)
            for op in unfiltered
        ) == [
            ("remove_column", "document_chunks", "search_vector"),
            ("remove_column", "thread_items", "search_vector"),
            ("remove_index", "", "ix_document_chunks_search_vector"),
            ("remove_index", "", "ix_thread_items_search_vector"),
        ]

    def drop_an_index(connection: Connection) -> None:
        connection.execute(text("DROP INDEX ix_documents_team_id"))
        connection.commit()

    on_connection(empty_db_url, drop_an_index)
    assert [(op[0], op[1].name) for op in schema_differences(empty_db_url)] == [("add_index", "ix_documents_team_id")]


def test_downgrade_to_base_and_up_again(empty_db_url: str) -> None:
    migrate(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "base")
    assert tables(empty_db_url) == {"alembic_version"}
    assert current_revision(empty_db_url) is None
    migrate(empty_db_url)
    assert tables(empty_db_url) == expected_tables(empty_db_url)


def test_downgrade_to_0001_drops_the_knowledge_base_and_feedback(empty_db_url: str) -> None:
    migrate(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "0001")
    assert tables(empty_db_url) == expected_tables(empty_db_url, TABLES_0001)
    if empty_db_url.startswith("sqlite"):
        assert sqlite_triggers(empty_db_url) == set()
    migrate(empty_db_url)
    assert tables(empty_db_url) == expected_tables(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_downgrade_to_0002_drops_turns_and_task_request_keys(empty_db_url: str) -> None:
    migrate(empty_db_url)
    command.downgrade(alembic_config(empty_db_url), "0002")
    assert tables(empty_db_url) == expected_tables(empty_db_url, TABLES_0002)
    if empty_db_url.startswith("sqlite"):
        # The FTS triggers on document_chunks survive the batch rebuild of tasks.
        assert len(sqlite_triggers(empty_db_url)) == 3
    migrate(empty_db_url)
    assert tables(empty_db_url) == expected_tables(empty_db_url)
    assert schema_differences(empty_db_url) == []


def test_task_numbers_per_team_keep_the_numbers_tasks_were_shown_with(empty_db_url: str) -> None:
    """0005: tasks made before keep their old number (their id), so history and saved widgets name the same task;
    each team then counts on from its highest. A downgrade drops the numbers and the counters."""
    command.upgrade(alembic_config(empty_db_url), "0003")

    def add_tasks(connection: Connection) -> None:
        for team in ("red", "red", "blue", "red"):
            connection.execute(
                text(
                    "INSERT INTO tasks (team_id, owner_id, title, done, created_at, updated_at) "
                    "VALUES (:team, 'u', 't', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"team": team},
            )
        connection.commit()

    on_connection(empty_db_url, add_tasks)
    migrate(empty_db_url)
    rows = on_connection(
        empty_db_url, lambda c: c.execute(text("SELECT id, team_id, number FROM tasks ORDER BY id")).all()
    )
    assert [(team, number) for _, team, number in rows] == [("red", 1), ("red", 2), ("blue", 3), ("red", 4)]
    assert all(number == task_id for task_id, _, number in rows)
    counters: dict[str, int] = on_connection(
        empty_db_url, lambda c: {team: last for team, last in c.execute(text("SELECT * FROM task_counters")).all()}
    )
    assert counters == {"red": 4, "blue": 3}
    assert schema_differences(empty_db_url) == []

    command.downgrade(alembic_config(empty_db_url), "0003")
    assert tables(empty_db_url) == expected_tables(empty_db_url, TABLES_0003)
    columns = on_connection(empty_db_url, lambda c: {col["name"] for col in inspect(c).get_columns("tasks")})
    assert "number" not in columns


def sqlite_triggers(url: str) -> set[str]:
    return set(
        on_connection(url, lambda c: c.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())
    )


def test_full_text_search_objects_per_dialect(empty_db_url: str) -> None:
    migrate(empty_db_url)
    if empty_db_url.startswith("sqlite"):
        assert sqlite_triggers(empty_db_url) == SQLITE_FTS_TRIGGERS | SQLITE_ITEM_FTS_TRIGGERS
        ddl = on_connection(
            empty_db_url,
            lambda c: c.execute(text("SELECT sql FROM sqlite_master WHERE name = 'document_chunks_fts'")).scalar_one(),
        )
        assert "fts5" in ddl
        assert "content='document_chunks'" in ddl
        assert "porter unicode61" in ddl
        return

    def describe(connection: Connection) -> tuple[Any, ...]:
        generated = connection.execute(
            text(
                "SELECT a.attgenerated::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = 'document_chunks'::regclass AND a.attname = 'search_vector'"
            )
        ).one()
        index = connection.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_document_chunks_search_vector'")
        ).scalar_one()
        return (*generated, index)

    generated, type_name, index = on_connection(empty_db_url, describe)
    assert (generated, type_name) == ("s", "tsvector")
    assert "USING gin (search_vector)" in index


async def test_migrate_async_runs_inside_an_event_loop(empty_db_url: str) -> None:
    await migrate_async(empty_db_url)
    await migrate_async(empty_db_url)
    engine = make_engine(empty_db_url)
    try:
        async with engine.connect() as connection:
            names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    assert names == expected_tables(empty_db_url)


async def test_migrate_also_works_from_async_code(empty_db_url: str) -> None:
    """Blocking, but it must not fail because this thread already runs an event loop."""
    migrate(empty_db_url)
    assert await asyncio.to_thread(tables, empty_db_url) == expected_tables(empty_db_url)


def test_an_open_connection_given_to_alembic_is_used(empty_db_url: str) -> None:
    # The URL in the config points nowhere: only the connection can have been migrated.
    config = alembic_config("postgresql+asyncpg://nobody@127.0.0.1:1/nowhere")

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()

    on_connection(empty_db_url, upgrade)
    assert tables(empty_db_url) == expected_tables(empty_db_url)


def test_sql_can_be_generated_offline(empty_db_url: str) -> None:
    config = alembic_config(empty_db_url)
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    for table in TABLES:
        assert f"CREATE TABLE {table}" in sql
    if empty_db_url.startswith("sqlite"):
        assert "CREATE VIRTUAL TABLE document_chunks_fts USING fts5(" in sql
    else:
        assert "search_vector TSVECTOR GENERATED ALWAYS AS" in sql
        assert "CREATE INDEX ix_thread_items_search_vector ON thread_items USING gin (search_vector)" in sql
    assert tables(empty_db_url) == set()


def test_thread_item_seq_is_the_sqlite_rowid(tmp_path: Path) -> None:
    """Only `INTEGER PRIMARY KEY` aliases the rowid; AUTOINCREMENT keeps a deleted last seq from coming back."""
    url = sqlite_url(tmp_path / "rowid.db")
    migrate(url)
    ddl = on_connection(
        url, lambda c: c.execute(text("SELECT sql FROM sqlite_master WHERE name = 'thread_items'")).scalar_one()
    )
    assert "seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT" in ddl
