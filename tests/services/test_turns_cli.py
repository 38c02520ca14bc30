"""`kitrelay turns THREAD_ID` (services/turns_cli.py) against a migrated SQLite file, through Typer's test runner."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from sqlalchemy import insert
from typer.testing import CliRunner

from kitrelay.services.turns import TurnRecords
from kitrelay.services.turns_cli import turns
from kitrelay.shared.messages import Identity
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate
from kitrelay.shared.store.models import ThreadRow
from tests.databases import sqlite_url

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
runner = CliRunner()

# Mounted as `kitrelay turns` (services/cli.py); a one-command app of its own here.
app = typer.Typer()
app.command()(turns)
app.command("noop")(lambda: None)  # two commands, so the first takes its name as Typer's subcommand


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = sqlite_url(tmp_path / "turns.db")
    migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("TRACE_DASHBOARD_URL", raising=False)
    monkeypatch.chdir(tmp_path)

    async def seed() -> None:
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        now = datetime.now(UTC)
        thread = {"id": "thr_1", "team_id": "acme", "user_id": "alice", "created_at": now, "updated_at": now}
        async with sessions() as session, session.begin():
            await session.execute(insert(ThreadRow).values(thread | {"data": "{}"}))
        records = TurnRecords(sessions)
        alice = Identity(user_id="alice", team_id="acme")
        await records.start(alice, turn_id="turn_1", thread_id="thr_1", agent="triage", trace_id=TRACE_ID)
        await records.finish("turn_1", "completed")
        await records.start(alice, turn_id="turn_2", thread_id="thr_1", agent="task")
        await engine.dispose()

    asyncio.run(seed())
    return url


def test_lists_a_threads_turns_with_their_trace_ids(database_url: str) -> None:
    result = runner.invoke(app, ["turns", "thr_1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [first] = [line for line in lines if "turn_1" in line]
    assert "triage" in first and "completed" in first and TRACE_ID in first
    [second] = [line for line in lines if "turn_2" in line]
    assert "task" in second and "queued" in second
    assert "http" not in result.output, "no dashboard configured: no links"


def test_piped_rows_are_whole(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Piped, Rich would cut the table at 80 columns: part of the started, ended and trace id columns, and the border.
    monkeypatch.delenv("COLUMNS")
    result = runner.invoke(app, ["turns", "thr_1"])
    assert result.exit_code == 0, result.output
    [first] = [line for line in result.output.splitlines() if "turn_1" in line]
    assert TRACE_ID in first and first.count(" UTC") == 2
    assert first.rstrip().endswith("│")


def test_json_lines_with_dashboard_links(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACE_DASHBOARD_URL", "http://localhost:16686/trace/{trace_id}")
    result = runner.invoke(app, ["turns", "thr_1", "--json"])
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.output.splitlines())
    assert (first["id"], first["trace_id"]) == ("turn_1", TRACE_ID)
    assert first["trace_url"] == f"http://localhost:16686/trace/{TRACE_ID}"
    assert (second["id"], second["trace_id"], second["trace_url"]) == ("turn_2", None, None)


def test_an_unknown_thread_is_an_error_not_a_traceback(database_url: str) -> None:
    result = runner.invoke(app, ["turns", "thr_nope"])
    assert result.exit_code == 1
    assert "no turns for thread thr_nope" in result.output
