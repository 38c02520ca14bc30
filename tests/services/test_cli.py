"""The `kitrelay` command itself (services/cli.py): what it imports to start, its help, the hints it prints, and a
database it cannot reach. Its commands' own work is tested beside them (test_chat_cli.py, test_kb_cli.py, ...)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kitrelay.services.cli import app
from kitrelay.services.cli_output import chat_hint, kitrelay_command
from kitrelay.services.devservers import free_port
from kitrelay.shared.store.engine import DatabaseUnreachableError, check_reachable

# What the terminal client must never load: each costs a large share of a second to import, and `kitrelay chat`
# runs once per message.
HEAVY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "opentelemetry.sdk", "chatkit", "agents")
VENV_KITRELAY = Path(sys.executable).parent / "kitrelay"
runner = CliRunner()


def loaded_modules(*argv: str, cwd: Path) -> set[str]:
    """The modules a `kitrelay` process has loaded once the command `argv` is done."""
    program = (
        "import json, sys\n"
        f"sys.argv = ['kitrelay', *{list(argv)!r}]\n"
        "import kitrelay.services.cli as cli\n"
        "try:\n"
        "    cli.app()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.__stdout__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in HEAVY or name.startswith("opentelemetry.sdk"))


def test_help_and_the_chat_client_load_no_web_framework_database_layer_or_telemetry_sdk(tmp_path: Path) -> None:
    # The token is minted as after `kitrelay up`, from the secret file; nothing listens at the URL, so the run ends
    # after everything a chat imports before its first request.
    (tmp_path / ".kitrelay").mkdir()
    (tmp_path / ".kitrelay" / "dev-token-secret").write_text("s" * 48)
    port = free_port()

    chat = loaded_modules("chat", "--url", f"http://127.0.0.1:{port}", "hello", cwd=tmp_path)
    assert "kitrelay.services.chat_session" in chat and "jwt" in chat, "the run got as far as the request"
    assert heavy(chat) == []
    # Nor httpx's own command-line tool, which httpx imports unless told not to.
    assert not {"click", "pygments"} & chat
    assert heavy(loaded_modules("--help", cwd=tmp_path)) == []


def test_help_lists_running_before_using_and_chat_help_points_the_right_way() -> None:
    listed = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    order = ["up", "gateway", "worker", "migrate", "health", "chat", "token", "turns", "kb"]
    lines = listed.output.splitlines()
    positions = [next(n for n, line in enumerate(lines) if line.strip("│ ").startswith(f"{name} ")) for name in order]
    assert positions == sorted(positions), listed.output

    chat_help = runner.invoke(app, ["chat", "--help"], env={"COLUMNS": "200"})
    assert chat_help.exit_code == 0, chat_help.output
    text = " ".join(chat_help.output.split())
    assert text.index("a token is minted from .kitrelay/dev-token-secret") < text.index("see above")
    assert "see below" not in text


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The current directory is the checkout that holds this venv, as after `make install`."""
    root = VENV_KITRELAY.parents[2]
    if not VENV_KITRELAY.exists():
        pytest.skip(f"no {VENV_KITRELAY}: the package is not installed with its console script")
    monkeypatch.chdir(root)
    yield root


def test_the_hint_names_the_venvs_kitrelay_unless_path_finds_it(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    relative = str(VENV_KITRELAY.relative_to(checkout))
    without_venv = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_KITRELAY.parent)
    monkeypatch.setenv("PATH", without_venv)
    assert shutil.which("kitrelay") is None or Path(shutil.which("kitrelay") or "").resolve() != VENV_KITRELAY
    assert kitrelay_command() == relative
    assert chat_hint("http://127.0.0.1:8000") == f'{relative} chat "add task buy milk"'
    assert chat_hint("http://127.0.0.1:9000") == f'{relative} chat --url http://127.0.0.1:9000 "add task buy milk"'

    # An activated venv puts its bin first on PATH.
    monkeypatch.setenv("PATH", os.pathsep.join([str(VENV_KITRELAY.parent), without_venv]))
    assert kitrelay_command() == "kitrelay"
    # Elsewhere than the checkout, the full path.
    monkeypatch.setenv("PATH", without_venv)
    monkeypatch.chdir(tmp_path)
    assert kitrelay_command() == str(VENV_KITRELAY)


def run_kitrelay(*argv: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", *argv],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def assert_one_line_about(done: subprocess.CompletedProcess[str], command: str, port: int) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"kitrelay {command}: cannot connect to the database at 127.0.0.1:{port}"), line
    assert "hunter2" not in done.stdout + done.stderr


def test_migrate_says_in_one_line_that_the_database_cannot_be_reached(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {"DATABASE_URL": f"postgresql://nobody:hunter2@127.0.0.1:{port}/kitrelay"}
    done, elapsed = run_kitrelay("migrate", env=env, cwd=tmp_path)
    assert_one_line_about(done, "migrate", port)
    assert elapsed < 30, "no retries, no long wait on a refused connection"


def test_up_says_in_one_line_that_the_database_cannot_be_reached(
    nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": f"postgresql://nobody:hunter2@127.0.0.1:{port}/kitrelay",
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "NAMESPACE": unique_namespace,
        "GATEWAY_PORT": str(free_port()),
    }
    done, _ = run_kitrelay("up", "--worker", "triage", env=env, cwd=tmp_path)
    assert_one_line_about(done, "up", port)
    assert "gateway" not in done.stdout, "nothing is started past the database"


async def test_a_database_server_that_never_answers_is_reported_within_the_timeout() -> None:
    with socket.socket() as silent:
        # Connections are accepted by the kernel, and then nothing is ever said.
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachableError, match=rf"127\.0\.0\.1:{port} .*no answer within 0\.5 s"):
            await check_reachable(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/x", timeout_s=0.5)
        assert time.monotonic() - started < 5


async def test_a_sqlite_file_that_cannot_be_opened_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnreachableError, match=r"cannot open the database file .*missing"):
        await check_reachable(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'kitrelay.db'}")
