"""The gateway's store on a real database (each dialect): a request reads a thread from the database once, however
often the access check and the ChatKit SDK ask for it, and never hands out the copy it keeps."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from chatkit.store import NotFoundError
from chatkit.types import ThreadMetadata
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kitrelay.gateway.context import RequestContext
from kitrelay.gateway.store import GatewayStore
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import Identity
from tests.databases import db_engine, db_sessions, migrated_db_url, postgres_database_url, sqlite_database_url

__all__ = ["db_engine", "db_sessions", "migrated_db_url", "postgres_database_url", "sqlite_database_url"]

ALICE = Identity(user_id="alice", team_id="acme")


@pytest.fixture
def thread_reads(db_engine: AsyncEngine) -> Iterator[list[str]]:
    """The SELECTs of the threads table the engine runs, as they happen."""
    reads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM threads" in statement:
            reads.append(statement)

    event.listen(db_engine.sync_engine, "before_cursor_execute", record)
    yield reads
    event.remove(db_engine.sync_engine, "before_cursor_execute", record)


async def test_a_request_reads_its_thread_once_and_each_caller_gets_its_own_copy(
    db_sessions: async_sessionmaker[AsyncSession], thread_reads: list[str]
) -> None:
    store = GatewayStore(db_sessions)
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(), title="first")
    await store.save_thread(thread, context=RequestContext(identity=ALICE))
    request = RequestContext(identity=ALICE)

    checked = await store.load_thread(thread.id, request)
    sdk_copy = await store.load_thread(thread.id, request)
    assert len(thread_reads) == 1
    assert sdk_copy == checked and sdk_copy is not checked
    sdk_copy.title = "changed, not saved"
    assert (await store.load_thread(thread.id, request)).title == "first"

    # A save is read back from the database, by this request and by the next.
    sdk_copy.title = "renamed"
    await store.save_thread(sdk_copy, request)
    assert (await store.load_thread(thread.id, request)).title == "renamed"
    assert (await store.load_thread(thread.id, RequestContext(identity=ALICE))).title == "renamed"
    assert len(thread_reads) == 3


async def test_a_thread_deleted_in_the_request_is_gone_for_it(db_sessions: async_sessionmaker[AsyncSession]) -> None:
    store = GatewayStore(db_sessions)
    request = RequestContext(identity=ALICE)
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now())
    await store.save_thread(thread, request)
    await store.load_thread(thread.id, request)
    await store.delete_thread(thread.id, request)
    with pytest.raises(NotFoundError):
        await store.load_thread(thread.id, request)
