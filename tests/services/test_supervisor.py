"""`kitrelay up`'s embedded default is multi-user: with no key configured it makes a token secret once, keeps it in
`.kitrelay/dev-token-secret` (owner-only), reuses it on later runs, and hands it to the gateway, whose page then
signs people in (gateway/dev_signin.py) once the browser has opened the one-time sign-in link `up` prints to its
own terminal: the secret's owner, not whoever can reach the loopback address."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from kitrelay.services.devservers import free_port
from kitrelay.services.supervisor import DEV_TOKEN_SECRET_FILE, _names_a_key, _page_sign_in_secret, dev_token_secret
from kitrelay.shared.settings import Settings

START_TIMEOUT_S = 60.0
KEY_VARIABLES = ("DEV_TOKEN_SECRET", "JWT_SECRET", "JWT_SECRET_FILE", "JWT_JWKS_URL", "AUTH_MODE")


def test_the_secret_is_made_once_owner_only_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / ".kitrelay"
    first = dev_token_secret(data_dir)
    path = data_dir / DEV_TOKEN_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.encode()) >= 32 and first.isprintable()
    assert path.read_text() == first  # plain text, as `kitrelay chat` reads it
    assert dev_token_secret(data_dir) == first
    assert dev_token_secret(tmp_path / "elsewhere") != first


def test_an_unusable_secret_file_stops_up_with_a_message(tmp_path: Path) -> None:
    (tmp_path / DEV_TOKEN_SECRET_FILE).write_text("short\n")
    with pytest.raises(SystemExit, match="no usable secret"):
        dev_token_secret(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEV_TOKEN_SECRET", "x" * 40),
        ("JWT_SECRET", "x" * 40),
        ("JWT_SECRET_FILE", "/run/secrets/jwt"),
        ("JWT_JWKS_URL", "https://id.example.com/jwks"),
        ("AUTH_MODE", "dev"),
    ],
)
def test_an_operator_choice_of_keys_is_left_alone(variable: str, value: str) -> None:
    assert not _names_a_key(Settings(_env_file=None))
    chosen: dict[str, Any] = {variable: value}
    assert _names_a_key(Settings(_env_file=None, **chosen))


@pytest.mark.parametrize(
    ("values", "env", "link"),
    [
        pytest.param({}, {"DEV_TOKEN_SECRET": "s" * 40}, True, id="up's own secret"),
        pytest.param({"DEV_TOKEN_SECRET": "o" * 40}, {}, True, id="the operator's dev secret"),
        pytest.param({"DEV_TOKEN_SECRET": "o" * 40, "JWT_SECRET": "j" * 40}, {}, False, id="a real JWT secret"),
        pytest.param({"AUTH_MODE": "dev"}, {}, False, id="dev mode"),
        pytest.param({"DEV_TOKEN_SECRET": "o" * 40, "GATEWAY_HOST": "0.0.0.0"}, {}, False, id="off loopback"),
        pytest.param({}, {}, False, id="no secret at all"),
    ],
)
def test_up_prints_a_sign_in_link_exactly_when_the_page_needs_one(
    values: dict[str, Any], env: dict[str, str], link: bool
) -> None:
    assert (_page_sign_in_secret(Settings(_env_file=None, **values), env) is not None) is link


@contextmanager
def kitrelay_up(cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log = (cwd / "up.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kitrelay.services.cli", "up", "--worker", "triage"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def wait_up(url: str, proc: subprocess.Popen[bytes], cwd: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cwd / "up.log").read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"kitrelay up did not come up:\n{(cwd / 'up.log').read_text()}")


def banner_line(cwd: Path, starts: str) -> str:
    """The line of `kitrelay up`'s banner that starts with `starts`, once printed (a little after /healthz)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        lines = [line for line in (cwd / "up.log").read_text().splitlines() if line.startswith(starts)]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no {starts!r} in:\n{(cwd / 'up.log').read_text()}")


