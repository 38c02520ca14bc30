"""Alembic environment for the kitrelay store.

Where the database comes from, first match wins:

1. `config.attributes["connection"]`: an open (sync) Connection, e.g. from `AsyncConnection.run_sync`.
2. `sqlalchemy.url` in the config: what `kitrelay.shared.store.engine.migrate` sets.
3. kitrelay's `DATABASE_URL` setting, for the `alembic -c shared/store/alembic.ini ...` command line.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from kitrelay.shared.settings import get_settings
from kitrelay.shared.store.models import Base, include_in_autogenerate

config = context.config
target_metadata = Base.metadata

# Only the command line configures logging; an app that migrates at startup keeps its own logging setup.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or get_settings().DATABASE_URL


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # The full-text search objects are made by hand per dialect; autogenerate must leave them alone.
        include_name=include_in_autogenerate,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run_on(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    # A throwaway engine without kitrelay's SQLite pragmas: batch rebuilds must run with foreign keys off, or
    # dropping the old copy of a parent table would cascade-delete its children.
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        include_name=include_in_autogenerate,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_on(connection)
    else:
        asyncio.run(_run_async(_database_url()))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
