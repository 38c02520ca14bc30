"""SQLite under the store's async engine: statements run on the event loop's own thread, and a writer waits for
SQLite's write lock without blocking that loop.

aiosqlite runs every call (cursor, execute, fetch, close, commit) on a thread of its own and hands each result back
to the event loop: a queue, a wake-up of the loop and a future per call, four calls per statement. SQLite on a
local file answers a statement in microseconds, so those round trips were most of every store call: a write of a
message and a turn record cost 2.1 ms of CPU against 0.16 ms for the same statements run in one go, and the task
worker spent a third of its time on them. `InlineConnection` is aiosqlite's connection (its thread still opens and
closes the file) whose calls run where they are awaited, except a commit, which may checkpoint the WAL.

The one wait that could then block the loop is another process's write lock: SQLite's busy handler sleeps in the
thread that asked. `begin_write` asks for the lock without waiting and sleeps on the event loop between attempts.
A transaction holds the lock only while its statements run (no thread hops in between), which also makes other
processes' waits rarer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL
from sqlalchemy.util import await_

# Waits between attempts at the write lock: short at first (a transaction holds it for well under a millisecond),
# then longer, so a long holder (a migration, a checkpoint) is not polled a thousand times a second.
FIRST_RETRY_S = 0.0002
LONGEST_RETRY_S = 0.02


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the awaiting thread instead of aiosqlite's."""

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)

    async def commit(self) -> None:
        # On aiosqlite's thread, the loop running meanwhile: a commit may checkpoint the WAL (every 1,000 pages it
        # copies them into the database file and syncs it, 6-9 ms on a VM's disk), the one slow step of a write.
        on_thread: Callable[..., Awaitable[None]] = super()._execute
        await on_thread(self._conn.commit)

    @property
    def sqlite(self) -> sqlite3.Connection:
        return self._conn


def async_creator(url: URL) -> Callable[[], Awaitable[InlineConnection]]:
    """What `create_async_engine(async_creator=...)` calls for each new connection to `url`'s database."""
    args, kwargs = SQLiteDialect_aiosqlite().create_connect_args(url)
    # Opened on aiosqlite's thread, used on the event loop's.
    options: dict[str, Any] = {**kwargs, "check_same_thread": False}
    # The file name, and the options SQLAlchemy reads from the URL (uri, timeout, ...): sqlite3.connect's own.
    open_file: Callable[..., sqlite3.Connection] = sqlite3.connect

    def connector() -> sqlite3.Connection:
        return open_file(*args, **options)

    async def connect() -> InlineConnection:
        connection = InlineConnection(connector, iter_chunk_size=64)
        await connection  # its thread opens the file
        return connection

    return connect


def begin_write(connection: sqlite3.Connection, *, timeout_s: float, busy_timeout_ms: int) -> None:
    """BEGIN IMMEDIATE, waiting for the write lock on the event loop (from SQLAlchemy's synchronous side, which
    runs in a greenlet that can await); raises SQLite's "database is locked" once `timeout_s` passed without it.
    `busy_timeout_ms` is the connection's own busy timeout, set again afterwards for the statements that may still
    meet a lock (rarely: a reader while another connection recovers the WAL)."""
    deadline = time.monotonic() + timeout_s
    delay = FIRST_RETRY_S
    connection.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                    raise
            await_(asyncio.sleep(delay))
            delay = min(delay * 2, LONGEST_RETRY_S)
    finally:
        connection.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