def threads(url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{url}/chatkit",
        json={"type": "threads.list", "params": {}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


LINK = re.compile(r"(http://\S+/#sign-in=([\w.-]+))")


def printed_links(cwd: Path) -> list[tuple[str, str]]:
    """(link, code) of every sign-in link `kitrelay up` printed."""
    return LINK.findall((cwd / "up.log").read_text())


def redeem(url: str, code: str) -> httpx.Response:
    return httpx.post(f"{url}/auth/dev-link", json={"code": code}, timeout=10)


def sign_in(url: str, key: str, user: str, team: str) -> httpx.Response:
    return httpx.post(f"{url}/auth/dev-token", json={"user": user, "team": team, "key": key}, timeout=10)


def as_nobody(*command: str) -> subprocess.CompletedProcess[str] | None:
    """`command` run as the OS user nobody; None where this test cannot switch users (not root, no runuser)."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return None
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *command], check=False, capture_output=True, text=True, timeout=30
    )


@pytest.mark.timeout(240)
def test_up_signs_people_in_with_a_secret_that_survives_a_restart(
    nats_url: str, redis_url: str, unique_namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env: dict[str, Any] = {
        **{name: value for name, value in os.environ.items() if name not in KEY_VARIABLES},
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "NAMESPACE": unique_namespace,
        "GATEWAY_PORT": str(port),
        "PUBLIC_BASE_URL": url,
        "WORKER_DRAIN_TIMEOUT_S": "2",
    }
    with kitrelay_up(tmp_path, env) as proc:
        wait_up(url, proc, tmp_path)
        secret_file = tmp_path / ".kitrelay" / DEV_TOKEN_SECRET_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert httpx.get(f"{url}/auth/config").json()["dev_sign_in"] is True
        # Reaching the gateway is not enough: a sign-in needs the link `up` printed to its own terminal.
        refused = httpx.post(f"{url}/auth/dev-token", json={"user": "alice", "team": "acme"})
        assert refused.status_code == 403, refused.text
        deadline = time.monotonic() + 10
        while not printed_links(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        [(link, code)] = printed_links(tmp_path)
        assert link.startswith(f"{url}/#sign-in=")
        linked = redeem(url, code)
        assert linked.status_code == 200, linked.text
        key = linked.json()["key"]
        assert redeem(url, code).json()["error"] == "sign_in_link_used"
        minted = sign_in(url, key, "alice", "acme")
        assert minted.status_code == 200, minted.text
        token = minted.json()["token"]
        assert threads(url, token).status_code == 200
        assert threads(url, "not-a-token").status_code == 401
        # `kitrelay sign-in-link`, in the same directory, makes another one-time link.
        fresh = subprocess.run(
            [sys.executable, "-m", "kitrelay.services.cli", "sign-in-link"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        [(_, fresh_code)] = LINK.findall(fresh.stdout)
        assert redeem(url, fresh_code).status_code == 200
        first_secret = secret_file.read_text()
        # Piped, as under `make run | tee`: each line of the banner whole, not wrapped at 80 columns, and a chat
        # command that runs from here (the venv's kitrelay, unless PATH finds it).
        assert banner_line(tmp_path, "kitrelay is up at ").endswith(
            f"(chat in a browser there; ChatKit: {url}/chatkit)"
        )
        hint = banner_line(tmp_path, "Try: ")
        command = hint.removeprefix("Try: ").split(" chat ")[0]
        assert f' chat --url {url} "add task buy milk"' in hint
        assert shutil.which(command, path=env["PATH"]) or (tmp_path / command).exists(), hint
    with kitrelay_up(tmp_path, env) as proc:
        wait_up(url, proc, tmp_path)
        assert secret_file.read_text() == first_secret
        # A token from the first run (a signed-in browser tab) still works, and so does the browser's key.
        assert threads(url, token).status_code == 200
        assert sign_in(url, key, "bob", "acme").status_code == 200


@pytest.mark.timeout(240)
def test_another_os_user_cannot_sign_in_to_up(nats_url: str, redis_url: str, unique_namespace: str) -> None:
    """The probe: `runuser -u nobody -- curl -XPOST 127.0.0.1:PORT/auth/dev-token -d '{"user":"u1",...}'` got a
    token for u1 from `kitrelay up`, though nobody cannot read the secret. The data directory is the owner's."""
    if as_nobody("true") is None:
        pytest.skip("needs root and runuser to act as another OS user (nobody)")
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env: dict[str, Any] = {
        **{name: value for name, value in os.environ.items() if name not in KEY_VARIABLES},
        "NATS_URL": nats_url,
        "REDIS_URL": redis_url,
        "NAMESPACE": unique_namespace,
        "GATEWAY_PORT": str(port),
        "PUBLIC_BASE_URL": url,
        "WORKER_DRAIN_TIMEOUT_S": "2",
    }
    # A directory others may enter (as a project checkout usually is); `up` keeps its secret owner-only inside.
    workdir = Path(tempfile.mkdtemp(prefix="kitrelay-up-"))
    workdir.chmod(0o755)
    try:
        with kitrelay_up(workdir, env) as proc:
            wait_up(url, proc, workdir)
            secret_file = workdir / ".kitrelay" / DEV_TOKEN_SECRET_FILE
            cannot_read = as_nobody("cat", str(secret_file))
            assert cannot_read is not None and cannot_read.returncode != 0 and "Permission denied" in cannot_read.stderr
            probe = as_nobody(
                "curl", "-s", "-w", "\n%{http_code}", "-X", "POST", f"{url}/auth/dev-token",
                "-H", "Content-Type: application/json", "-d", '{"user": "u1", "team": "t1"}',
            )  # fmt: skip
            assert probe is not None
            body, _, status = probe.stdout.rpartition("\n")
            assert status == "403", probe.stdout
            assert '"token"' not in body
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
