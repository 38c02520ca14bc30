"""Database fixtures shared by the store and task-service tests: the same tests run on SQLite and PostgreSQL.

SQLite is a temporary file. PostgreSQL is the server of the session fixture ``pg_url`` (tests/infra.py:
``KITRELAY_TEST_PG_URL``, else Docker, else 127.0.0.1:5432); each test session gets its own uniquely named
database on it, dropped at the end. Without a reachable server the PostgreSQL cases are skipped, saying why.

Tests isolate themselves by acting as fresh random users and teams (``new_identity``), the way real tenants are
isolated, so they can share one migrated database per session.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from kitrelay.shared.messages import Identity
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate

# Test ids ("sqlite", "postgresql") and the session fixture that provides each one's database.
_URL_FIXTURES = {"sqlite": "sqlite_database_url", "postgresql": "postgres_database_url"}
_PG_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StoreContext:
    """The smallest context the store accepts (it only needs an identity)."""

    identity: Identity


def new_identity(team_id: str | None = None) -> Identity:
    """A user nobody else in the session uses, in a new team unless one is given."""
    return Identity(user_id=f"user_{secrets.token_hex(6)}", team_id=team_id or f"team_{secrets.token_hex(6)}")


@contextmanager
def statements(engine: AsyncEngine, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """The statements the database receives that `keep` picks, in order, while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if keep(statement):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextmanager
def sqlite_statements(engine: AsyncEngine, keep: Callable[[str], bool]) -> Iterator[list[str]]:
    """The statements SQLite itself runs that `keep` picks, in order, while the block runs: SQLAlchemy's and those
    the driver sends on its own (a write transaction's BEGIN IMMEDIATE, shared/store/sqlite_driver.py)."""
    seen: list[str] = []
    traced: list[sqlite3.Connection] = []

    def trace(statement: str) -> None:
        if keep(statement):
            seen.append(statement)

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        connection = dbapi_connection.driver_connection.sqlite
        connection.set_trace_callback(trace)
        traced.append(connection)

    event.listen(engine.sync_engine, "checkout", on_checkout)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "checkout", on_checkout)
        for connection in traced:
            connection.set_trace_callback(None)


def is_select_of(table: str) -> Callable[[str], bool]:
    return lambda statement: statement.lstrip().upper().startswith("SELECT") and table in statement


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


async def _admin(server_url: URL, sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction.
    engine = create_async_engine(
        server_url,
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": _PG_CONNECT_TIMEOUT_S},
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


@contextmanager
def postgres_database(server_url: str | None) -> Iterator[str]:
    """A new, empty database on the server of ``server_url`` (its own database is only used to connect)."""
    if server_url is None:
        pytest.skip("no PostgreSQL server: set KITRELAY_TEST_PG_URL, run Docker, or listen on 127.0.0.1:5432")
    server = make_url(server_url)
    name = f"kitrelay_test_{secrets.token_hex(6)}"
    try:
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        pytest.skip(f"PostgreSQL at {server.host}:{server.port} is unusable ({type(exc).__name__}: {exc})")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a test that failed half-way may have left a connection open.
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = sqlite_url(tmp_path_factory.mktemp("store") / "kitrelay.db")
    migrate(url)
    return url


@pytest.fixture(scope="session")
def postgres_database_url(pg_url: str | None) -> Iterator[str]:
    with postgres_database(pg_url) as url:
        migrate(url)
        yield url


@pytest.fixture(params=sorted(_URL_FIXTURES))
def migrated_db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database, once per dialect. Fixtures are looked up lazily so a missing server skips only its
    own cases."""
    url: str = request.getfixturevalue(_URL_FIXTURES[request.param])
    return url


@pytest_asyncio.fixture
async def db_engine(migrated_db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(migrated_db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def db_sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(db_engine)
