"""Task widgets drawn again from the tasks as they are (agents/task_views.py), on SQLite and PostgreSQL: a list
keeps its rows and their order, marks tasks done, renamed or deleted since, counts the new ones and offers a
refresh; a card follows its task; what did not change is not redrawn; other widgets are left alone."""

from __future__ import annotations

import json
from datetime import datetime

from chatkit.types import WidgetItem

from kitrelay.agents.task_views import redraw, redraw_in_place, view_of
from kitrelay.agents.widgets import (
    REFRESH_ACTION,
    TaskCardView,
    TaskListView,
    parse_view,
    sources_widget,
    task_card_widget,
    task_copy_text,
    task_list_copy_text,
    task_list_widget,
)
from kitrelay.services.knowledge import SearchHit
from kitrelay.services.tasks import TaskService
from tests.databases import new_identity


def item(item_id: str, widget: object, copy_text: str = "") -> WidgetItem:
    return WidgetItem(id=item_id, thread_id="thr_1", created_at=datetime.now(), widget=widget, copy_text=copy_text)


def rows(widget_item: WidgetItem) -> list[str]:
    """Each row of a list widget as its texts, joined."""
    data = json.loads(widget_item.widget.model_dump_json())

    def texts(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [str(node[key]) for key in ("value", "label") if key in node]
            return own + [text for child in node.get("children") or [] for text in texts(child)]
        return []

    return [" ".join(texts(row)) for row in data["children"]]


async def test_a_list_keeps_its_rows_and_shows_what_changed_since(task_service: TaskService) -> None:
    ANN = new_identity()
    alpha = await task_service.add(ANN, title="alpha")
    bravo = await task_service.add(ANN, title="bravo")
    drawn = item("msg_list", task_list_widget([alpha, bravo], total=2), task_list_copy_text([alpha, bravo]))
    view = view_of(drawn)
    assert view == TaskListView(status="all", assignee=None, rows=(alpha.number, bravo.number), since=bravo.number)
    assert await redraw([drawn], task_service, ANN) == {}, "nothing changed: nothing redrawn"

    await task_service.complete(ANN, alpha.number)
    await task_service.add(ANN, title="charlie")
    await task_service.rename(ANN, bravo.number, title="bravo two")
    changed = (await redraw([drawn], task_service, ANN))["msg_list"]

    shown = rows(changed)
    # The done task stays first (a fresh list would put it last); the new one is counted, not slipped in.
    assert shown[0].startswith("alpha") and shown[1].startswith("bravo two"), shown
    assert "1 new task since this list was shown" in shown[2] and "Refresh" in shown[2]
    assert changed.widget.model_dump(mode="json")["status"]["text"] == "Tasks (3)"
    assert changed.copy_text == f"#{alpha.number} [x] alpha\n#{bravo.number} [ ] bravo two"
    assert view_of(changed) == view, "a redrawn list keeps what it shows"
    refresh = changed.widget.model_dump(mode="json")["children"][-1]["children"][0]["children"][-1]
    assert refresh["onClickAction"]["type"] == REFRESH_ACTION

    await task_service.delete(ANN, bravo.number)
    deleted = rows((await redraw([drawn], task_service, ANN))["msg_list"])
    assert "This task was deleted." in deleted[1] and f"#{bravo.number}" in deleted[1]


async def test_a_card_follows_its_task_until_it_is_deleted(task_service: TaskService) -> None:
    ANN = new_identity()
    task = await task_service.add(ANN, title="pay rent")
    card = item("msg_card", task_card_widget(task), task_copy_text(task))
    assert view_of(card) == TaskCardView(task.number)
    assert await redraw([card], task_service, ANN) == {}
    await task_service.complete(ANN, task.number)
    done = (await redraw([card], task_service, ANN))["msg_card"]
    assert "Reopen" in done.widget.model_dump_json() and done.copy_text == f"#{task.number} [x] pay rent"
    await task_service.delete(ANN, task.number)
    gone = (await redraw([card], task_service, ANN))["msg_card"]
    assert "This task was deleted." in gone.widget.model_dump_json() and "Reopen" not in gone.widget.model_dump_json()


async def test_other_widgets_and_widgets_drawn_before_views_are_left_alone(task_service: TaskService) -> None:
    ANN = new_identity()
    hit = SearchHit(document_id="doc_1", title="Guide", heading=None, snippet="a", text="a", score=1.0)
    sources = item("msg_sources", sources_widget([hit]))
    legacy = task_card_widget(await task_service.add(ANN, title="old card"))
    legacy.id = None  # drawn before widgets carried their view
    old = item("msg_old", legacy)
    items = [sources, old]
    assert view_of(sources) is None and view_of(old) is None
    assert await redraw_in_place(list(items), task_service, ANN) == items


def test_views_read_back_what_they_wrote_and_nothing_else() -> None:
    view = TaskListView(status="open", assignee="bob smith", rows=(3, 1, 2), since=7)
    assert parse_view(view.widget_id()) == view
    assert parse_view(TaskCardView(4).widget_id()) == TaskCardView(4)
    for other in (None, 7, "", "card", "kitrelay.tasks/list?status=bogus", "kitrelay.tasks/card?task=x"):
        assert parse_view(other) is None
