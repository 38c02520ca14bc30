"""Task widgets drawn again from the tasks as they are now: a widget shows the truth whenever it is read.

A task widget keeps what it shows in its root's id (agents/widgets.py: a card's task, a list's filter and rows).
Whoever reads a thread's task widgets redraws them here, with one query for all the tasks they show and one per
list filter: the worker after a click or a tool's change (every widget of the thread that shows the task is
replaced and saved), the worker at the start of a turn (what changed elsewhere since reaches the model, and a
ChatKit JS client, as `thread.item.replaced`), and the gateway for every read of a thread's items (a reload, and a
page told of a change by its team's event stream, show what is true now).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from chatkit.types import ThreadItem, WidgetItem
from chatkit.widgets import WidgetRoot
from pydantic import TypeAdapter

from kitrelay.agents.widgets import (
    MAX_TASK_ROWS,
    TaskCardView,
    TaskListView,
    TaskView,
    deleted_task_card_widget,
    parse_view,
    task_card_widget,
    task_copy_text,
    task_list_view_widget,
)
from kitrelay.services.tasks import TaskRecord, TaskService, TaskStatus
from kitrelay.shared.messages import Identity

_roots: TypeAdapter[WidgetRoot] = TypeAdapter(WidgetRoot)


def view_of(item: ThreadItem) -> TaskView | None:
    """What a task widget item shows; None for any other item."""
    if not isinstance(item, WidgetItem):
        return None
    widget: Any = item.widget
    # A sender read for an action is left unvalidated (SqlStore.load_widget_sender): its widget is a dict.
    return parse_view(widget.get("id") if isinstance(widget, dict) else getattr(widget, "id", None))


def has_task_widgets(items: Iterable[ThreadItem]) -> bool:
    return any(view_of(item) is not None for item in items)


async def redraw(items: Sequence[ThreadItem], tasks: TaskService, identity: Identity) -> dict[str, WidgetItem]:
    """The task widgets among `items` drawn again from the tasks as they are now, by item id: only those that
    now look different."""
    views = {item.id: (item, view) for item in items if isinstance(item, WidgetItem) and (view := view_of(item))}
    if not views:
        return {}
    numbers: set[int] = set()
    filters: set[tuple[TaskStatus, str | None]] = set()
    for _, view in views.values():
        if isinstance(view, TaskCardView):
            numbers.add(view.number)
        else:
            numbers.update(view.rows)
            filters.add((view.status, view.assignee))
    shown = await tasks.by_numbers(identity, numbers)
    matching = {
        (status, assignee): await tasks.list(identity, status=status, assignee_id=assignee)
        for status, assignee in filters
    }
    changed: dict[str, WidgetItem] = {}
    for item_id, (item, view) in views.items():
        if isinstance(view, TaskCardView):
            task = shown.get(view.number)
            if task is None:
                widget, copy_text = deleted_task_card_widget(view.number), f"#{view.number} (deleted)"
            else:
                widget, copy_text = task_card_widget(task), task_copy_text(task)
        else:
            widget, copy_text = _list(view, shown, matching[(view.status, view.assignee)])
        if _json(widget) != _json(item.widget) or copy_text != item.copy_text:
            changed[item_id] = WidgetItem(
                id=item.id, thread_id=item.thread_id, created_at=item.created_at, widget=widget, copy_text=copy_text
            )
    return changed


def _list(view: TaskListView, shown: dict[int, TaskRecord], matching: list[TaskRecord]) -> tuple[WidgetRoot, str]:
    rows = {number: shown[number] for number in view.rows if number in shown}
    fresh_rows = tuple(task.number for task in matching[:MAX_TASK_ROWS])
    widget = task_list_view_widget(
        view,
        rows,
        total=len(matching),
        new=sum(1 for task in matching if task.number > view.since),
        stale=fresh_rows != view.rows,
    )
    lines = [task_copy_text(rows[number]) if number in rows else f"#{number} (deleted)" for number in view.rows]
    return widget, "\n".join(lines) or "No tasks."


def _json(widget: object) -> str:
    root = _roots.validate_python(widget) if isinstance(widget, dict) else widget
    return json.dumps(_roots.dump_python(root, mode="json", by_alias=True, exclude_none=True), sort_keys=True)  # type: ignore[arg-type]


async def redraw_in_place(items: list[ThreadItem], tasks: TaskService, identity: Identity) -> list[ThreadItem]:
    """`items` with their task widgets drawn again (the same list when none changed): what a read shows."""
    if not has_task_widgets(items):
        return items
    changed = await redraw(items, tasks, identity)
    return [changed.get(item.id, item) for item in items] if changed else items
