"""Health checks a container probe can run: ``python -m kitrelay.services.health --check nats,redis,database``.

Kubernetes exec probes, init containers and the image's HEALTHCHECK run this inside the container, so it reads the
same environment (``Settings``) as the gateway or worker beside it and checks what that process depends on:

- ``nats``: the server answers and has JetStream enabled (turns travel on a JetStream stream);
- ``redis``: PING (turn events travel on Redis streams);
- ``database``: ``SELECT 1``;
- ``schema``: the database is at the head revision of the migrations packaged with this code (or at a newer one
  this code does not know), which is what an init container waits for (``--check schema --wait 600``) so new pods
  never run on a schema older than their code;
- ``--url URL``: an HTTP GET answering 2xx (the gateway's ``/readyz`` from a compose healthcheck).

Every check runs at once and within ``--timeout``; each prints one line. The exit code is 0 when all pass, 1 when any
fails or times out, 2 for a usage error. Nothing here retries on its own: probes have their own period and threshold,
and a probe that hangs is worse than one that says no.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx
import nats
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from kitrelay.shared.connections import connect_redis
from kitrelay.shared.settings import Settings
from kitrelay.shared.store.engine import alembic_config, make_engine

CHECKS: Final = ("nats", "redis", "database", "schema")
DEFAULT_CHECKS: Final = ("nats", "redis", "database")
DEFAULT_TIMEOUT_S: Final = 5.0
WAIT_INTERVAL_S: Final = 2.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    elapsed_ms: float

    def line(self) -> str:
        return f"{self.name} {'ok' if self.ok else 'FAILED'} ({self.elapsed_ms:.0f} ms): {self.detail}"


class CheckFailedError(Exception):
    """A dependency answered, but not the way a healthy one does."""


def redact(url: str) -> str:
    """The URL without its password: probe output ends up in events and logs that many people can read."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _silent(_: Exception) -> None:
    # nats-py logs every connection error with a traceback by default; the result line says it once.
    return None


async def check_nats(settings: Settings, timeout_s: float) -> str:
    # Not connect_nats(): it reconnects forever, even on the first connect, so a down server would only ever show
    # up here as a timeout. A probe wants the refusal itself, at once.
    nc = await nats.connect(
        settings.nats_servers,
        name="kitrelay-health",
        connect_timeout=timeout_s,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.2,
        error_cb=_silent,
    )
    try:
        # A NATS without JetStream accepts connections but cannot carry a single turn.
        account = await nc.jetstream(timeout=timeout_s).account_info()
    finally:
        await nc.close()
    where = ",".join(redact(url) for url in settings.nats_servers)
    return f"JetStream at {where}, {account.streams} streams"


async def check_redis(settings: Settings, timeout_s: float) -> str:
    client = await connect_redis(settings.model_copy(update={"CONNECT_RETRIES": 0}))
    try:
        await client.ping()
    finally:
        await client.aclose()
    return f"PING answered at {redact(settings.REDIS_URL)}"


