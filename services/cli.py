"""The `kitrelay` command: run the system or one of its services, migrate, and chat from a terminal.

Each command imports its machinery when it runs: `kitrelay --help` and `kitrelay chat` load no web framework, no
database layer and no OpenTelemetry SDK (tests/services/test_cli.py checks it; benchmarks/cli_startup.py measures
the start-up).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from kitrelay.services.cli_output import DEFAULT_URL, console, errors, kitrelay_command
from kitrelay.services.kb_cli import app as kb_app
from kitrelay.services.tasks_cli import app as tasks_app
from kitrelay.services.turns_cli import turns as turns_command

if TYPE_CHECKING:
    from kitrelay.shared.settings import AgentKind

app = typer.Typer(help="kitrelay: a scalable backend for ChatKit chat UIs.", no_args_is_help=True)
RUN = "Run kitrelay"
USE = "Use kitrelay"
# Status and errors, so that stdout carries only the conversation.
err_console = errors

STATE_DIR = Path(".kitrelay")
LAST_THREAD_FILE = STATE_DIR / "last-thread"
# Written by `kitrelay up` (services/supervisor.py): the embedded default's token secret.
DEV_TOKEN_SECRET_FILE = STATE_DIR / "dev-token-secret"


@app.command(rich_help_panel=RUN)
def up(
    workers: Annotated[list[str] | None, typer.Option("--worker", help="Worker kinds to start (repeatable).")] = None,
) -> None:
    """Run everything on the embedded defaults: NATS and Redis (reused or started), gateway and workers."""
    from rich.console import Console

    from kitrelay.services.supervisor import run_all
    from kitrelay.shared.settings import Settings
    from kitrelay.shared.store.engine import DatabaseUnreachableError

    kinds = _kinds(workers or ["triage", "task", "research"])
    # Piped (`make run | tee`, a log file), Rich would wrap each line at 80 columns, mid-sentence.
    out = Console(soft_wrap=not console.is_terminal)
    try:
        run_all(Settings(), workers=kinds, data_dir=STATE_DIR, console=out)
    except DatabaseUnreachableError as exc:
        _exit_with(f"kitrelay up: {exc}")


@app.command(rich_help_panel=RUN)
def gateway() -> None:
    """Run the HTTP gateway (the ChatKit endpoint)."""
    from kitrelay.gateway.main import main
    from kitrelay.shared.settings import Settings

    main(Settings())


@app.command(rich_help_panel=RUN)
def worker(agent: Annotated[str, typer.Option("--agent", help="Agent kind: triage, task or research.")]) -> None:
    """Run one agent worker process."""
    from kitrelay.agents.registry import UnknownAgentKindError, build_agent
    from kitrelay.services.worker import main
    from kitrelay.shared.settings import Settings

    (kind,) = _kinds([agent])
    try:
        build_agent(kind)
    except UnknownAgentKindError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agent") from None
    main(kind, Settings())


@app.command(rich_help_panel=RUN)
def migrate() -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    from kitrelay.shared.redact import redact_url
    from kitrelay.shared.settings import Settings
    from kitrelay.shared.store.engine import DatabaseUnreachableError
    from kitrelay.shared.store.engine import migrate as run_migrations

    settings = Settings()
    try:
        run_migrations(settings.DATABASE_URL)
    except DatabaseUnreachableError as exc:
        _exit_with(f"kitrelay migrate: {exc}")
    console.print(f"database at {redact_url(settings.DATABASE_URL)} is up to date")


@app.command(rich_help_panel=USE)
def chat(  # noqa: PLR0917 (typer maps each parameter to an option)
    message: Annotated[list[str] | None, typer.Argument(help="The message; without one, chat interactively.")] = None,
    url: Annotated[str, typer.Option(help="The gateway's base URL.", envvar="KITRELAY_URL")] = DEFAULT_URL,
    thread: Annotated[str | None, typer.Option(help="Continue this thread.")] = None,
    cont: Annotated[bool, typer.Option("--continue", "-c", help="Continue the last thread of this directory.")] = False,
    token: Annotated[str | None, typer.Option(help="Bearer token (JWT).", envvar="KITRELAY_TOKEN")] = None,
    user: Annotated[
        str | None, typer.Option(help="User to mint a local token for (default DEV_USER_ID); see above.")
    ] = None,
    team: Annotated[str | None, typer.Option(help="Team of that user (default DEV_TEAM_ID).")] = None,
) -> None:
    """Talk to a running kitrelay from the terminal.

    Without --token or KITRELAY_TOKEN, a token is minted from .kitrelay/dev-token-secret when that file exists
    (`kitrelay up` writes it), for --user of --team. Interactive commands: /1, /2, ... run a widget's numbered
    action; /new, /threads, /help, /quit."""
    import asyncio

    # httpx imports its own command-line tool (Click, Pygments, Rich's syntax highlighting) as it is imported, an
    # eighth of this command's start-up; nothing here runs that tool, and httpx does without it (a stub `main`).
    # A None in sys.modules means "this module cannot be imported".
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx
    from rich.text import Text

    from kitrelay.gateway.client import ChatKitError
    from kitrelay.gateway.tokens import DevTokenError
    from kitrelay.services.chat_session import ConnectionLostError, describe_error

    if cont and thread is None:
        if not LAST_THREAD_FILE.exists():
            raise typer.BadParameter("there is no previous thread here yet", param_hint="--continue")
        thread = LAST_THREAD_FILE.read_text().strip()
    text = " ".join(message or [])
    try:
        bearer = _chat_token(token, user, team)
        code = asyncio.run(_chat(url, thread, text, bearer))
    except DevTokenError as exc:
        err_console.print(f"[red]kitrelay chat: {exc}[/]", highlight=False)
        raise typer.Exit(1) from None
    except httpx.ConnectError:
        err_console.print(f"[red]cannot reach kitrelay at {url}: is it running? (make run)[/]", highlight=False)
        raise typer.Exit(1) from None
    except ChatKitError as exc:
        err_console.print(Text(describe_error(exc), style="red"))
        raise typer.Exit(1) from None
    except ConnectionLostError as exc:
        err_console.print(Text(str(exc), style="red"))
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        err_console.print(Text(f"talking to {url} failed: {exc or type(exc).__name__}", style="red"))
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command(rich_help_panel=USE)
def token(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's 'sub').")],
    team: Annotated[str, typer.Option("--team", help="The team id (the token's team claim).")],
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds.")] = 3600,
) -> None:
    """Mint a JWT for local use, signed with DEV_TOKEN_SECRET (refused when it is not set)."""
    from kitrelay.gateway.tokens import DevTokenError, mint_dev_token
    from kitrelay.shared.settings import Settings

    try:
        typer.echo(mint_dev_token(Settings(), user=user, team=team, ttl_s=ttl))
    except DevTokenError as exc:
        typer.echo(f"kitrelay token: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("sign-in-link", rich_help_panel=USE)
def sign_in_link() -> None:
    """Print a new one-time link that signs a browser in to the local page (`kitrelay up` prints one at start)."""
    from kitrelay.services.supervisor import new_sign_in_link
    from kitrelay.shared.settings import Settings

    typer.echo(new_sign_in_link(Settings(), STATE_DIR))


@app.command(rich_help_panel=RUN)
def health(
    checks: Annotated[str, typer.Option("--check", help="Comma-separated: nats,redis,database,schema.")] = (
        "nats,redis,database"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds before a check counts as failed.")] = 5.0,
) -> None:
    """Check this process's connections (exit 0 healthy, 1 not): the worker's probe in Kubernetes."""
    from kitrelay.services.health import main as health_main

    raise typer.Exit(health_main(["--check", checks, "--timeout", str(timeout)]))


app.command("turns", rich_help_panel=USE)(turns_command)
app.add_typer(
    kb_app,
    name="kb",
    help="The teams' knowledge base (documents the research agent answers from).",
    rich_help_panel=USE,
)
app.add_typer(
    tasks_app,
    name="tasks",
    help="A team's tasks; every change shows on the team's open chat pages at once.",
    rich_help_panel=USE,
)


def _chat_token(token: str | None, user: str | None, team: str | None) -> str | None:
    """The given token; else one minted from the embedded default's secret file; else none (dev mode)."""
    if token:
        return token
    from kitrelay.gateway.keys import AuthConfigError, check_secret_strength
    from kitrelay.gateway.tokens import DEFAULT_TTL_S, DevTokenError, mint_token
    from kitrelay.shared.settings import Settings

    if not DEV_TOKEN_SECRET_FILE.exists():
        if user or team:
            raise DevTokenError(
                f"--user/--team need {DEV_TOKEN_SECRET_FILE} (written by `kitrelay up`) to mint a token; "
                "otherwise pass --token."
            )
        return None
    settings = Settings()
    secret = DEV_TOKEN_SECRET_FILE.read_text(encoding="utf-8").strip().encode()
    try:
        check_secret_strength(secret, str(DEV_TOKEN_SECRET_FILE))
    except AuthConfigError as exc:
        raise DevTokenError(str(exc)) from None
    return mint_token(
        secret,
        user or settings.DEV_USER_ID,
        team or settings.DEV_TEAM_ID,
        DEFAULT_TTL_S,
        settings.JWT_ISSUER,
        settings.JWT_AUDIENCE,
        team_claim=settings.JWT_TEAM_CLAIM,
    )


