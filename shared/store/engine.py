"""Database engines, sessions and schema migrations for the store."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext import asyncio as sa_asyncio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from kitrelay.shared.store import sqlite_driver

# Alembic is imported only where the schema is migrated or checked: every gateway and worker process imports this
# module, and Alembic (with Mako and Pygments) adds a twentieth of a second to each start.
if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_POOL_TIMEOUT_S = 30.0
# How long `migrate` waits for the database server to answer before saying it cannot be reached.
CONNECT_TIMEOUT_S = 5.0
# The execution option `read_session` and `read_connection` set on their connection.
_READ_ONLY = "kitrelay_read_only"


def make_engine(database_url: str) -> AsyncEngine:
    """An engine for the store: `sqlite+aiosqlite://...` (embedded) or `postgresql+asyncpg://...`."""
    url = make_url(database_url)
    # Looked up when called, so OpenTelemetry's SQLAlchemy instrumentation (shared/telemetry.py) sees the engine.
    create_async_engine = sa_asyncio.create_async_engine
    if url.get_backend_name() == "sqlite":
        # One connection per process: SQLite has one writer at a time anyway, and every transaction takes the write
        # lock (below). Sessions of one process then queue fairly on the pool, and only one connection per process
        # waits on the file lock, whose busy handler is not fair: with a pool of 15 per process, 50 users starved
        # some writers past the busy timeout ("database is locked").
        # Statements run on the event loop's thread, not aiosqlite's (shared/store/sqlite_driver.py).
        engine = create_async_engine(
            url,
            async_creator=sqlite_driver.async_creator(url),
            pool_size=1,
            max_overflow=0,
            pool_timeout=SQLITE_POOL_TIMEOUT_S,
        )
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        event.listen(engine.sync_engine, "begin", _begin_immediate)
        return engine
    # Pre-ping drops connections a server restart or an idle timeout killed, instead of failing a request.
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_recycle=1800)


def _begin_immediate(connection: Connection) -> None:
    # A deferred transaction that reads, then writes, fails at once with "database is locked" when another process
    # wrote in between (SQLite cannot upgrade its read snapshot; the busy timeout does not apply). Taking the write
    # lock at BEGIN makes concurrent writers of the gateway and the workers queue on the busy timeout instead.
    # A session opened with `read_session` never writes: it reads a WAL snapshot beside the writer, no lock taken.
    if connection.get_execution_options().get(_READ_ONLY):
        connection.exec_driver_sql("BEGIN")
        return
    driver = connection.connection.driver_connection
    if isinstance(driver, sqlite_driver.InlineConnection):
        # The lock is waited for on the event loop: SQLite's busy handler would sleep on the loop's own thread.
        timeout_s = SQLITE_BUSY_TIMEOUT_MS / 1000
        sqlite_driver.begin_write(driver.sqlite, timeout_s=timeout_s, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_sqlite(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # A gateway and several workers share one file: WAL lets readers run beside the writer, and the busy
    # timeout makes a writer wait for the lock instead of failing with "database is locked".
    # The driver's own implicit BEGIN would come first; transactions are begun by _begin_immediate instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Durable across process crashes in WAL mode; only an OS crash can lose the last commits.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextlib.asynccontextmanager
async def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for reads only. On SQLite its transaction takes no write lock, so reads never queue behind the
    writers of other processes (every other transaction takes the lock at BEGIN, see `_begin_immediate`)."""
    async with sessions() as session:
        await session.connection(execution_options={_READ_ONLY: True})
        yield session


