"""ChatKit widgets for tasks and research sources, built from chatkit's typed widget classes.

chatkit marks the named widget classes deprecated in favour of WidgetTemplate files; the classes still validate
every field at construction, which catches the seed document's mistakes (bad icons, None children) right here.
The deprecation warning is silenced locally so it does not bury real warnings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from chatkit.actions import ActionConfig
from chatkit.widgets import (
    Badge,
    Button,
    Caption,
    Card,
    Col,
    Divider,
    Icon,
    ListView,
    ListViewItem,
    Row,
    Text,
    Title,
    WidgetComponent,
    WidgetRoot,
)

from kitrelay.services.knowledge import SearchHit
from kitrelay.services.tasks import TaskRecord, TaskStatus

# A chat bubble is no place for a long table: the list shows this many rows and says how many more exist.
MAX_TASK_ROWS = 20
TOGGLE_ACTION = "task.toggle"
LIST_TITLES: dict[TaskStatus, str] = {"all": "Tasks", "open": "Open tasks", "done": "Done tasks"}


@contextmanager
def _widget_classes() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _toggle(task: TaskRecord, view: dict[str, Any]) -> ActionConfig:
    # The payload carries the view it came from, so the worker can redraw exactly that view after the click.
    # The payload says the state to reach, not "flip": a click carried out twice leaves the same state.
    return ActionConfig(type=TOGGLE_ACTION, payload={"task_id": task.number, "done": not task.done, **view})


def _meta(task: TaskRecord) -> str:
    parts = []
    if task.assignee_id:
        parts.append(f"@{task.assignee_id}")
    if task.due_date:
        parts.append(f"due {task.due_date.isoformat()}")
    return " · ".join(parts)


def _task_row(task: TaskRecord, view: dict[str, Any]) -> ListViewItem:
    details: list[WidgetComponent] = [
        Text(value=task.title, weight="semibold", lineThrough=task.done, color="secondary" if task.done else None)
    ]
    if meta := _meta(task):
        details.append(Caption(value=meta, color="secondary"))
    return ListViewItem(
        key=f"task-{task.number}",
        children=[
            Row(
                gap=3,
                align="center",
                children=[
                    Icon(
                        name="check-circle-filled" if task.done else "empty-circle",
                        color="success" if task.done else "secondary",
                    ),
                    Col(gap=1, children=details),
                    Badge(label=f"#{task.number}", color="secondary", variant="soft"),
                ],
            )
        ],
        onClickAction=_toggle(task, view),
    )


def task_list_widget(
    tasks: Sequence[TaskRecord], *, total: int, status: TaskStatus = "all", assignee: str | None = None
) -> WidgetRoot:
    """A ListView of at most MAX_TASK_ROWS tasks; clicking a row toggles the task on the server."""
    view = {"view": "list", "status": status, "assignee": assignee}
    title = LIST_TITLES[status] + (f" for @{assignee}" if assignee else "")
    with _widget_classes():
        shown = list(tasks)[:MAX_TASK_ROWS]
        rows = [_task_row(task, view) for task in shown]
        if not rows:
            rows = [ListViewItem(children=[Text(value="No tasks here.", color="secondary", italic=True)])]
        hidden = total - len(shown)
        if hidden > 0:
            rows.append(ListViewItem(children=[Caption(value=f"{hidden} more not shown", color="secondary")]))
        return ListView(children=rows, status={"text": f"{title} ({total})", "icon": "check"})


def task_card_widget(task: TaskRecord) -> WidgetRoot:
    """One task, with a button that marks it done (or open again)."""
    with _widget_classes():
        lines: list[WidgetComponent] = [
            Row(
                gap=2,
                align="center",
                children=[
                    Title(value=task.title, size="sm"),
                    Badge(label=f"#{task.number}", color="secondary", variant="soft"),
                    Badge(label="done" if task.done else "open", color="success" if task.done else "info"),
                ],
            )
        ]
        if meta := _meta(task):
            lines.append(Caption(value=meta, color="secondary"))
        lines.append(
            Row(
                children=[
                    Button(
                        label="Reopen" if task.done else "Mark done",
                        onClickAction=_toggle(task, {"view": "card"}),
                        style="secondary" if task.done else "primary",
                        size="sm",
                    )
                ]
            )
        )
        return Card(size="sm", children=lines, status={"text": "Task", "icon": "check-circle"})


def task_list_copy_text(tasks: Sequence[TaskRecord]) -> str:
    """What "copy" puts on the clipboard, and what a model sees of the widget on later turns."""
    return "\n".join(f"#{t.number} [{'x' if t.done else ' '}] {t.title}" for t in tasks) or "No tasks."


def task_copy_text(task: TaskRecord) -> str:
    return f"#{task.number} [{'x' if task.done else ' '}] {task.title}"


def sources_widget(hits: Sequence[SearchHit]) -> WidgetRoot:
    """The documents an answer is based on: title, section and the matching passage."""
    with _widget_classes():
        children: list[WidgetComponent] = []
        for number, hit in enumerate(hits, start=1):
            if children:
                children.append(Divider())
            heading = f" — {hit.heading}" if hit.heading else ""
            children.append(
                Col(
                    gap=1,
                    children=[
                        Text(value=f"[{number}] {hit.title}{heading}", weight="semibold"),
                        Caption(value=hit.snippet, color="secondary"),
                    ],
                )
            )
        return Card(size="md", children=children, status={"text": f"Sources ({len(hits)})", "icon": "book-open"})


def sources_copy_text(hits: Sequence[SearchHit]) -> str:
    return "\n".join(f"[{n}] {hit.title}: {hit.snippet}" for n, hit in enumerate(hits, start=1))
