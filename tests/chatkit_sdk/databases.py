"""A migrated database for each store the ChatKit SDK's tests make, on SQLite or PostgreSQL.

The SDK's tests use fixed ids ("test_thread", "msg_1", "atc_1") in every test, and kitrelay's ids are unique
store-wide, so each store gets a database of its own. Migrating one costs half a second, so each dialect is
migrated once per session (a template) and copied for every store: SQLite with the backup API, PostgreSQL with
`CREATE DATABASE ... TEMPLATE`. The copies live as long as the test that made them.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kitrelay.shared.store.engine import make_engine, make_sessionmaker
from tests.databases import _admin, sqlite_url


class Template(Protocol):
    """A migrated database that new, identical ones are made from."""

    dialect: str

    def copy(self) -> str:
        """A new database like the template; its URL."""

    async def drop(self, url: str) -> None:
        """Remove a database `copy` made."""


class SqliteTemplate:
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._copies = itertools.count(1)

    def copy(self) -> str:
        target = self._path.with_name(f"store-{next(self._copies)}.db")
        # The backup API copies a consistent database, whatever the template's WAL still holds.
        with closing(sqlite3.connect(self._path)) as source, closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
        return sqlite_url(target)

    async def drop(self, url: str) -> None:
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

    def copy(self) -> str:
        name = f"{self._url.database}_s{next(self._copies)}"
        statement = f'CREATE DATABASE "{name}" TEMPLATE "{self._url.database}"'
        # A store is made in synchronous code (`SQLiteStore(path)`), often inside a running event loop.
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, _admin(self._url, statement)).result()
        return self._url.set(database=name).render_as_string(hide_password=False)

    async def drop(self, url: str) -> None:
        await _admin(self._url, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


class StoreDatabases:
    """The databases of one test's stores, one per store path; `close` disposes of their engines and drops them."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self._sessions: dict[str, async_sessionmaker[AsyncSession]] = {}
        self._engines: list[tuple[str, AsyncEngine]] = []

    def sessions_for(self, path: str) -> async_sessionmaker[AsyncSession]:
        """Sessions on the database of the store at `path`: a new one the first time, the same one after."""
        sessions = self._sessions.get(path)
        if sessions is None:
            url = self.template.copy()
            engine = make_engine(url)
            self._engines.append((url, engine))
            sessions = self._sessions[path] = make_sessionmaker(engine)
        return sessions

    async def close(self) -> None:
        for url, engine in self._engines:
            await engine.dispose()
            await self.template.drop(url)
        self._engines.clear()
        self._sessions.clear()
