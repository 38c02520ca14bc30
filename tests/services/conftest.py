"""Fixtures for the service tests: one migrated database per dialect (see tests/databases.py)."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kitrelay.services.tasks import TaskService
from tests.databases import db_engine, db_sessions, migrated_db_url, postgres_database_url, sqlite_database_url

__all__ = [
    "db_engine",
    "db_sessions",
    "migrated_db_url",
    "postgres_database_url",
    "sqlite_database_url",
    "task_service",
]


@pytest.fixture
def task_service(db_sessions: async_sessionmaker[AsyncSession]) -> TaskService:
    return TaskService(db_sessions)