def _require_sqlite_file(database_url: str) -> None:
    """Fail for a SQLite URL naming no existing file: connecting would create an empty database instead."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    if not Path(str(url.database)).exists():
        raise CheckFailedError(f"no database file at {url.database} (run `kitrelay migrate`)")


async def check_database(settings: Settings, timeout_s: float) -> str:
    _require_sqlite_file(settings.DATABASE_URL)
    engine = make_engine(settings.DATABASE_URL)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    return f"SELECT 1 answered by {redact(settings.DATABASE_URL)}"


def _current_heads(connection: Connection) -> set[str]:
    return set(MigrationContext.configure(connection).get_current_heads())


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (CommandError, ResolutionError):
        return False


async def check_schema(settings: Settings, timeout_s: float) -> str:
    _require_sqlite_file(settings.DATABASE_URL)
    script = ScriptDirectory.from_config(alembic_config(settings.DATABASE_URL))
    expected = set(script.get_heads())
    engine = make_engine(settings.DATABASE_URL)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(_current_heads)
    finally:
        await engine.dispose()
    if current == expected:
        return f"at head {', '.join(sorted(expected))}"
    if current and not any(_known(script, revision) for revision in current):
        # A later release already migrated the database. Pods of this release still restart during its rollout
        # (a node drain, a crash); migrations are written to keep the previous release working, so let them.
        return f"at {', '.join(sorted(current))}, newer than this code's {', '.join(sorted(expected))}"
    found = ", ".join(sorted(current)) or "no schema"
    raise CheckFailedError(f"database at {found}, this code needs {', '.join(sorted(expected))}")


def _url_check(url: str) -> Callable[[Settings, float], Awaitable[str]]:
    async def check(_: Settings, timeout_s: float) -> str:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.get(url)
        if not response.is_success:
            raise CheckFailedError(f"HTTP {response.status_code} from {url}: {response.text[:200]}")
        return f"HTTP {response.status_code} from {url}"

    return check


_CHECK_FUNCTIONS: Final[dict[str, Callable[[Settings, float], Awaitable[str]]]] = {
    "nats": check_nats,
    "redis": check_redis,
    "database": check_database,
    "schema": check_schema,
}


async def _run_one(
    name: str, check: Callable[[Settings, float], Awaitable[str]], settings: Settings, timeout_s: float
) -> CheckResult:
    started = time.monotonic()
    try:
        detail = await asyncio.wait_for(check(settings, timeout_s), timeout_s)
        ok = True
    except TimeoutError:
        detail, ok = f"no answer within {timeout_s:g}s", False
    except CheckFailedError as exc:
        detail, ok = str(exc), False
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, False
    return CheckResult(name, ok, detail, (time.monotonic() - started) * 1000)


async def run_checks(
    settings: Settings, checks: Sequence[str], *, urls: Sequence[str] = (), timeout_s: float = DEFAULT_TIMEOUT_S
) -> list[CheckResult]:
    """Run the named checks and the URL checks concurrently, each bounded by `timeout_s`; never raises for a failure."""
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    jobs = [(name, _CHECK_FUNCTIONS[name]) for name in checks] + [(url, _url_check(url)) for url in urls]
    return list(await asyncio.gather(*(_run_one(name, check, settings, timeout_s) for name, check in jobs)))


async def wait_for_checks(
    settings: Settings, checks: Sequence[str], *, urls: Sequence[str] = (), timeout_s: float, wait_s: float
) -> list[CheckResult]:
    """`run_checks` again every few seconds until all pass or `wait_s` is over; the last results."""
    deadline = time.monotonic() + wait_s
    while True:
        results = await run_checks(settings, checks, urls=urls, timeout_s=timeout_s)
        if all(result.ok for result in results) or time.monotonic() >= deadline:
            return results
        for result in results:
            if not result.ok:
                # An init container's log is where an operator looks while a rollout hangs: say what it waits for.
                print(f"waiting: {result.line()}", file=sys.stderr, flush=True)
        await asyncio.sleep(min(WAIT_INTERVAL_S, max(0.0, deadline - time.monotonic())))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kitrelay.services.health",
        description="Check what a kitrelay process depends on; exit 0 when healthy, 1 when not.",
    )
    parser.add_argument(
        "--check",
        help=f"comma-separated checks among {', '.join(CHECKS)} (default: {','.join(DEFAULT_CHECKS)}, "
        "or none when --url is given)",
    )
    parser.add_argument("--url", action="append", default=[], help="also GET this URL and expect 2xx (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds each check may take")
    parser.add_argument("--wait", type=float, default=0.0, help="retry for up to this many seconds until healthy")
    parser.add_argument("--quiet", action="store_true", help="print only failures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.check is not None:
        checks = [name.strip() for name in args.check.split(",") if name.strip()]
    else:
        checks = [] if args.url else list(DEFAULT_CHECKS)
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if not checks and not args.url:
        parser.error("nothing to check")
    if args.timeout <= 0 or args.wait < 0:
        parser.error("--timeout must be positive and --wait not negative")
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"settings FAILED: {exc}", file=sys.stderr)
        return 1
    results = asyncio.run(wait_for_checks(settings, checks, urls=args.url, timeout_s=args.timeout, wait_s=args.wait))
    for result in results:
        if not (args.quiet and result.ok):
            print(result.line(), file=sys.stdout if result.ok else sys.stderr, flush=True)
    return 0 if all(result.ok for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
