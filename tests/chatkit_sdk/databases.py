"""A migrated, empty database for each store the ChatKit SDK's tests make, on SQLite or PostgreSQL.

The SDK's tests use fixed ids ("test_thread", "msg_1", "atc_1") in every test, and kitrelay's ids are unique
store-wide, so each store gets a database of its own. Migrating one costs half a second, so each dialect is
migrated once per session (a template) and the stores get copies: SQLite files copied with the backup API;
PostgreSQL databases made with `CREATE DATABASE ... TEMPLATE` and, since making and dropping a database costs the
server far more than emptying one, emptied (every table of the store's models) when a test is done and handed to
the next test's store.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from kitrelay.shared.store.engine import make_engine, make_sessionmaker
from kitrelay.shared.store.models import Base
from tests.databases import _admin, sqlite_url


class Template(Protocol):
    """A migrated database that empty ones like it are made from."""

    dialect: str

    def take(self) -> str:
        """An empty, migrated database nobody else uses; its URL."""

    async def give_back(self, url: str) -> None:
        """Done with a database `take` gave (its engines disposed of)."""


class SqliteTemplate:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._copies = itertools.count(1)

    def take(self) -> str:
        target = self._path.with_name(f"store-{next(self._copies)}.db")
        # The backup API copies a consistent database, whatever the template's WAL still holds.
        with closing(sqlite3.connect(self._path)) as source, closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
        return sqlite_url(target)

    async def give_back(self, url: str) -> None:
        database = make_url(url).database
        assert database is not None
        await asyncio.to_thread(_remove_sqlite_files, database)


def _remove_sqlite_files(database: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(database + suffix).unlink(missing_ok=True)


class PostgresTemplate:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self._url = make_url(url)
        self._copies = itertools.count(1)
        self._idle: list[str] = []
        self._made: list[URL] = []

    def take(self) -> str:
        if self._idle:
            return self._idle.pop()
        name = f"{self._url.database}_s{next(self._copies)}"
        statement = f'CREATE DATABASE "{name}" TEMPLATE "{self._url.database}"'
        # A store is made in synchronous code (`SQLiteStore(path)`), often inside a running event loop.
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, _admin(self._url, statement)).result()
        copy = self._url.set(database=name)
        self._made.append(copy)
        return copy.render_as_string(hide_password=False)

    async def give_back(self, url: str) -> None:
        """Empty the database for the next store: a DELETE per table, children first (on tables this small, far
        cheaper than TRUNCATE)."""
        deletes = "; ".join(f'DELETE FROM "{table.name}"' for table in reversed(Base.metadata.sorted_tables))
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                # asyncpg's own execute: several statements in one round trip (the simple query protocol).
                driver = (await connection.get_raw_connection()).driver_connection
                assert driver is not None
                await driver.execute(deletes)
        finally:
            await engine.dispose()
        self._idle.append(url)

    def drop_all(self) -> None:
        for copy in self._made:
            asyncio.run(_admin(self._url, f'DROP DATABASE IF EXISTS "{copy.database}" WITH (FORCE)'))


class StoreDatabases:
    """The databases of one test's stores, one per store path; `close` disposes of their engines and gives the
    databases back."""

    def __init__(self, template: Template, *, naive_local_times: bool = False) -> None:
        self.template = template
        # The stores hand timestamps back as upstream's store does (tests/chatkit_sdk/conftest.py DELIBERATE).
        self.naive_local_times = naive_local_times
        self._sessions: dict[str, async_sessionmaker[AsyncSession]] = {}
        self._engines: list[tuple[str, AsyncEngine]] = []

    def sessions_for(self, path: str) -> async_sessionmaker[AsyncSession]:
        """Sessions on the database of the store at `path`: a new one the first time, the same one after."""
        sessions = self._sessions.get(path)
        if sessions is None:
            url = self.template.take()
            engine = make_engine(url)
            self._engines.append((url, engine))
            sessions = self._sessions[path] = make_sessionmaker(engine)
        return sessions

    async def close(self) -> None:
        for url, engine in self._engines:
            await engine.dispose()
            await self.template.give_back(url)
        self._engines.clear()
        self._sessions.clear()
