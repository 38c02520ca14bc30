"""`kitrelay up`: the whole system on one machine, each service its own process, on the embedded defaults."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import SecretStr
from rich.console import Console

from kitrelay.gateway.auth import resolve_auth_mode
from kitrelay.gateway.dev_signin import dev_sign_in_enabled
from kitrelay.gateway.keys import AuthConfigError
from kitrelay.gateway.tokens import mint_sign_in_code, sign_in_link
from kitrelay.services.cli_output import chat_hint
from kitrelay.services.devservers import LocalServer, ServerName, ensure_nats, ensure_redis
from kitrelay.shared.redact import redact_url, redact_urls
from kitrelay.shared.settings import AgentKind, Settings
from kitrelay.shared.store.engine import migrate

HEALTH_TIMEOUT_S = 60.0
# The embedded default's token secret, kept across runs in the data directory (`kitrelay chat` reads it too).
DEV_TOKEN_SECRET_FILE = "dev-token-secret"
DEV_TOKEN_SECRET_BYTES = 32


def _names_a_key(settings: Settings) -> bool:
    """Whether the operator chose how tokens are checked (environment or .env), so `up` must not pick for them."""
    return (
        settings.DEV_TOKEN_SECRET is not None
        or settings.JWT_SECRET is not None
        or bool(settings.JWT_SECRET_FILE)
        or bool(settings.JWT_JWKS_URL)
        or settings.AUTH_MODE is not None
    )


def dev_token_secret(data_dir: Path) -> str:
    """The secret in `<data_dir>/dev-token-secret`, made once (random, readable by its owner only) and reused, so
    tokens and signed-in browser tabs survive a restart."""
    path = data_dir / DEV_TOKEN_SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two `up`s started at once, one writes and the other reads what it wrote.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret.encode()) < DEV_TOKEN_SECRET_BYTES:
            raise SystemExit(f"{path} holds no usable secret (32+ characters): delete it and start again") from None
        return secret
    secret = secrets.token_urlsafe(DEV_TOKEN_SECRET_BYTES)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(secret)
    return secret


def new_sign_in_link(settings: Settings, data_dir: Path) -> str:
    """A one-time link that signs a browser in to the local gateway's page (gateway/dev_signin.py), made with the
    dev secret: DEV_TOKEN_SECRET, else the one `kitrelay up` keeps in `<data_dir>/dev-token-secret`. Whoever can
    read that secret owns this kitrelay's data, so the link goes to them only (their terminal)."""
    if settings.DEV_TOKEN_SECRET is not None:
        secret = settings.DEV_TOKEN_SECRET.get_secret_value()
    else:
        path = data_dir / DEV_TOKEN_SECRET_FILE
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise SystemExit(f"no {path}: start kitrelay with `kitrelay up` (it makes one) in this directory") from None
        except PermissionError:
            raise SystemExit(f"{path} is not yours to read: only its owner can sign in to this kitrelay") from None
    url = f"http://{settings.GATEWAY_HOST}:{settings.GATEWAY_PORT}"
    return sign_in_link(url, mint_sign_in_code(secret, settings.SIGN_IN_LINK_TTL_S))