@contextlib.asynccontextmanager
async def read_connection(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncConnection]:
    """`read_session`'s connection without the ORM session around it, for the reads on the way to a turn's
    first event (a thread's access check, a turn's history): the session's setup and teardown were a third of a
    one-row read (0.39 against 0.26 ms in a loop), and a process woken for a turn runs such code up to four times slower
    than in a loop. Core statements only; the same read-only transaction."""
    engine = sessions.kw["bind"]
    async with engine.connect() as connection:
        yield await connection.execution_options(**{_READ_ONLY: True})


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the packaged migrations, aimed at `database_url`."""
    from alembic.config import Config  # noqa: PLC0415 (see TYPE_CHECKING above)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a URL-encoded password may contain '%'.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


class DatabaseUnreachableError(ConnectionError):
    """The database cannot be connected to: refused, no such host, no answer in time, or the server turned the
    credentials or the database name down. The message says where (never the password) and why, in one line."""


async def check_reachable(database_url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Connect to the database once, or raise DatabaseUnreachableError within `timeout_s`."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        await asyncio.to_thread(_open_sqlite, url)
        return
    engine = make_engine(database_url)
    try:
        async with asyncio.timeout(timeout_s), engine.connect():
            pass
    except TimeoutError:
        raise DatabaseUnreachableError(_unreachable(url, f"no answer within {timeout_s:g} s")) from None
    except (OSError, SQLAlchemyError) as exc:
        # The driver's own words are the useful part; SQLAlchemy's wrapper adds the statement and a link.
        reason = getattr(exc, "orig", None) or exc
        words = " ".join(str(reason).split()) or type(reason).__name__
        raise DatabaseUnreachableError(_unreachable(url, words)) from None
    finally:
        await engine.dispose()


def _open_sqlite(url: URL) -> None:
    if url.database in (None, "", ":memory:"):
        return
    try:
        # What migrating does first: it creates the file when it is not there yet.
        sqlite3.connect(url.database).close()
    except sqlite3.Error as exc:
        raise DatabaseUnreachableError(_unreachable(url, str(exc))) from None


def _unreachable(url: URL, reason: str) -> str:
    if url.get_backend_name() == "sqlite":
        return f"cannot open the database file {url.database}: {reason}"
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    return f"cannot connect to the database at {where} ({url.render_as_string(hide_password=True)}): {reason}"


def migrate(database_url: str) -> None:
    """Bring the schema up to date (`alembic upgrade head`). Blocks until done; async code should prefer
    `migrate_async`, which does not block its event loop. A database that cannot be reached raises
    DatabaseUnreachableError within CONNECT_TIMEOUT_S, before Alembic starts."""
    from alembic import command  # noqa: PLC0415 (see TYPE_CHECKING above)

    config = alembic_config(database_url)

    def upgrade() -> None:
        asyncio.run(check_reachable(database_url))
        command.upgrade(config, "head")

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        upgrade()
        return
    # env.py runs its own event loop, which cannot start on a thread that already runs one.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kitrelay-migrate") as pool:
        pool.submit(upgrade).result()


async def migrate_async(database_url: str) -> None:
    """`migrate` from async code. Alembic drives its own event loop, so it runs in a thread."""
    await asyncio.to_thread(migrate, database_url)


# What a database that is restarting or failing over raises, whatever the driver: the connection was refused,
# closed under a statement, or the server is starting up or shutting down.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08001", "08003", "08004", "08006"})


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (raised through SQLAlchemy: its error, or what caused
    it): worth answering 503 and trying again, not a failure of the request itself."""
    seen: BaseException | None = exc
    through_sqlalchemy = False
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, DBAPIError):
            if seen.connection_invalidated:
                return True
            through_sqlalchemy = True
        # A connection refused while the pool connects comes through SQLAlchemy unwrapped.
        if (through_sqlalchemy or _raised_by_the_database_layer(seen)) and _says_unavailable(seen):
            return True
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "orig", None)
    return False


_DATABASE_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.", "kitrelay.shared.store.")


def _raised_by_the_database_layer(exc: BaseException) -> bool:
    traceback = exc.__traceback__
    while traceback is not None:
        if str(traceback.tb_frame.f_globals.get("__name__", "")).startswith(_DATABASE_MODULES):
            return True
        traceback = traceback.tb_next
    return False


def _says_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | socket.gaierror):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        # SQLite's OperationalError also says "no such table" or "syntax error": only a locked or unopenable file is
        # an outage.
        return any(word in str(exc) for word in ("locked", "unable to open", "disk I/O"))
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _UNAVAILABLE_SQLSTATES:
        return True
    name = type(exc).__name__
    if name in ("ConnectionDoesNotExistError", "CannotConnectNowError", "ConnectionFailureError"):
        return True
    return name == "InterfaceError" and "connection is closed" in str(exc)
