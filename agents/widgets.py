"""ChatKit widgets for tasks and research sources, built from chatkit's typed widget classes.

chatkit marks the named widget classes deprecated in favour of WidgetTemplate files; the classes still validate
every field at construction, which catches the seed document's mistakes (bad icons, None children) right here.
The deprecation warning is silenced locally so it does not bury real warnings.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from chatkit.actions import ActionConfig
from chatkit.types import EntitySource
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
    Spacer,
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
# Asks for the list drawn afresh: the rows of a list keep their place until the user asks for this.
REFRESH_ACTION = "task.refresh"
LIST_TITLES: dict[TaskStatus, str] = {"all": "Tasks", "open": "Open tasks", "done": "Done tasks"}
# A task widget's root carries what it shows as its id ("kitrelay.tasks/list?..."), so that whoever reads it later
# (a click in it, a change made elsewhere, a reload) can draw it again from the tasks as they are now.
VIEW_PREFIX = "kitrelay.tasks/"


@dataclass(frozen=True)
class TaskListView:
    """A list of tasks as drawn: its filter, the tasks it shows in the order shown, and the highest task number
    that matched when it was drawn (a task numbered above it was added since)."""

    status: TaskStatus
    assignee: str | None
    rows: tuple[int, ...]
    since: int

    def widget_id(self) -> str:
        query = {"status": self.status, "rows": ".".join(map(str, self.rows)), "since": str(self.since)}
        if self.assignee is not None:
            query["assignee"] = self.assignee
        return f"{VIEW_PREFIX}list?{urlencode(query)}"


@dataclass(frozen=True)
class TaskCardView:
    """One task's card."""

    number: int

    def widget_id(self) -> str:
        return f"{VIEW_PREFIX}card?{urlencode({'task': str(self.number)})}"


TaskView = TaskListView | TaskCardView


def parse_view(widget_id: object) -> TaskView | None:
    """What a task widget shows, from its root's id; None for any other widget (or one drawn before views)."""
    if not isinstance(widget_id, str) or not widget_id.startswith(VIEW_PREFIX):
        return None
    kind, _, query = widget_id.removeprefix(VIEW_PREFIX).partition("?")
    fields = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}
    try:
        if kind == "card":
            return TaskCardView(int(fields["task"]))
        if kind == "list":
            status = fields.get("status", "all")
            if status not in LIST_TITLES:
                return None
            rows = tuple(int(n) for n in fields.get("rows", "").split(".") if n)
            return TaskListView(
                status=status,  # checked against LIST_TITLES above
                assignee=fields.get("assignee"),
                rows=rows,
                since=int(fields.get("since", "0")),
            )
    except (KeyError, ValueError):
        return None
    return None


@contextmanager
def _widget_classes() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _toggle(task: TaskRecord, view: dict[str, Any]) -> ActionConfig:
    # The payload carries the view it came from (widgets drawn before views were kept in their root's id relied on
    # it). The payload says the state to reach, not "flip": a click carried out twice leaves the same state.
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


def _deleted_row(number: int) -> ListViewItem:
    # Keeps its place (the rows below stay where they were), says what happened, and no longer takes a click.
    return ListViewItem(
        key=f"task-{number}",
        children=[
            Row(
                gap=3,
                align="center",
                children=[
                    Icon(name="empty-circle", color="secondary"),
                    Col(gap=1, children=[Text(value="This task was deleted.", color="secondary", italic=True)]),
                    Badge(label=f"#{number}", color="secondary", variant="soft"),
                ],
            )
        ],
    )


def _plural(count: int, one: str) -> str:
    return f"{count} {one}" if count == 1 else f"{count} {one}s"


def task_list_widget(
    tasks: Sequence[TaskRecord], *, total: int, status: TaskStatus = "all", assignee: str | None = None
) -> WidgetRoot:
    """A fresh list: the tasks that match, at most MAX_TASK_ROWS of them; clicking a row toggles the task."""
    shown = list(tasks)[:MAX_TASK_ROWS]
    view = TaskListView(
        status=status,
        assignee=assignee,
        rows=tuple(task.number for task in shown),
        since=max((task.number for task in tasks), default=0),
    )
    return task_list_view_widget(view, {task.number: task for task in shown}, total=total)


