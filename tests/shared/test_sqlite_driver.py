"""SQLite under the store's engine: statements on the event loop's thread, and the write lock waited for on the
loop, never by blocking it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kitrelay.shared.store import engine as engine_module
from kitrelay.shared.store.engine import make_engine
from kitrelay.shared.store.sqlite_driver import InlineConnection
from tests.databases import sqlite_url

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(sqlite_url(tmp_path / "db.sqlite"))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(text("INSERT INTO counter VALUES (0)"))
    yield engine
    await engine.dispose()


class _Ticks:
    """Counts the event loop's turns every few milliseconds while it runs: a blocked loop counts none."""

    def __init__(self) -> None:
        self.count = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()


def _other_process_holding_the_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE counter SET n = 100")
    return holder


async def _add_one(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE counter SET n = n + 1"))


async def test_statements_run_on_the_event_loops_thread(engine: AsyncEngine) -> None:
    threads: set[int] = set()
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, InlineConnection)
        # SQLite calls it on the thread that runs the statement.
        driver.sqlite.set_trace_callback(lambda _statement: threads.add(threading.get_ident()))
        assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 0
        driver.sqlite.set_trace_callback(None)
    assert threads == {threading.get_ident()}


async def test_a_commit_runs_on_aiosqlites_thread_where_a_wal_checkpoint_does_not_stop_the_loop(
    engine: AsyncEngine,
) -> None:
    threads: dict[str, int] = {}
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, InlineConnection)
        driver.sqlite.set_trace_callback(lambda statement: threads.setdefault(statement, threading.get_ident()))
        async with conn.begin():
            await conn.execute(text("UPDATE counter SET n = n + 1"))
        driver.sqlite.set_trace_callback(None)
    assert threads["UPDATE counter SET n = n + 1"] == threading.get_ident()
    assert threads["COMMIT"] != threading.get_ident()


async def test_a_writer_waits_for_another_processs_lock_while_the_event_loop_runs(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    holder = _other_process_holding_the_lock(tmp_path / "db.sqlite")
    ticks = _Ticks()
    writer = asyncio.create_task(_add_one(engine))
    await asyncio.sleep(0.3)
    waited_ticks = ticks.count
    assert not writer.done()  # still waiting for the lock
    holder.execute("COMMIT")
    await asyncio.wait_for(writer, timeout=5.0)
    ticks.stop()
    holder.close()
    # SQLite's busy handler would have slept on this thread: no turn of the loop in 0.3 s.
    assert waited_ticks >= 20
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 101  # after the other's write


async def test_a_writer_gives_up_after_the_busy_timeout_and_the_connection_stays_usable(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    holder = _other_process_holding_the_lock(tmp_path / "db.sqlite")
    ticks = _Ticks()
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        await _add_one(engine)
    waited = time.monotonic() - started
    ticks.stop()
    holder.execute("ROLLBACK")
    holder.close()
    assert 0.15 <= waited < 2.0
    assert ticks.count >= 10
    await _add_one(engine)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT n FROM counter"))).scalar_one() == 1
        # Its own busy timeout is back for the statements that may still meet a lock.
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() == 200
