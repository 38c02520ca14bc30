"""`kitrelay chat`, the real process, against a running system (gateway and the triage and task workers as
processes on real NATS, Redis and SQLite), the way a user runs it after `make run`. No research worker: no test
here asks a question.

The gateway runs in JWT mode with a DEV_TOKEN_SECRET, and each test's client runs in its own directory holding
`.kitrelay/dev-token-secret` (what `kitrelay up` writes), so `kitrelay chat` mints its own token with no flags,
and each test is its own user of its own team. The offline model is slowed down so a reply lasts seconds, long
enough to kill a gateway in the middle of one.
"""

from __future__ import annotations

import contextlib
import os
import pty
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kitrelay.agents.offline_policy import GREETING_TEXT
from kitrelay.gateway.tokens import mint_token
from kitrelay.shared.store.engine import migrate
from tests.databases import sqlite_url
from tests.system import RunningSystem, running_system

pytestmark = pytest.mark.timeout(180)

DEV_SECRET = secrets.token_urlsafe(32)
# The greeting (27 tokens) then lasts over two seconds.
TOKEN_DELAY_MS = 80
# The greeting's first words: a reply that has started.
GREETING_START = " ".join(GREETING_TEXT.split()[:3])


@pytest.fixture(scope="module")
def chat_system(
    nats_url: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningSystem]:
    workdir = tmp_path_factory.mktemp("chat-cli")
    database_url = sqlite_url(workdir / "kitrelay.db")
    migrate(database_url)
    env = {"AUTH_MODE": "jwt", "DEV_TOKEN_SECRET": DEV_SECRET, "OFFLINE_TOKEN_DELAY_MS": str(TOKEN_DELAY_MS)}
    with running_system(
        nats_url=nats_url,
        redis_url=redis_url,
        database_url=database_url,
        namespace=f"{namespace}cc",
        log_dir=workdir,
        workers=("triage", "task"),
        extra_env=env,
    ) as running:
        yield running


@dataclass
class User:
    """A directory set up as after `kitrelay up`, and the user `kitrelay chat --user/--team` speaks as there."""

    cwd: Path
    user: str
    team: str

    def token(self) -> str:
        return mint_token(DEV_SECRET, self.user, self.team)

    def http(self, system: RunningSystem) -> httpx.Client:
        return httpx.Client(base_url=system.base_url, headers={"Authorization": f"Bearer {self.token()}"}, timeout=30)


@pytest.fixture
def user(tmp_path: Path) -> User:
    state = tmp_path / ".kitrelay"
    state.mkdir()
    (state / "dev-token-secret").write_text(DEV_SECRET)
    tag = secrets.token_hex(4)
    return User(cwd=tmp_path, user=f"cli_{tag}", team=f"team_{tag}")


class Chat:
    """A running `kitrelay chat`, its output collected as it comes."""

    def __init__(
        self, system: RunningSystem, cwd: Path, *args: str, stdin: str | None = None, keep_stdin_open: bool = False
    ) -> None:
        env = {key: value for key, value in system.env.items() if key not in ("DEV_TOKEN_SECRET", "KITRELAY_TOKEN")}
        env["COLUMNS"] = "160"  # rich's width when stdout is not a terminal: room for a task row
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kitrelay.services.cli", "chat", "--url", system.base_url, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin.encode())
            if keep_stdin_open:
                self.proc.stdin.flush()
            else:
                self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self._out.extend(chunk)

    @property
    def stdout(self) -> str:
        return self._out.decode(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.stdout:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} never printed:\n{self.stdout}\n{self.stderr_now()}")
            time.sleep(0.02)

    def stderr_now(self) -> str:
        return "" if self.proc.poll() is None else self.finish()[1]

    def finish(self, timeout_s: float = 60) -> tuple[int, str]:
        """(exit code, stderr) once the process ended; stdout is complete then too."""
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout=5)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read().decode(errors="replace")


