"""`kitrelay kb` (services/kb_cli.py) against a migrated SQLite file, through Typer's test runner.

The commands run their own event loop (`asyncio.run`), so these tests are synchronous.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from kitrelay.services.kb_cli import app
from kitrelay.services.knowledge import DocumentRecord, KnowledgeService
from kitrelay.shared.store.engine import make_engine, make_sessionmaker, migrate
from kitrelay.shared.store.models import FeedbackRow
from tests.databases import sqlite_url
from tests.services.conftest import make_pdf

T = TypeVar("T")

GUIDE = """# Onboarding guide

Welcome aboard.

## VPN access

Request VPN access from IT on your first day. Use the WireGuard client.
"""
DOC_ID = re.compile(r"doc_[0-9a-z]{26}")

runner = CliRunner()


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite file the commands use through DATABASE_URL; a wide terminal so tables never wrap."""
    url = sqlite_url(tmp_path / "kb.db")
    migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "250")
    # No stray .env of the developer's can point the commands elsewhere.
    monkeypatch.chdir(tmp_path)
    return url


@pytest.fixture
def files(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "guide.md").write_text(GUIDE)
    (folder / "lunch.txt").write_text("The canteen opens at noon. Soup on Fridays.")
    (folder / "handbook.pdf").write_bytes(make_pdf(["Rotate your passwords every ninety days."]))
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "empty.txt").write_bytes(b"  \n")
    return folder


