"""ChatKit thread items as tests make them."""

from __future__ import annotations

from datetime import UTC, datetime

from chatkit.types import InferenceOptions, UserMessageItem, UserMessageTextContent, WidgetItem

from kitrelay.agents.widgets import task_list_widget
from kitrelay.services.tasks import TaskRecord
from kitrelay.shared.ids import new_id


def user_message(thread_id: str, text: str) -> UserMessageItem:
    """A new user message in the thread (not saved)."""
    return UserMessageItem(
        id=new_id("msg"),
        thread_id=thread_id,
        created_at=datetime.now(),
        content=[UserMessageTextContent(text=text)],
        attachments=[],
        inference_options=InferenceOptions(),
    )


def task_record(
    task_id: int,
    title: str,
    *,
    done: bool = False,
    assignee: str | None = None,
    created_at: datetime | None = None,
) -> TaskRecord:
    """A task as the task service returns it (not saved)."""
    created = created_at or datetime.now(UTC)
    return TaskRecord(
        number=task_id,
        team_id="acme",
        owner_id="alice",
        assignee_id=assignee,
        title=title,
        done=done,
        due_date=None,
        created_at=created,
        completed_at=created if done else None,
    )


def task_widget_item(thread_id: str, *titles: str) -> WidgetItem:
    """A task list widget item of open tasks with these titles, as the task agent draws it (not saved)."""
    created = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
    tasks = [task_record(n, title, created_at=created) for n, title in enumerate(titles, 1)]
    return WidgetItem(
        id=new_id("msg"),
        thread_id=thread_id,
        created_at=created,
        widget=task_list_widget(tasks, total=len(tasks)),
        copy_text="\n".join(titles),
    )
