"""Fixtures for the store tests: one migrated database per dialect (see tests/databases.py) and a store on it."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.shared.store.chatkit_store import SqlStore
from tests.databases import db_engine, db_sessions, migrated_db_url, postgres_database_url, sqlite_database_url

__all__ = ["db_engine", "db_sessions", "migrated_db_url", "postgres_database_url", "sqlite_database_url", "store"]


@pytest.fixture
def store(db_sessions: async_sessionmaker[AsyncSession]) -> SqlStore:
    return SqlStore(db_sessions)
