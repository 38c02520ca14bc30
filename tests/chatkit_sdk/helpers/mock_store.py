"""`helpers.mock_store.SQLiteStore`, as the ChatKit SDK's own tests import it: here it is kitrelay's `SqlStore`.

Upstream's `SQLiteStore(db_path)` is a small store of its own on the in-memory SQLite database `db_path` names.
This one is kitrelay's store on a migrated database of its own, SQLite or PostgreSQL, whichever the running test
is parametrized with (tests/chatkit_sdk/conftest.py). The same `db_path` gives the same database until the test
ends: one SDK test swaps its server's store for another on the path of the first.
"""

from __future__ import annotations

import itertools

from kitrelay.shared.store.chatkit_store import SqlStore
from tests._types import RequestContext
from tests.chatkit_sdk.databases import StoreDatabases

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
        super().__init__(_databases.sessions_for(self.db_path))