def _remember_thread(thread_id: str) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    LAST_THREAD_FILE.write_text(thread_id)


async def _chat(url: str, thread_id: str | None, text: str, token: str | None) -> int:
    """Send `text` (or, without it, each line typed) to the thread, creating one on the first message. Returns
    the exit code: 0, or 130 when Ctrl-C ended it."""
    import httpx

    from kitrelay.gateway.client import ChatKitClient
    from kitrelay.services.chat_session import ChatSession, LineReader, QuitError
    from kitrelay.services.chat_view import ChatView

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    view = ChatView(console, status=err_console)

    def remember(new_thread: str) -> None:
        _remember_thread(new_thread)
        hint = f"continue it with: {kitrelay_command()} chat -c ..."
        err_console.print(f"[dim]thread {new_thread} ({hint})[/]", highlight=False)

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None), headers=headers) as http:
        session = ChatSession(ChatKitClient(http), view, thread_id=thread_id, on_thread=remember)
        session.interrupts.install()
        try:
            if text:
                await session.say(text)
            else:
                await session.interact(LineReader(console))
        except QuitError:
            return 130
        finally:
            session.interrupts.uninstall()
    return 0


def _kinds(values: list[str]) -> list[AgentKind]:
    from kitrelay.shared.settings import AGENT_KINDS

    kinds: list[AgentKind] = []
    for value in values:
        if value not in AGENT_KINDS:
            raise typer.BadParameter(f"unknown agent kind {value!r}; choose from {', '.join(AGENT_KINDS)}")
        kinds.append(value)
    return kinds


def _exit_with(message: str) -> NoReturn:
    """One line on stderr, exit code 1."""
    errors.print(message, style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
