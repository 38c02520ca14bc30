"""`kitrelay tasks`: a team's tasks from a terminal (list, add, done, reopen, rename, assign, delete).

The same domain service the task agent and its widgets use (services/tasks.py), so every change is published to
the team's event stream: the team's open chat pages show it within a second. Works on `DATABASE_URL` (migrated)
and `REDIS_URL`; a change Redis cannot take is still saved (and said so on stderr). Mistakes an operator can make
(an unknown task number, an empty title, an unmigrated database) end with a red one-line message and exit code 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from kitrelay.services.cli_output import console, errors, fail, print_table

if TYPE_CHECKING:
    from kitrelay.services.tasks import TaskRecord, TaskService
    from kitrelay.shared.messages import Identity

T = TypeVar("T")

app = typer.Typer(help="A team's tasks (what the task agent and its widgets show).", no_args_is_help=True)
TeamOption = Annotated[str, typer.Option("--team", help="The team whose tasks these are.")]
ActorOption = Annotated[str, typer.Option("--as", help="Who makes the change, as the team's pages are told.")]
NumberArgument = Annotated[int, typer.Argument(help="The task's number in its team (shown as #N).", min=1)]


@app.command("list")
def list_tasks(team: TeamOption) -> None:
    """The team's tasks, open ones first."""
    tasks = _run(team, "cli", lambda service, who: service.list(who))
    if not tasks:
        console.print(f"no tasks in team {escape(team)}")
        return
    table = Table("#", "", "title", "assignee", "due")
    for task in tasks:
        table.add_row(
            str(task.number),
            "[green]done[/green]" if task.done else "open",
            escape(task.title),
            escape(task.assignee_id or ""),
            task.due_date.isoformat() if task.due_date else "",
        )
    print_table(table)


@app.command()
def add(
    title: Annotated[str, typer.Argument(help="What needs doing.")],
    team: TeamOption,
    assignee: Annotated[str | None, typer.Option(help="A member of the team to give it to.")] = None,
    actor: ActorOption = "cli",
) -> None:
    """Add a task."""
    _said(_run(team, actor, lambda service, who: service.add(who, title=title, assignee_id=assignee)), "added")


@app.command()
def done(number: NumberArgument, team: TeamOption, actor: ActorOption = "cli") -> None:
    """Mark a task done."""
    _said(_run(team, actor, lambda service, who: service.complete(who, number)), "done")


@app.command()
def reopen(number: NumberArgument, team: TeamOption, actor: ActorOption = "cli") -> None:
    """Mark a done task open again."""
    _said(_run(team, actor, lambda service, who: service.reopen(who, number)), "reopened")


@app.command()
def rename(
    number: NumberArgument,
    title: Annotated[str, typer.Argument(help="The new title.")],
    team: TeamOption,
    actor: ActorOption = "cli",
) -> None:
    """Give a task a new title."""
    _said(_run(team, actor, lambda service, who: service.rename(who, number, title=title)), "renamed")


@app.command()
def assign(
    number: NumberArgument,
    assignee: Annotated[str, typer.Argument(help="The team member, e.g. bob or @bob.")],
    team: TeamOption,
    actor: ActorOption = "cli",
) -> None:
    """Give a task to a member of the team."""
    _said(_run(team, actor, lambda service, who: service.assign(who, number, assignee_id=assignee)), "assigned")


@app.command()
def delete(number: NumberArgument, team: TeamOption, actor: ActorOption = "cli") -> None:
    """Delete a task."""
    _said(_run(team, actor, lambda service, who: service.delete(who, number)), "deleted")


def _said(task: TaskRecord, what: str) -> None:
    console.print(f"{what} #{task.number} {escape(task.title)}")


def _run(team: str, actor: str, work: Callable[[TaskService, Identity], Awaitable[T]]) -> T:
    """Run `work` on the configured database and Redis, turning what an operator can get wrong into a message."""
    # Imported here: `kitrelay --help` and the other commands do not load the database layer.
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    from kitrelay.services.task_events import TaskEventPublisher
    from kitrelay.services.tasks import TaskNotFoundError, TaskService
    from kitrelay.shared.connections import connect_redis
    from kitrelay.shared.messages import Identity
    from kitrelay.shared.settings import Settings
    from kitrelay.shared.store.engine import make_engine, make_sessionmaker

    settings = Settings()
    try:
        who = Identity(user_id=actor, team_id=team)
    except ValueError:
        fail("--team and --as must not be empty")

    async def run() -> T:
        engine = make_engine(settings.DATABASE_URL)
        try:
            redis = await connect_redis(settings)
        except (RedisError, OSError) as exc:
            errors.print(
                f"[yellow]warning:[/yellow] Redis cannot be reached ({escape(str(exc))}): open pages will not "
                "see this change before they reload"
            )
            redis = None
        try:
            events = TaskEventPublisher(redis, settings.NAMESPACE) if redis is not None else None
            return await work(TaskService(make_sessionmaker(engine), events=events), who)
        finally:
            if redis is not None:
                await redis.aclose()
            await engine.dispose()

    try:
        return asyncio.run(run())
    except TaskNotFoundError as exc:
        fail(f"no task #{exc.args[0]} in team {team}")
    except ValueError as exc:
        fail(str(exc))
    except (SQLAlchemyError, OSError) as exc:
        detail = getattr(exc, "orig", None) or exc
        fail(f"database error: {detail}. Is DATABASE_URL right, and is the database migrated (kitrelay migrate)?")
