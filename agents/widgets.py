"""ChatKit widgets for tasks. Built from chatkit's typed widget classes.

chatkit marks the named widget classes deprecated in favour of WidgetTemplate files; the classes still validate
every field at construction, which catches the seed document's mistakes (bad icons, None children) right here.
The deprecation warning is silenced locally so it does not bury real warnings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from chatkit.actions import ActionConfig
from chatkit.widgets import Badge, Caption, Col, Icon, ListView, ListViewItem, Row, Text, WidgetComponent, WidgetRoot

from kitrelay.services.tasks import TaskRecord

# A chat bubble is no place for a long table: the widget shows this many rows and says how many more exist.
MAX_TASK_ROWS = 20
TOGGLE_ACTION = "task.toggle"


def _task_row(task: TaskRecord) -> ListViewItem:
    details: list[WidgetComponent] = [
        Text(value=task.title, weight="semibold", lineThrough=task.done, color="secondary" if task.done else None)
    ]
    meta = []
    if task.assignee_id:
        meta.append(f"@{task.assignee_id}")
    if task.due_date:
        meta.append(f"due {task.due_date.isoformat()}")
    if meta:
        details.append(Caption(value=" · ".join(meta), color="secondary"))
    return ListViewItem(
        key=f"task-{task.id}",
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
                    Badge(label=f"#{task.id}", color="secondary", variant="soft"),
                ],
            )
        ],
        onClickAction=ActionConfig(type=TOGGLE_ACTION, payload={"task_id": task.id}),
    )


def task_list_widget(tasks: Sequence[TaskRecord], *, total: int, title: str = "Tasks") -> WidgetRoot:
    """A ListView of at most MAX_TASK_ROWS tasks; clicking a row toggles the task on the server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        shown = list(tasks)[:MAX_TASK_ROWS]
        rows = [_task_row(task) for task in shown]
        if not rows:
            rows = [ListViewItem(children=[Text(value="No tasks yet.", color="secondary", italic=True)])]
        hidden = total - len(shown)
        if hidden > 0:
            rows.append(ListViewItem(children=[Caption(value=f"{hidden} more not shown", color="secondary")]))
        return ListView(children=rows, status={"text": f"{title} ({total})", "icon": "check"})


def task_list_copy_text(tasks: Sequence[TaskRecord]) -> str:
    """What "copy" puts on the clipboard, and what a model sees of the widget on later turns."""
    return "\n".join(f"#{t.id} [{'x' if t.done else ' '}] {t.title}" for t in tasks) or "No tasks."
