"""The ChatKit SDK's own store and server tests (test_sdk_store.py, test_sdk_server.py), run against kitrelay's
`SqlStore` on SQLite and on PostgreSQL: each test once per dialect, each store on a migrated database of its own.

The few tests kitrelay deliberately fails are listed in DELIBERATE, with the reason; they still run, and must fail
for exactly that reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from chatkit.store import NotFoundError

from kitrelay.shared.store.engine import migrate
from tests.chatkit_sdk.databases import PostgresTemplate, SqliteTemplate, StoreDatabases, Template
from tests.chatkit_sdk.helpers.mock_store import use_databases
from tests.databases import postgres_database, sqlite_url

HERE = Path(__file__).parent
# The modules that expose the SDK's own tests; the other tests here are kitrelay's.
SDK_MODULES = ("test_sdk_store.py", "test_sdk_server.py")


@dataclass(frozen=True)
class Difference:
    """Where kitrelay's store deliberately answers otherwise than upstream's, and what an SDK test meeting it fails
    with."""

    reason: str
    error: type[BaseException]


AWARE_TIMES = Difference(
    "kitrelay's store gives timestamps back timezone-aware, in UTC (shared/store/models.as_utc); the test compares "
    "them to the naive datetime.now() it built its items with",
    AssertionError,
)
NOT_FOUND = Difference(
    "another user's thread raises NotFoundError, as one that does not exist does, where upstream's store answers an "
    "empty page (an id never tells whether someone else's thread exists)",
    NotFoundError,
)
# SDK test name (without its parameters) -> the differences it meets, in the order it meets them. Such a test is
# marked xfail(strict=True) for the error of the first: it still runs, and would fail the run by passing.
#
# A test that meets AWARE_TIMES also runs as `[...-local]`, on a store that hands its timestamps back as upstream's
# does (naive local time): there it must pass, or fail with its next difference. So each reason here is checked to
# be the whole story, not merely the first thing that went wrong.
DELIBERATE: dict[str, tuple[Difference, ...]] = {
    "test_save_and_load_thread_items": (AWARE_TIMES,),
    "test_calls_action": (AWARE_TIMES,),
    "test_calls_action_sync": (AWARE_TIMES,),
    "test_retry_after_item": (AWARE_TIMES,),
    "test_thread_items_isolation_by_user": (AWARE_TIMES, NOT_FOUND),
}


def _runs_sdk_tests(node: pytest.Item) -> bool:
    return node.path.parent == HERE and node.path.name in SDK_MODULES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _runs_sdk_tests(metafunc.definition):
        return
    metafunc.parametrize("sdk_dialect", ["sqlite", "postgresql"], indirect=True)
    if AWARE_TIMES in DELIBERATE.get(metafunc.function.__name__, ()):
        metafunc.parametrize("sdk_times", ["utc", "local"], indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not _runs_sdk_tests(item) or not isinstance(item, pytest.Function):
            continue
        differences = DELIBERATE.get(item.originalname, ())
        if getattr(item, "callspec", None) is not None and item.callspec.params.get("sdk_times") == "local":
            differences = tuple(difference for difference in differences if difference is not AWARE_TIMES)
        if differences:
            reason = "; and ".join(difference.reason for difference in differences)
            item.add_marker(pytest.mark.xfail(reason=reason, raises=differences[0].error, strict=True))


@pytest.fixture(scope="session")
def sdk_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    path = tmp_path_factory.mktemp("chatkit-sdk") / "template.db"
    migrate(sqlite_url(path))
    return SqliteTemplate(path)


@pytest.fixture(scope="session")
def sdk_postgresql_template(pg_url: str | None) -> Iterator[PostgresTemplate]:
    with postgres_database(pg_url) as url:
        migrate(url)
        template = PostgresTemplate(url)
        try:
            yield template
        finally:
            template.drop_all()


@pytest.fixture(autouse=True)
def sdk_dialect(request: pytest.FixtureRequest) -> str | None:
    """The database an SDK test's stores use (each runs once per dialect); None for the other tests here."""
    dialect: str | None = getattr(request, "param", None)
    return dialect


@pytest.fixture
def sdk_template(request: pytest.FixtureRequest, sdk_dialect: str | None) -> Template | None:
    if sdk_dialect is None:
        return None
    template: Template = request.getfixturevalue(f"sdk_{sdk_dialect}_template")
    return template


@pytest.fixture(autouse=True)
def sdk_times(request: pytest.FixtureRequest) -> str:
    """How the stores hand timestamps back: "utc", kitrelay's way; "local", upstream's (see DELIBERATE)."""
    times: str = getattr(request, "param", "utc")
    return times


@pytest_asyncio.fixture(autouse=True)
async def sdk_store_databases(sdk_template: Template | None, sdk_times: str) -> AsyncIterator[StoreDatabases | None]:
    """The databases of the stores the test makes (`SQLiteStore(path)`), given back when it ends."""
    if sdk_template is None:
        yield None
        return
    databases = StoreDatabases(sdk_template, naive_local_times=sdk_times == "local")
    use_databases(databases)
    try:
        yield databases
    finally:
        use_databases(None)
        await databases.close()
