"""`kitrelay tasks` (services/tasks_cli.py) against a migrated SQLite file and the real Redis, through Typer's test
runner: each change is saved and published to the team's event stream; mistakes are one red line, exit code 1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner, Result

from kitrelay.services.task_events import EVENT_FIELD
from kitrelay.services.tasks_cli import app
from kitrelay.shared.names import team_events_key
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, unique_namespace: str) -> str:
    url = sqlite_url(tmp_path / "tasks.db")
    migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("NAMESPACE", unique_namespace)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    return unique_namespace


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def changes(redis_url: str, namespace: str, team: str) -> list[tuple[str, str, str]]:
    async def read() -> list[tuple[str, str, str]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(team_events_key(namespace, team))
            )
        finally:
            await client.aclose()
        events = [json.loads(fields[EVENT_FIELD.encode()]) for _, fields in entries]
        return [(event["change"], event["task"]["title"], event["by"]) for event in events]

    return asyncio.run(read())


def test_each_command_changes_the_task_and_tells_the_team(env: str, redis_url: str) -> None:
    assert invoke("add", "buy milk", "--team", "acme").stdout.strip() == "added #1 buy milk"
    assert invoke("add", "call Bob", "--team", "acme", "--assignee", "@bob", "--as", "carol").exit_code == 0
    assert invoke("done", "1", "--team", "acme").stdout.strip() == "done #1 buy milk"
    assert invoke("reopen", "1", "--team", "acme").exit_code == 0
    assert invoke("rename", "1", "buy oat milk", "--team", "acme").stdout.strip() == "renamed #1 buy oat milk"
    assert invoke("assign", "1", "dora", "--team", "acme").exit_code == 0
    listed = invoke("list", "--team", "acme").stdout
    assert "buy oat milk" in listed and "dora" in listed and "call Bob" in listed and "bob" in listed
    assert invoke("delete", "2", "--team", "acme").stdout.strip() == "deleted #2 call Bob"
    assert changes(redis_url, env, "acme") == [
        ("added", "buy milk", "cli"),
        ("added", "call Bob", "carol"),
        ("completed", "buy milk", "cli"),
        ("reopened", "buy milk", "cli"),
        ("renamed", "buy oat milk", "cli"),
        ("assigned", "buy oat milk", "cli"),
        ("deleted", "call Bob", "cli"),
    ]
    assert invoke("list", "--team", "globex").stdout.strip() == "no tasks in team globex"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("done", "7", "--team", "acme"), "no task #7 in team acme"),
        (("rename", "1", "   ", "--team", "acme"), "a task needs a title"),
        (("add", "x", "--team", "acme", "--as", ""), "--team and --as must not be empty"),
    ],
)
def test_mistakes_are_one_line_and_change_nothing(
    env: str, redis_url: str, args: tuple[str, ...], message: str
) -> None:
    invoke("add", "buy milk", "--team", "acme")
    result = invoke(*args)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert [change for change, _, _ in changes(redis_url, env, "acme")] == ["added"]


def test_a_bad_task_number_is_a_usage_error(env: str) -> None:
    result = invoke("done", "0", "--team", "acme")
    assert result.exit_code == 2