def _page_sign_in_secret(settings: Settings, env: dict[str, str]) -> str | None:
    """The dev secret when the gateway about to start offers the page's dev sign-in (which then needs a link);
    None when it does not (dev mode, a real identity provider)."""
    secret = env.get("DEV_TOKEN_SECRET") or (
        settings.DEV_TOKEN_SECRET.get_secret_value() if settings.DEV_TOKEN_SECRET is not None else None
    )
    if not secret:
        return None
    gateway_settings = settings.model_copy(update={"DEV_TOKEN_SECRET": SecretStr(secret)})
    try:
        mode = resolve_auth_mode(gateway_settings)
    except AuthConfigError:
        return None  # the gateway will say why it does not start
    return secret if dev_sign_in_enabled(gateway_settings, mode) else None


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("ab")
    # Each service in its own process group, so a Ctrl-C here is handled once, by us, in order.
    return subprocess.Popen(
        [sys.executable, "-m", "kitrelay.services.cli", *args],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with code {proc.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway did not become healthy in {HEALTH_TIMEOUT_S:.0f}s; see {log_path}")


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _ensure_servers(settings: Settings, data_dir: Path, console: Console, servers: list[LocalServer]) -> None:
    """NATS and Redis, each reused where one listens or started; appended to `servers` as they come."""
    kinds: tuple[tuple[Callable[..., LocalServer], str, ServerName, bool], ...] = (
        (ensure_nats, settings.NATS_URL, "nats", len(settings.nats_servers) > 1),
        (ensure_redis, settings.REDIS_URL, "redis", bool(settings.redis_sentinels) or settings.REDIS_CLUSTER),
    )
    for ensure, url, name, clustered in kinds:
        if clustered:
            # A cluster someone else runs (several NATS servers, Redis behind Sentinel or a Redis Cluster).
            servers.append(LocalServer(name, url, None))
            console.print(f"[bold]{name}[/]: using the cluster of {redact_urls(url)}")
            continue
        server = ensure(url, data_dir=data_dir / name)
        servers.append(server)
        how = "started" if server.process else "using the one already listening at"
        console.print(f"[bold]{name}[/]: {how} {server.url}")


def run_all(settings: Settings, *, workers: list[AgentKind], data_dir: Path, console: Console) -> None:
    # SIGTERM (a service manager, `kill`) stops everything as Ctrl-C does, even where SIGINT was inherited ignored.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    servers: list[LocalServer] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        _ensure_servers(settings, data_dir, console, servers)
        migrate(settings.DATABASE_URL)
        console.print(f"[bold]database[/]: {redact_url(settings.DATABASE_URL)} (migrated)")

        env = {**os.environ, "NATS_URL": servers[0].url, "REDIS_URL": servers[1].url}
        if not _names_a_key(settings):
            # Multi-user by default: the browser page signs people in with tokens minted from this secret.
            env["DEV_TOKEN_SECRET"] = dev_token_secret(data_dir)
            console.print(f"[bold]sign-in[/]: local tokens, secret in {data_dir / DEV_TOKEN_SECRET_FILE}")
        signing_secret = _page_sign_in_secret(settings, env)
        gateway_log = logs / "gateway.log"
        procs["gateway"] = _spawn(["gateway"], env, gateway_log)
        for kind in workers:
            procs[f"worker {kind}"] = _spawn(["worker", "--agent", kind], env, logs / f"worker-{kind}.log")
        url = f"http://{settings.GATEWAY_HOST}:{settings.GATEWAY_PORT}"
        _wait_healthy(url, procs["gateway"], gateway_log)
        console.print(f"[bold]workers[/]: {', '.join(workers)}   [bold]logs[/]: {logs}")
        console.print(f"\nkitrelay is up at [bold cyan]{url}[/]  (chat in a browser there; ChatKit: {url}/chatkit)")
        if signing_secret is not None:
            # Printed here only: the person at this terminal owns the data directory; other users of the machine
            # can reach the gateway but not this link. It works once; `kitrelay sign-in-link` makes another.
            link = sign_in_link(url, mint_sign_in_code(signing_secret, settings.SIGN_IN_LINK_TTL_S))
            console.print(f"Sign in (one-time link, for you only): [bold cyan]{link}[/]", soft_wrap=True)
        console.print(f"Try: {chat_hint(url)}    Ctrl-C stops everything.\n")
        while all(proc.poll() is None for proc in procs.values()):
            time.sleep(0.5)
        name, dead = next((name, proc) for name, proc in procs.items() if proc.poll() is not None)
        console.print(f"[red]the {name} exited with code {dead.returncode}; see {logs}[/]")
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for server in reversed(servers):
            server.stop()
