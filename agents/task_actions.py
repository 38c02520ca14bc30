"""Widget actions of the task agent: a click changes the task and redraws, in place, every widget of the thread that
shows it (no model call); "Refresh" draws a list afresh."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Literal

from chatkit.types import (
    ErrorEvent,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadStreamEvent,
    WidgetItem,
)
from pydantic import BaseModel, ValidationError

from kitrelay.agents.context import TurnContext
from kitrelay.agents.task_views import redraw, view_of
from kitrelay.agents.widgets import (
    REFRESH_ACTION,
    TOGGLE_ACTION,
    task_card_widget,
    task_copy_text,
    task_list_copy_text,
    task_list_widget,
)
from kitrelay.services.tasks import TaskNotFoundError, TaskStatus
from kitrelay.shared.ids import new_id
from kitrelay.shared.messages import WidgetAction


class TogglePayload(BaseModel):
    """What the task widgets put in a toggle action (see agents/widgets.py)."""

    # The task's number in its team (services/tasks.py). The key keeps its old name so that widgets saved before
    # numbers were per team still work: migration 0005 numbered those tasks by their old ids.
    task_id: int
    # The state the click asks for; absent in widgets drawn before it existed, which then toggle.
    done: bool | None = None
    view: Literal["list", "card"] = "list"
    status: TaskStatus = "all"
    assignee: str | None = None


class RefreshPayload(BaseModel):
    """A list's "Refresh": its filter."""

    status: TaskStatus = "all"
    assignee: str | None = None


async def handle_task_action(
    action: WidgetAction, context: TurnContext, sender: WidgetItem | None
) -> AsyncIterator[ThreadStreamEvent]:
    if action.type == REFRESH_ACTION:
        async for event in _refresh(action, context, sender):
            yield event
        return
    if action.type != TOGGLE_ACTION:
        yield ErrorEvent(code="custom", message=f"Unknown task action '{action.type}'.", allow_retry=False)
        return
    try:
        payload = TogglePayload.model_validate(action.payload)
    except ValidationError:
        yield ErrorEvent(code="custom", message="That action is missing its task.", allow_retry=False)
        return
    try:
        if payload.done is None:
            task = await context.tasks.toggle(context.identity, payload.task_id)
        else:
            task = await context.tasks.set_done(context.identity, payload.task_id, done=payload.done)
    except TaskNotFoundError:
        yield ErrorEvent(code="custom", message=f"Task #{payload.task_id} no longer exists.", allow_retry=False)
        return

    if sender is not None and view_of(sender) is None:
        # Drawn before widgets kept their view: drawn again as the click's payload describes it.
        if payload.view == "card":
            widget, copy_text = task_card_widget(task), task_copy_text(task)
        else:
            tasks = await context.tasks.list(context.identity, status=payload.status, assignee_id=payload.assignee)
            widget = task_list_widget(tasks, total=len(tasks), status=payload.status, assignee=payload.assignee)
            copy_text = task_list_copy_text(tasks)
        yield ThreadItemReplacedEvent(item=sender.model_copy(update={"widget": widget, "copy_text": copy_text}))
    elif sender is None:
        # An action from outside a widget item (a client that sent no item id): show the result as a new item.
        item = WidgetItem(
            id=new_id("msg"),
            thread_id=context.thread_id,
            created_at=datetime.now(),
            widget=task_card_widget(task),
            copy_text=task_copy_text(task),
        )
        yield ThreadItemDoneEvent(item=item)
    for event in await redraw_thread(context, first=sender):
        yield event


async def redraw_thread(context: TurnContext, *, first: WidgetItem | None = None) -> list[ThreadStreamEvent]:
    """`thread.item.replaced` for every task widget of the turn's thread that a change made look different (the
    widget item `first` first: the one clicked, redrawn even where the thread's widgets cannot be read). The
    worker's turn log saves each, so a reload agrees."""
    widgets: list[ThreadItem] = (
        list(await context.widgets.load_widget_items(context.thread_id, context)) if context.widgets is not None else []
    )
    if first is not None and all(item.id != first.id for item in widgets):
        widgets.insert(0, first)
    changed = await redraw(widgets, context.tasks, context.identity)
    order = sorted(changed, key=lambda item_id: first is None or item_id != first.id)
    return [ThreadItemReplacedEvent(item=changed[item_id]) for item_id in order]


async def _refresh(
    action: WidgetAction, context: TurnContext, sender: WidgetItem | None
) -> AsyncIterator[ThreadStreamEvent]:
    try:
        payload = RefreshPayload.model_validate(action.payload)
    except ValidationError:
        yield ErrorEvent(code="custom", message="That list cannot be refreshed.", allow_retry=False)
        return
    tasks = await context.tasks.list(context.identity, status=payload.status, assignee_id=payload.assignee)
    widget = task_list_widget(tasks, total=len(tasks), status=payload.status, assignee=payload.assignee)
    copy_text = task_list_copy_text(tasks)
    if sender is not None:
        yield ThreadItemReplacedEvent(item=sender.model_copy(update={"widget": widget, "copy_text": copy_text}))
    else:
        item = WidgetItem(
            id=new_id("msg"), thread_id=context.thread_id, created_at=datetime.now(), widget=widget, copy_text=copy_text
        )
        yield ThreadItemDoneEvent(item=item)
