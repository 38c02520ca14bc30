"""The task agent: keeps the team's task list. Its tools show tasks as widgets instead of text."""

from __future__ import annotations

from datetime import date
from typing import Literal

from agents import Agent, RunContextWrapper, StopAtTools, function_tool
from chatkit.agents import AgentContext

from kitrelay.agents.context import TurnContext, turn_context
from kitrelay.agents.task_actions import redraw_thread
from kitrelay.agents.widgets import task_card_widget, task_copy_text, task_list_copy_text, task_list_widget
from kitrelay.services.tasks import TaskNotFoundError, TaskRecord, TaskStatus

INSTRUCTIONS = """You are the task assistant of a team's chat. You add, list, complete, reopen, rename, assign and
delete the team's tasks, and set due dates.

IMPORTANT: when list_tasks or add_task has run, do NOT restate or format the tasks yourself: they are already
shown to the user in a widget. Say one short sentence such as "Here are your tasks."
For the other changes, confirm in one short sentence what was done, naming the task.
If a task number does not exist, say so plainly. Never invent task numbers.

A message that is not about the team's tasks is not yours: hand a question about the team's documents, policies or
guides to the Research agent, and anything else (greetings, thanks, small talk, what the assistant can do) back to
the Triage agent. Do not answer those yourself."""

Ctx = RunContextWrapper[AgentContext[TurnContext]]


async def _redraw(ctx: Ctx) -> None:
    """Every widget of the thread that shows what a tool just changed is drawn again (replaced and saved)."""
    for event in await redraw_thread(turn_context(ctx)):
        await ctx.context.stream(event)


def _parse_due(due_date: str | None) -> date | None:
    if not due_date:
        return None
    try:
        return date.fromisoformat(due_date)
    except ValueError:
        return None


def _describe(task: TaskRecord) -> str:
    extra = []
    if task.assignee_id:
        extra.append(f"assigned to @{task.assignee_id}")
    if task.due_date:
        extra.append(f"due {task.due_date.isoformat()}")
    return f'task #{task.number} "{task.title}"' + (f" ({', '.join(extra)})" if extra else "")


@function_tool
async def add_task(ctx: Ctx, title: str, due_date: str | None = None, assignee: str | None = None) -> str:
    """Add a task to the team's list and show it as a card.

    Args:
        title: What needs doing, in the user's words.
        due_date: Optional due date as YYYY-MM-DD.
        assignee: Optional team member to give it to, e.g. "bob".
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.add(
            tc.identity,
            title=title,
            due_date=_parse_due(due_date),
            assignee_id=assignee,
            request_key=tc.request_key("add_task"),
        )
    except ValueError as exc:
        return f"Could not add the task: {exc}."
    await ctx.context.stream_widget(task_card_widget(task), copy_text=task_copy_text(task))
    await _redraw(ctx)
    return f"Added {_describe(task)}."


@function_tool
async def list_tasks(
    ctx: Ctx, status: Literal["all", "open", "done"] | None = None, assignee: str | None = None
) -> str:
    """Show the team's tasks to the user in a widget.

    Args:
        status: Which tasks to show: all (default), open or done.
        assignee: Only the tasks assigned to this team member.
    """
    tc = turn_context(ctx)
    wanted: TaskStatus = status or "all"
    tasks = await tc.tasks.list(tc.identity, status=wanted, assignee_id=assignee, limit=None)
    widget = task_list_widget(tasks, total=len(tasks), status=wanted, assignee=assignee)
    await ctx.context.stream_widget(widget, copy_text=task_list_copy_text(tasks))
    return "There are no tasks to show." if not tasks else "Here are your tasks."


async def _change(ctx: Ctx, task_id: int, verb: str, change: str) -> str:
    tc = turn_context(ctx)
    try:
        match change:
            case "complete":
                task = await tc.tasks.complete(tc.identity, task_id)
            case "reopen":
                task = await tc.tasks.reopen(tc.identity, task_id)
            case "delete":
                task = await tc.tasks.delete(tc.identity, task_id)
            case _:
                raise ValueError(change)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    await _redraw(ctx)
    return f"{verb} {_describe(task)}."


@function_tool
async def complete_task(ctx: Ctx, task_id: int) -> str:
    """Mark a task as done.

    Args:
        task_id: The task's number, as shown after '#'.
    """
    return await _change(ctx, task_id, "Completed", "complete")


@function_tool
async def reopen_task(ctx: Ctx, task_id: int) -> str:
    """Mark a done task as open again.

    Args:
        task_id: The task's number, as shown after '#'.
    """
    return await _change(ctx, task_id, "Reopened", "reopen")


@function_tool
async def delete_task(ctx: Ctx, task_id: int) -> str:
    """Delete a task.

    Args:
        task_id: The task's number, as shown after '#'.
    """
    return await _change(ctx, task_id, "Deleted", "delete")


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
        return f"Could not rename the task: {exc}."
    await _redraw(ctx)
    return f'Renamed task #{task.number} to "{task.title}".'


@function_tool
async def assign_task(ctx: Ctx, task_id: int, assignee: str) -> str:
    """Give a task to a member of the team.

    Args:
        task_id: The task's number, as shown after '#'.
        assignee: The team member, e.g. "bob" or "@bob".
    """
    tc = turn_context(ctx)
    try:
        task = await tc.tasks.assign(tc.identity, task_id, assignee_id=assignee)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    except ValueError as exc:
        return f"Could not assign the task: {exc}."
    await _redraw(ctx)
    return f"Assigned {_describe(task)}."


@function_tool
async def set_due_date(ctx: Ctx, task_id: int, due_date: str | None) -> str:
    """Set (or, with null, clear) a task's due date.

    Args:
        task_id: The task's number, as shown after '#'.
        due_date: The due date as YYYY-MM-DD, or null to clear it.
    """
    tc = turn_context(ctx)
    due = _parse_due(due_date)
    if due_date and due is None:
        return f"'{due_date}' is not a date; use YYYY-MM-DD."
    try:
        task = await tc.tasks.set_due_date(tc.identity, task_id, due_date=due)
    except TaskNotFoundError:
        return f"There is no task #{task_id}."
    await _redraw(ctx)
    return f"Updated {_describe(task)}."


TASK_TOOLS = [add_task, list_tasks, complete_task, reopen_task, delete_task, rename_task, assign_task, set_due_date]
# Tools whose widget is the answer, their one-line result its caption: the run ends with them (no model call to
# restate what the widget shows; the turn runner sends the line as the reply, agents/tool_answers.py).
WIDGET_ANSWER_TOOLS = ["add_task", "list_tasks"]


def build_task_agent(*, widget_tools_answer: bool = True) -> Agent[AgentContext[TurnContext]]:
    """The model is not set here: the worker's RunConfig supplies the provider (offline or a real one).
    `widget_tools_answer` False: the model is called again after a widget tool, to write the reply's line."""
    return Agent[AgentContext[TurnContext]](
        name="Task",
        instructions=INSTRUCTIONS,
        handoff_description="Adds, lists, completes, reopens, renames, assigns and deletes the team's tasks.",
        tools=list(TASK_TOOLS),
        tool_use_behavior=StopAtTools(stop_at_tool_names=WIDGET_ANSWER_TOOLS)
        if widget_tools_answer
        else "run_llm_again",
    )
