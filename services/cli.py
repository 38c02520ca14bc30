"""The `kitrelay` command: run the system or one of its services, migrate, and chat from a terminal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from kitrelay.gateway.client import ChatKitClient, ChatKitError
from kitrelay.services.kb_cli import app as kb_app
from kitrelay.services.turns_cli import turns as turns_command
from kitrelay.shared.redact import redact_url
from kitrelay.shared.settings import AGENT_KINDS, AgentKind, Settings

app = typer.Typer(help="kitrelay: a scalable backend for ChatKit chat UIs.", no_args_is_help=True)
app.add_typer(kb_app, name="kb", help="The teams' knowledge base (documents the research agent answers from).")
app.command("turns")(turns_command)
console = Console()

STATE_DIR = Path(".kitrelay")
LAST_THREAD_FILE = STATE_DIR / "last-thread"


@app.command()
def up(
    workers: Annotated[list[str] | None, typer.Option("--worker", help="Worker kinds to start (repeatable).")] = None,
) -> None:
    """Run everything on the embedded defaults: NATS and Redis (reused or started), gateway and workers."""
    from kitrelay.services.supervisor import run_all

    kinds = _kinds(workers or ["triage", "task", "research"])
    run_all(Settings(), workers=kinds, data_dir=STATE_DIR, console=console)


@app.command()
def gateway() -> None:
    """Run the HTTP gateway (the ChatKit endpoint)."""
    from kitrelay.gateway.main import main

    main(Settings())


@app.command()
def worker(agent: Annotated[str, typer.Option("--agent", help="Agent kind: triage, task or research.")]) -> None:
    """Run one agent worker process."""
    from kitrelay.agents.registry import UnknownAgentKindError, build_agent
    from kitrelay.services.worker import main

    (kind,) = _kinds([agent])
    try:
        build_agent(kind)
    except UnknownAgentKindError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agent") from None
    main(kind, Settings())


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    from kitrelay.shared.store.engine import migrate as run_migrations

    settings = Settings()
    run_migrations(settings.DATABASE_URL)
    console.print(f"database at {redact_url(settings.DATABASE_URL)} is up to date")


@app.command()
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's 'sub').")],
    team: Annotated[str, typer.Option("--team", help="The team id (the token's team claim).")],
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds.")] = 3600,
) -> None:
    """Mint a JWT for local use, signed with DEV_TOKEN_SECRET (refused when it is not set)."""
    from kitrelay.gateway.tokens import DevTokenError, mint_dev_token

    try:
        typer.echo(mint_dev_token(Settings(), user=user, team=team, ttl_s=ttl))
    except DevTokenError as exc:
        typer.echo(f"kitrelay token: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def health(
    checks: Annotated[str, typer.Option("--check", help="Comma-separated: nats,redis,database,schema.")] = (
        "nats,redis,database"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds before a check counts as failed.")] = 5.0,
) -> None:
    """Check this process's connections (exit 0 healthy, 1 not): the worker's probe in Kubernetes."""
    from kitrelay.services.health import main as health_main

    raise typer.Exit(health_main(["--check", checks, "--timeout", str(timeout)]))


@app.command()
def chat(
    message: Annotated[list[str] | None, typer.Argument(help="The message; without one, chat interactively.")] = None,
    url: Annotated[str, typer.Option(help="The gateway's base URL.", envvar="KITRELAY_URL")] = "http://127.0.0.1:8000",
    thread: Annotated[str | None, typer.Option(help="Continue this thread.")] = None,
    cont: Annotated[bool, typer.Option("--continue", "-c", help="Continue the last thread of this directory.")] = False,
    token: Annotated[str | None, typer.Option(help="Bearer token (JWT).", envvar="KITRELAY_TOKEN")] = None,
) -> None:
    """Talk to a running kitrelay from the terminal."""
    if cont and thread is None:
        if not LAST_THREAD_FILE.exists():
            raise typer.BadParameter("there is no previous thread here yet", param_hint="--continue")
        thread = LAST_THREAD_FILE.read_text().strip()
    text = " ".join(message or [])
    try:
        asyncio.run(_chat(url, thread, text, token))
    except httpx.ConnectError:
        console.print(f"[red]cannot reach kitrelay at {url}: is it running? (make run)[/]")
        raise typer.Exit(1) from None
    except ChatKitError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None


def _remember_thread(thread_id: str) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    LAST_THREAD_FILE.write_text(thread_id)


async def _chat(url: str, thread_id: str | None, text: str, token: str | None) -> None:
    """Send `text` (or, without it, each line typed) to the thread, creating one on the first message."""
    from kitrelay.services.chat_view import print_stream

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None), headers=headers) as http:
        client = ChatKitClient(http)
        interactive = not text
        while True:
            if interactive:
                try:
                    text = (await asyncio.to_thread(console.input, "[bold]you>[/] ")).strip()
                except EOFError:
                    return
                if text in {"/quit", "/exit"}:
                    return
                if not text:
                    continue
            events = client.send(thread_id, text) if thread_id else client.create_thread(text)
            created = await print_stream(events, console)
            if created:
                thread_id = created
                await asyncio.to_thread(_remember_thread, thread_id)
                console.print(f"[dim]thread {thread_id} (continue it with: kitrelay chat -c ...)[/]")
            if not interactive:
                return


def _kinds(values: list[str]) -> list[AgentKind]:
    kinds: list[AgentKind] = []
    for value in values:
        if value not in AGENT_KINDS:
            raise typer.BadParameter(f"unknown agent kind {value!r}; choose from {', '.join(AGENT_KINDS)}")
        kinds.append(value)
    return kinds


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
