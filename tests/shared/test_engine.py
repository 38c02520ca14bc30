"""The store's engines: SQLite's locking as several processes share one file (each engine here is one process's
connection), and read sessions and read connections on both dialects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kitrelay.shared.store.engine import (
    make_engine,
    make_sessionmaker,
    migrate_async,
    read_connection,
    read_session,
)
from tests.databases import sqlite_url

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def two_engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    url = sqlite_url(tmp_path / "shared.db")
    await migrate_async(url)
    first, second = make_engine(url), make_engine(url)
    async with first.begin() as conn:
        await conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(text("INSERT INTO counter VALUES (0)"))
    yield first, second
    await first.dispose()
    await second.dispose()


async def _count(sessions: async_sessionmaker[AsyncSession], *, on_a_connection: bool = False) -> int:
    """The counter, read in a read session (or on a read connection)."""
    query = text("SELECT n FROM counter")
    if on_a_connection:
        async with read_connection(sessions) as connection:
            return int((await connection.execute(query)).scalar_one())
    async with read_session(sessions) as session:
        return int((await session.execute(query)).scalar_one())


@pytest.mark.parametrize("on_a_connection", [False, True], ids=["read session", "read connection"])
async def test_a_read_does_not_wait_for_another_process_writing(
    two_engines: tuple[AsyncEngine, AsyncEngine], on_a_connection: bool
) -> None:
    writer, reader = (make_sessionmaker(engine) for engine in two_engines)
    async with writer() as session, session.begin():
        await session.execute(text("UPDATE counter SET n = n + 1"))
        # The write lock is held (and uncommitted): a read sees the last committed value at once.
        assert await asyncio.wait_for(_count(reader, on_a_connection=on_a_connection), timeout=1.0) == 0
    assert await _count(reader, on_a_connection=on_a_connection) == 1
    # And the read left its connection to the pool with no transaction open: a write can take the lock.
    async with reader() as session, session.begin():
        await session.execute(text("UPDATE counter SET n = n + 1"))
    assert await _count(writer, on_a_connection=on_a_connection) == 2


async def test_a_writing_session_waits_for_the_write_lock_instead_of_failing(
    two_engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    first, second = (make_sessionmaker(engine) for engine in two_engines)

    async def read_then_write(sessions: async_sessionmaker[AsyncSession]) -> None:
        # Read, then write from what was read: a deferred transaction would fail with "database is locked" when the
        # other process commits in between; this one queues for the lock at BEGIN.
        async with sessions() as session, session.begin():
            n = (await session.execute(text("SELECT n FROM counter"))).scalar_one()
            await asyncio.sleep(0.05)
            await session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    async with first() as session, session.begin():
        await session.execute(text("UPDATE counter SET n = n + 1"))
        waiting = asyncio.create_task(read_then_write(second))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # it waits for the lock this transaction holds
    await asyncio.wait_for(waiting, timeout=5.0)
    await asyncio.gather(*(read_then_write(sessions) for sessions in (first, second) for _ in range(5)))
    # No update was lost: every read-then-write ran alone.
    assert await _count(first) == 12


async def test_read_sessions_read_on_either_dialect(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with read_session(db_sessions) as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1


async def test_read_connections_read_on_either_dialect(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    async with read_connection(db_sessions) as connection:
        assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
        assert connection.sync_connection is not None
        assert connection.sync_connection.get_execution_options()["kitrelay_read_only"] is True