def on_database(url: str, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = make_engine(url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def documents(url: str, team: str) -> list[DocumentRecord]:
    return on_database(url, lambda sessions: KnowledgeService(sessions).list_documents(team))


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def assert_ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result.output


def assert_fails(result: Result, code: int, *messages: str) -> None:
    """A clean failure: the exit code, the messages, and no traceback (an unexpected exception would be kept in
    `result.exception` instead of a SystemExit)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    flat = " ".join(result.output.split())
    for message in messages:
        assert message in flat


def test_add_loads_files_as_admin_documents(database_url: str, files: Path) -> None:
    output = assert_ok(invoke("add", str(files / "guide.md"), str(files / "lunch.txt"), "--team", "acme"))

    added = documents(database_url, "acme")
    assert sorted(d.title for d in added) == ["Onboarding guide", "lunch"]
    assert {d.source for d in added} == {"admin"}
    assert {d.mime_type for d in added} == {"text/markdown", "text/plain"}
    assert {d.created_by for d in added} == {None}
    for document in added:
        assert document.id in output
        assert document.title in output
    guide = next(d for d in added if d.title == "Onboarding guide")
    assert guide.byte_size == len(GUIDE.encode())
    assert re.search(rf"{guide.id}\s*│\s*Onboarding guide\s*│\s*2\b", output)


def test_add_a_pdf_with_a_title(database_url: str, files: Path) -> None:
    pdf = files / "handbook.pdf"
    assert_ok(invoke("add", str(pdf), "--team", "acme", "--title", "Security handbook"))
    [document] = documents(database_url, "acme")
    assert (document.title, document.mime_type, document.byte_size) == (
        "Security handbook",
        "application/pdf",
        pdf.stat().st_size,
    )
    output = assert_ok(invoke("search", "password rotation", "--team", "acme"))
    assert "Security handbook" in output
    assert "Rotate your passwords" in output


def test_add_rejects_a_missing_file(database_url: str, files: Path) -> None:
    result = invoke("add", str(files / "guide.md"), str(files / "nope.md"), "--team", "acme")
    assert_fails(result, 2, "nope.md", "does not exist")
    assert documents(database_url, "acme") == []


def test_add_rejects_an_unsupported_file_and_adds_none(database_url: str, files: Path) -> None:
    result = invoke("add", str(files / "guide.md"), str(files / "photo.png"), "--team", "acme")
    assert_fails(result, 1, "error:", "photo.png is image/png", "application/pdf, text/markdown, text/plain")
    assert documents(database_url, "acme") == []


def test_add_rejects_a_broken_pdf_and_an_empty_file(database_url: str, files: Path) -> None:
    broken = files / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 nothing else")
    assert_fails(invoke("add", str(broken), "--team", "acme"), 1, "broken.pdf is not a readable PDF")
    assert_fails(invoke("add", str(files / "empty.txt"), "--team", "acme"), 1, "has no text")
    assert documents(database_url, "acme") == []


def test_add_takes_a_title_for_one_file_only(database_url: str, files: Path) -> None:
    result = invoke("add", str(files / "guide.md"), str(files / "lunch.txt"), "--team", "acme", "--title", "Both")
    assert_fails(result, 2, "a title can only be given for a single file")
    assert documents(database_url, "acme") == []


def test_add_needs_a_team(database_url: str, files: Path) -> None:
    assert_fails(invoke("add", str(files / "guide.md")), 2, "--team")


def test_list_shows_the_teams_documents(database_url: str, files: Path) -> None:
    assert_ok(invoke("add", str(files / "guide.md"), "--team", "acme"))
    assert_ok(invoke("add", str(files / "lunch.txt"), "--team", "other"))

    output = assert_ok(invoke("list", "--team", "acme"))
    [guide] = documents(database_url, "acme")
    assert guide.id in output
    assert "Onboarding guide" in output
    assert "text/markdown" in output
    assert "lunch" not in output

    assert "team nobody has no documents" in assert_ok(invoke("list", "--team", "nobody"))


def test_list_piped_gives_whole_rows_and_json_gives_every_field(
    database_url: str, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped (to `grep`, a file), the table is as wide as its rows, not cut at 80 columns; `--json` is for scripts."""
    monkeypatch.delenv("COLUMNS")
    title = "The onboarding guide for new members of the platform team, second edition"
    assert_ok(invoke("add", str(files / "guide.md"), "--team", "acme", "--title", title))
    [guide] = documents(database_url, "acme")

    output = assert_ok(invoke("list", "--team", "acme"))
    [row] = [line for line in output.splitlines() if guide.id in line]
    assert title in row
    assert guide.created_at.strftime("%Y-%m-%d %H:%M:%S UTC") in row
    assert row.rstrip().endswith("│"), "the right border is there"
    assert len(row) > 80

    listed = assert_ok(invoke("list", "--team", "acme", "--json"))
    [document] = [json.loads(line) for line in listed.splitlines()]
    assert document == guide.model_dump(mode="json")
    assert document["created_at"].endswith("Z") or document["created_at"].endswith("+00:00")
    assert assert_ok(invoke("list", "--team", "nobody", "--json")) == ""


def test_the_readmes_example_document_ships_and_answers_the_readmes_question(database_url: str) -> None:
    """A fresh clone follows the README literally: `kitrelay kb add docs/guide.md`, then the question it asks."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    [path] = re.findall(r"kitrelay kb add (\S+) --team local-team", readme)
    [question] = re.findall(r'kitrelay chat "(what does the guide say[^"]*)"', readme)
    assert (root / path).is_file(), f"the README loads {path}"

    assert_ok(invoke("add", str(root / path), "--team", "local-team"))
    found = assert_ok(invoke("search", question, "--team", "local-team", "--limit", "1"))
    assert re.search(r"│\s*1\s*│\s*Team guide\s*│\s*VPN access\s*│", found), found


def test_search_shows_ranked_hits(database_url: str, files: Path) -> None:
    assert_ok(invoke("add", str(files / "guide.md"), str(files / "lunch.txt"), "--team", "acme"))

    output = assert_ok(invoke("search", "what does the onboarding guide say about VPN access?", "--team", "acme"))
    assert re.search(r"│\s*1\s*│\s*Onboarding guide\s*│\s*VPN access\s*│\s*Request VPN access", output)
    assert "canteen" not in output

    assert "no document matches" in assert_ok(invoke("search", "zeppelin", "--team", "acme"))
    assert "no document matches" in assert_ok(invoke("search", "VPN", "--team", "other"))
    # Query syntax is just text, and Rich markup in it is printed, not interpreted.
    assert_ok(invoke("search", 'NEAR("VPN" * [bold]', "--team", "acme", "--limit", "1"))
    assert_fails(invoke("search", "VPN", "--team", "acme", "--limit", "0"), 2, "--limit")


def test_delete_removes_a_document(database_url: str, files: Path) -> None:
    assert_ok(invoke("add", str(files / "guide.md"), str(files / "lunch.txt"), "--team", "acme"))
    guide = next(d for d in documents(database_url, "acme") if d.title == "Onboarding guide")

    assert f"deleted {guide.id}" in assert_ok(invoke("delete", guide.id, "--team", "acme"))
    assert [d.title for d in documents(database_url, "acme")] == ["lunch"]
    assert "no document matches" in assert_ok(invoke("search", "VPN", "--team", "acme"))


def test_delete_rejects_an_unknown_or_foreign_document(database_url: str, files: Path) -> None:
    assert_ok(invoke("add", str(files / "guide.md"), "--team", "acme"))
    [guide] = documents(database_url, "acme")

    assert_fails(invoke("delete", "doc_nope", "--team", "acme"), 1, "error:", "no document doc_nope in this team")
    assert_fails(invoke("delete", guide.id, "--team", "other"), 1, f"no document {guide.id} in this team")
    assert documents(database_url, "acme") == [guide]


def add_feedback(url: str, *rows: dict[str, object]) -> None:
    async def write(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session, session.begin():
            await session.execute(insert(FeedbackRow), list(rows))

    on_database(url, write)


def vote(team: str, user: str, item: str, kind: str, minutes_ago: int) -> dict[str, object]:
    created_at = datetime(2030, 1, 1, 12, 0, tzinfo=UTC) - timedelta(minutes=minutes_ago)
    return {
        "team_id": team,
        "user_id": user,
        "thread_id": f"thr_{user}",
        "item_id": item,
        "kind": kind,
        "created_at": created_at,
    }


def test_feedback_lists_votes_newest_first(database_url: str) -> None:
    add_feedback(
        database_url,
        vote("acme", "ann", "msg_old", "negative", minutes_ago=30),
        vote("acme", "bob", "msg_new", "positive", minutes_ago=1),
        vote("acme", "cy", "msg_mid", "positive", minutes_ago=10),
        vote("other", "dee", "msg_theirs", "negative", minutes_ago=0),
    )

    output = assert_ok(invoke("feedback", "--team", "acme"))
    items = re.findall(r"msg_\w+", output)
    assert items == ["msg_new", "msg_mid", "msg_old"]
    assert re.search(r"bob\s*│\s*thr_bob\s*│\s*msg_new\s*│\s*positive\s*│\s*2030-01-01 11:59:00 UTC", output)

    negative = assert_ok(invoke("feedback", "--team", "acme", "--kind", "negative"))
    assert re.findall(r"msg_\w+", negative) == ["msg_old"]
    assert re.findall(r"msg_\w+", assert_ok(invoke("feedback", "--team", "acme", "--limit", "2"))) == [
        "msg_new",
        "msg_mid",
    ]
    assert "no feedback for team nobody" in assert_ok(invoke("feedback", "--team", "nobody"))
    assert "no negative feedback for team x" in assert_ok(invoke("feedback", "--team", "x", "--kind", "negative"))


def test_feedback_rejects_an_unknown_kind(database_url: str) -> None:
    assert_fails(invoke("feedback", "--team", "acme", "--kind", "meh"), 2, "--kind", "meh")


def test_an_unmigrated_database_is_a_message_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url(tmp_path / "never-migrated.db"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)
    for args in (
        ("list", "--team", "acme"),
        ("add", str(files / "guide.md"), "--team", "acme"),
        ("feedback", "--team", "acme"),
    ):
        assert_fails(invoke(*args), 1, "database error", "no such table", "kitrelay migrate")


def test_without_a_command_it_shows_help() -> None:
    result = invoke()
    assert "add" in result.output
    assert "feedback" in result.output
    assert result.exit_code in (0, 2)
