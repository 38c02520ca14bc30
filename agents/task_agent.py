"""The task agent: keeps the team's task list. Its list tool streams a ListView widget instead of text."""

from __future__ import annotations

from datetime import date
from typing import Literal

from agents import Agent, RunContextWrapper, function_tool
from chatkit.agents import AgentContext

from kitrelay.agents.context import TurnContext, turn_context
from kitrelay.agents.widgets import task_list_copy_text, task_list_widget
from kitrelay.services.tasks import TaskNotFoundError

INSTRUCTIONS = """You are the task assistant of a team's chat. You add, list, complete, delete and rename tasks.

IMPORTANT: when list_tasks has run, do NOT restate or format the tasks yourself: they are already shown to the
user in a widget. Say one short sentence such as "Here are your tasks."
For add, complete, delete and rename, confirm in one short sentence what was done, naming the task.
If a task number does not exist, say so plainly. Never invent task numbers."""

Ctx = RunContextWrapper[AgentContext[TurnContext]]


def _parse_due(due_date: str | None) -> date | None:
    if not due_date:
        return None
    try:
        return date.fromisoformat(due_date)
    except ValueError:
        return None


@function_tool
async def add_task(ctx: Ctx, title: str, due_date: str | None = None) -> str:
    """Add a task to the team's list.

    Args:
        title: What needs doing, in the user's words.
        due_date: Optional due date as YYYY-MM-DD.
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.add(tc.identity, title=title, due_date=_parse_due(due_date))
    except ValueError as exc:
        return f"Could not add the task: {exc}"
    due = f", due {task.due_date.isoformat()}" if task.due_date else ""
    return f'Added task #{task.id} "{task.title}"{due}.'


@function_tool
async def list_tasks(ctx: Ctx, status: Literal["all", "open", "done"] | None = None) -> str:
    """Show the team's tasks to the user in a widget.

    Args:
        status: Which tasks to show: all (default), open or done.
    """
    tc = turn_context(ctx)
    wanted = status or "all"
    tasks = await tc.tasks.list(tc.identity, status=wanted)
    title = {"all": "Tasks", "open": "Open tasks", "done": "Done tasks"}[wanted]
    await ctx.context.stream_widget(
        task_list_widget(tasks, total=len(tasks), title=title), copy_text=task_list_copy_text(tasks)
    )
    if not tasks:
        return "Your list is empty."
    return "Here are your tasks."


@function_tool
async def complete_task(ctx: Ctx, task_id: int) -> str:
    """Mark a task as done.

    Args:
        task_id: The task's number, as shown after '#'.
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.complete(tc.identity, task_id)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    return f'Completed task #{task.id} "{task.title}".'


@function_tool
async def delete_task(ctx: Ctx, task_id: int) -> str:
    """Delete a task.

    Args:
        task_id: The task's number, as shown after '#'.
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.delete(tc.identity, task_id)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    return f'Deleted task #{task.id} "{task.title}".'


@function_tool
async def rename_task(ctx: Ctx, task_id: int, new_title: str) -> str:
    """Give a task a new title.

    Args:
        task_id: The task's number, as shown after '#'.
        new_title: The new title.
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.rename(tc.identity, task_id, title=new_title)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    except ValueError as exc:
        return f"Could not rename the task: {exc}"
    return f'Renamed task #{task.id} to "{task.title}".'


def build_task_agent() -> Agent[AgentContext[TurnContext]]:
    """The model is not set here: the worker's RunConfig supplies the provider (offline or a real one)."""
    return Agent[AgentContext[TurnContext]](
        name="Task",
        instructions=INSTRUCTIONS,
        handoff_description="Adds, lists, completes, deletes and renames the team's tasks.",
        tools=[add_task, list_tasks, complete_task, delete_task, rename_task],
    )