def task_list_view_widget(
    view: TaskListView,
    shown: Mapping[int, TaskRecord],
    *,
    total: int,
    new: int = 0,
    stale: bool = False,
) -> WidgetRoot:
    """A list as drawn before, with its tasks as they are now: each row keeps its place (a task done since stays
    where it was, drawn done; a deleted one says so). `total` is how many tasks match the filter now, `new` how many
    of them were added since the list was drawn. A `stale` list (a fresh one would show other rows, or in another
    order) has a button that asks for it drawn afresh."""
    payload = {"view": "list", "status": view.status, "assignee": view.assignee}
    title = LIST_TITLES[view.status] + (f" for @{view.assignee}" if view.assignee else "")
    with _widget_classes():
        rows = [_task_row(shown[n], payload) if n in shown else _deleted_row(n) for n in view.rows]
        if not rows:
            rows = [ListViewItem(children=[Text(value="No tasks here.", color="secondary", italic=True)])]
        notes: list[str] = []
        if new:
            notes.append(f"{_plural(new, 'new task')} since this list was shown")
        hidden = total - new - sum(1 for n in view.rows if n in shown and _matches(shown[n], view))
        if hidden > 0:
            notes.append(f"{hidden} more not shown")
        if notes or stale:
            footer: list[WidgetComponent] = []
            if notes:
                footer.append(Caption(value=" · ".join(notes), color="secondary"))
            if stale:
                footer.append(Spacer())
                footer.append(
                    Button(
                        label="Refresh",
                        onClickAction=ActionConfig(type=REFRESH_ACTION, payload=payload),
                        style="secondary",
                        variant="outline",
                        size="sm",
                    )
                )
            rows.append(ListViewItem(key="footer", children=[Row(gap=2, align="center", children=footer)]))
        return ListView(id=view.widget_id(), children=rows, status={"text": f"{title} ({total})", "icon": "check"})


def _matches(task: TaskRecord, view: TaskListView) -> bool:
    if view.assignee is not None and task.assignee_id != view.assignee:
        return False
    return view.status == "all" or task.done == (view.status == "done")


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
        return Card(
            id=TaskCardView(task.number).widget_id(),
            size="sm",
            children=lines,
            status={"text": "Task", "icon": "check-circle"},
        )


def deleted_task_card_widget(number: int) -> WidgetRoot:
    """The card of a task that was deleted since it was drawn."""
    with _widget_classes():
        return Card(
            id=TaskCardView(number).widget_id(),
            size="sm",
            children=[
                Row(
                    gap=2,
                    align="center",
                    children=[
                        Title(value=f"Task #{number}", size="sm", color="secondary"),
                        Badge(label="deleted", color="secondary"),
                    ],
                ),
                Caption(value="This task was deleted.", color="secondary"),
            ],
            status={"text": "Task", "icon": "check-circle"},
        )


def task_list_copy_text(tasks: Sequence[TaskRecord]) -> str:
    """What "copy" puts on the clipboard, and what a model sees of the widget on later turns."""
    return "\n".join(f"#{t.number} [{'x' if t.done else ' '}] {t.title}" for t in tasks) or "No tasks."


def task_copy_text(task: TaskRecord) -> str:
    return f"#{task.number} [{'x' if task.done else ' '}] {task.title}"


# A client-side action (ChatKit's handler "client"): the page opens the document at the cited passage.
OPEN_DOCUMENT_ACTION = "document.open"


def document_source(hit: SearchHit) -> EntitySource:
    """A cited passage as an annotation's source: the document (an entity of the team's knowledge base, with its
    id) and, in `data`, which passage of it, so a client can open it there."""
    return EntitySource(
        id=hit.document_id,
        title=hit.title,
        description=hit.snippet,
        icon="book-open",
        interactive=True,
        data={"kind": "document", "document_id": hit.document_id, "passage": hit.position},
    )


def sources_widget(hits: Sequence[SearchHit]) -> WidgetRoot:
    """The documents an answer is based on: title, section and the matching passage, each with a button that
    opens the document there."""
    with _widget_classes():
        children: list[WidgetComponent] = []
        for number, hit in enumerate(hits, start=1):
            if children:
                children.append(Divider())
            heading = f" — {hit.heading}" if hit.heading else ""
            open_it = ActionConfig(
                type=OPEN_DOCUMENT_ACTION,
                handler="client",
                payload={"document_id": hit.document_id, "passage": hit.position, "title": hit.title},
            )
            children.append(
                Row(
                    gap=3,
                    align="start",
                    children=[
                        Col(
                            gap=1,
                            flex=1,
                            children=[
                                Text(value=f"[{number}] {hit.title}{heading}", weight="semibold"),
                                Caption(value=hit.snippet, color="secondary"),
                            ],
                        ),
                        Button(label="Open", onClickAction=open_it, style="secondary", variant="outline", size="sm"),
                    ],
                )
            )
        return Card(size="md", children=children, status={"text": f"Sources ({len(hits)})", "icon": "book-open"})


def sources_copy_text(hits: Sequence[SearchHit]) -> str:
    return "\n".join(f"[{n}] {hit.title}: {hit.snippet}" for n, hit in enumerate(hits, start=1))
