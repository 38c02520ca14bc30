"""`helpers.mock_store.SQLiteStore`, as the ChatKit SDK's own tests import it: here it is kitrelay's `SqlStore`.

Upstream's `SQLiteStore(db_path)` is a small store of its own on the in-memory SQLite database `db_path` names.
This one is kitrelay's store on a migrated database of its own, SQLite or PostgreSQL, whichever the running test
is parametrized with (tests/chatkit_sdk/conftest.py). The same `db_path` gives the same database until the test
ends: one SDK test swaps its server's store for another on the path of the first.
"""

from __future__ import annotations

import itertools
from typing import TypeVar

from chatkit.types import Page, ThreadItem, ThreadMetadata

from kitrelay.shared.store.chatkit_store import SqlStore
from tests._types import RequestContext
from tests.chatkit_sdk.databases import StoreDatabases

T = TypeVar("T", ThreadMetadata, ThreadItem)

_unnamed = itertools.count(1)
_databases: StoreDatabases | None = None


def use_databases(databases: StoreDatabases | None) -> None:
    """Where the stores made from now on keep their data (set for each test by tests/chatkit_sdk/conftest.py)."""
    global _databases  # noqa: PLW0603 (the SDK's tests build stores with nothing but a path)
    _databases = databases


class SQLiteStore(SqlStore[RequestContext]):
    def __init__(self, db_path: str | None = None) -> None:
        if _databases is None:
            raise RuntimeError("SQLiteStore is made for the ChatKit SDK's tests, in tests/chatkit_sdk/ only")
        self.db_path = db_path or f"unnamed-{next(_unnamed)}"
        self._naive_local_times = _databases.naive_local_times
        super().__init__(_databases.sessions_for(self.db_path))

    # With `naive_local_times`, what the store reads comes back with naive local timestamps, as upstream's store
    # gives them: the variant that checks a timezone difference is all that fails a test (conftest.DELIBERATE).

    async def load_thread(self, thread_id: str, context: RequestContext) -> ThreadMetadata:
        return self._times(await super().load_thread(thread_id, context))

    async def load_threads(
        self, limit: int, after: str | None, order: str, context: RequestContext
    ) -> Page[ThreadMetadata]:
        page = await super().load_threads(limit, after, order, context)
        return page.model_copy(update={"data": [self._times(thread) for thread in page.data]})

    async def load_thread_items(
        self, thread_id: str, after: str | None, limit: int, order: str, context: RequestContext
    ) -> Page[ThreadItem]:
        page = await super().load_thread_items(thread_id, after, limit, order, context)
        return page.model_copy(update={"data": [self._times(item) for item in page.data]})

    async def load_item(self, thread_id: str, item_id: str, context: RequestContext) -> ThreadItem:
        return self._times(await super().load_item(thread_id, item_id, context))

    def _times(self, value: T) -> T:
        if self._naive_local_times:
            value.created_at = value.created_at.astimezone().replace(tzinfo=None)
        return value