def run_chat(system: RunningSystem, who: User, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    chat = Chat(system, who.cwd, "--user", who.user, "--team", who.team, *args, stdin=stdin)
    code, stderr = chat.finish()
    return code, chat.stdout, stderr


def test_one_message_with_the_minted_token(chat_system: RunningSystem, user: User) -> None:
    code, out, err = run_chat(chat_system, user, "add task buy milk")
    assert code == 0, (out, err)
    assert "buy milk" in out and "[1] Mark done" in out, out
    thread_id = (user.cwd / ".kitrelay" / "last-thread").read_text().strip()
    assert f"thread {thread_id}" in err
    # How to continue it, with a kitrelay that runs from here (the venv's, unless PATH finds it).
    command = err.split("continue it with: ", 1)[1].split(" chat -c", 1)[0]
    assert shutil.which(command, path=os.environ["PATH"]) or (user.cwd / command).exists(), err
    # The token was this user's: the thread is theirs, and nobody else's.
    with user.http(chat_system) as http:
        listed = http.post("/chatkit", json={"type": "threads.list", "params": {}}).json()
        assert [thread["id"] for thread in listed["data"]] == [thread_id]
    other = User(cwd=user.cwd, user=f"x{user.user}", team=user.team)
    with other.http(chat_system) as http:
        assert http.post("/chatkit", json={"type": "threads.list", "params": {}}).json()["data"] == []

    # -c continues that thread.
    code, out, err = run_chat(chat_system, user, "-c", "list my tasks")
    assert code == 0, (out, err)
    assert "Tasks (1)" in out and "buy milk" in out
    with user.http(chat_system) as http:
        items = http.post("/chatkit", json={"type": "items.list", "params": {"thread_id": thread_id}}).json()
    assert sum(item["type"] == "user_message" for item in items["data"]) == 2


def test_numbered_actions_toggle_a_task_interactively(chat_system: RunningSystem, user: User) -> None:
    title = f"water the plants {secrets.token_hex(2)}"
    code, out, err = run_chat(
        chat_system, user, stdin=f"add task {title}\nlist my tasks\n/1\n/9\n/help\n/new\nhello\n/threads\n/quit\n"
    )
    assert code == 0, (out, err)
    assert "Added task" in out and "[1] Mark done" in out, out
    rows = [line for line in out.splitlines() if title in line and line.startswith("│ [1] │")]
    # The list, and the list again after the click (replaced, so printed anew): open, then done.
    assert len(rows) == 2, out
    assert "✓" not in rows[0] and "✓" in rows[1]
    # The click redrew every widget that shows the task: the list and the task's card, each printed anew with its
    # action (the list's row, the card's "Reopen").
    assert "There is no action 9: choose 1 to 2." in out
    assert "/new" in out and "New thread" in out and GREETING_TEXT in out
    # /threads lists both, the new one (hello) current.
    with user.http(chat_system) as http:
        threads = http.post("/chatkit", json={"type": "threads.list", "params": {"order": "desc"}}).json()["data"]
    assert len(threads) == 2
    assert "Your threads" in out and f"{threads[0]['id']} ← current" in out and threads[1]["id"] in out
    assert (user.cwd / ".kitrelay" / "last-thread").read_text().strip() == threads[0]["id"]
    # Saved on the server: the task is done, and the first thread's list widget shows it done.
    with user.http(chat_system) as http:
        thread_id = threads[1]["id"]
        thread = http.post("/chatkit", json={"type": "threads.get_by_id", "params": {"thread_id": thread_id}}).json()
    widgets = [item for item in thread["items"]["data"] if item["type"] == "widget"]
    assert widgets[-1]["widget"]["type"] == "ListView"
    assert "check-circle-filled" in str(widgets[-1]["widget"]) and f"[x] {title}" in widgets[-1]["copy_text"]


def test_a_reply_survives_the_gateway_being_killed(chat_system: RunningSystem, user: User) -> None:
    chat = Chat(chat_system, user.cwd, "--user", user.user, "--team", user.team, "hello")
    chat.wait_for(GREETING_START)
    chat_system.kill("gateway")
    time.sleep(0.5)  # the client notices and retries against nothing for a moment
    chat_system.start("gateway", "gateway")
    chat_system.wait_healthy()
    code, err = chat.finish()
    assert code == 0, (chat.stdout, err)
    assert "[reconnecting…]" in err
    # Printed in full, exactly once, in one piece.
    assert chat.stdout.count(GREETING_TEXT) == 1, chat.stdout
    assert chat.stdout.count(GREETING_START) == 1


def test_ctrl_c_stops_the_reply_on_the_server(chat_system: RunningSystem, user: User) -> None:
    chat = Chat(chat_system, user.cwd, "--user", user.user, "--team", user.team, "hello")
    chat.wait_for(GREETING_START)
    chat.proc.send_signal(signal.SIGINT)
    code, err = chat.finish()
    assert code == 0, (chat.stdout, err)
    assert "stopping the reply" in err
    assert GREETING_TEXT not in chat.stdout
    thread_id = (user.cwd / ".kitrelay" / "last-thread").read_text().strip()
    with user.http(chat_system) as http:
        [turn] = http.get(f"/threads/{thread_id}/turns").json()["data"]
        thread = http.post("/chatkit", json={"type": "threads.get_by_id", "params": {"thread_id": thread_id}}).json()
    assert turn["status"] == "cancelled"
    [reply] = [item for item in thread["items"]["data"] if item["type"] == "assistant_message"]
    assert "Stopped" in reply["content"][0]["text"]


def test_a_second_ctrl_c_quits(chat_system: RunningSystem, user: User) -> None:
    """Interactive, stdin left open (a user who has not typed anything else): the first Ctrl-C stops the reply,
    the second quits at once; at the prompt, one Ctrl-C quits."""
    args = ("--user", user.user, "--team", user.team)
    chat = Chat(chat_system, user.cwd, *args, stdin="hello\n", keep_stdin_open=True)
    chat.wait_for(GREETING_START)
    chat.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    chat.proc.send_signal(signal.SIGINT)
    code, err = chat.finish(timeout_s=10)
    assert code == 130, (chat.stdout, err)
    assert "Traceback" not in err and GREETING_TEXT not in chat.stdout

    idle = Chat(chat_system, user.cwd, *args, stdin="", keep_stdin_open=True)
    idle.wait_for("you> ")
    idle.proc.send_signal(signal.SIGINT)
    code, err = idle.finish(timeout_s=10)
    assert code == 130 and "Traceback" not in err, (idle.stdout, err)

    # The stop the first Ctrl-C sent reached the worker.
    thread_id = (user.cwd / ".kitrelay" / "last-thread").read_text().strip()
    with user.http(chat_system) as http:
        for _ in range(100):
            [turn] = http.get(f"/threads/{thread_id}/turns").json()["data"]
            if turn["status"] != "queued":
                break
            time.sleep(0.1)
    assert turn["status"] == "cancelled"


def test_clear_errors_and_no_traceback(chat_system: RunningSystem, user: User, tmp_path: Path) -> None:
    # Nothing listening.
    env_url = "http://127.0.0.1:9"
    proc = subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", "chat", "--url", env_url, "hi"],
        cwd=tmp_path,
        env={**chat_system.env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"cannot reach kitrelay at {env_url}" in proc.stderr and "Traceback" not in proc.stderr

    # A JWT gateway and no token (this directory has no secret file): 401, and how to get a token.
    bare = tmp_path / "bare"
    bare.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "kitrelay.services.cli", "chat", "--url", chat_system.base_url, "hi"],
        cwd=bare,
        env={**chat_system.env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "wants a token" in proc.stderr and "KITRELAY_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr

    # A 4xx in the conversation is reported and the conversation goes on.
    code, out, err = run_chat(chat_system, user, "--thread", "thr_nope", "hi")
    assert code == 1 and "Not found. (HTTP 404)" in err and "Traceback" not in err, (out, err)
    code, out, err = run_chat(chat_system, user, stdin="x" * 20000 + "\nhello\n")
    assert code == 0, (out, err)
    assert "HTTP 413" in err and GREETING_TEXT in out


def test_ctrl_c_at_a_terminal_prompt_quits(tmp_path: Path) -> None:
    """On a real terminal (a pty) the prompt reads through input(), with line editing; Ctrl-C there still quits
    at once and cleanly. No gateway is needed to reach the prompt."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kitrelay.services.cli", "chat", "--url", "http://127.0.0.1:9"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"you> " not in seen and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        assert b"you> " in seen, seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        with contextlib.suppress(OSError):  # EIO once the terminal's other end is gone
            while chunk := os.read(master, 4096):
                seen += chunk
        assert b"Traceback" not in seen and b"Fatal" not in seen, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
