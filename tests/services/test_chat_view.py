"""The terminal rendering of ChatKit events, on the real widgets the task and research agents send
(agents/widgets.py), serialised the way they travel: numbered actions, replaced widgets, text, status lines."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from kitrelay.agents.widgets import (
    MAX_TASK_ROWS,
    TOGGLE_ACTION,
    sources_widget,
    task_card_widget,
    task_list_widget,
)
from kitrelay.gateway.client import StreamEvent
from kitrelay.services.chat_view import ChatView, render_widget
from kitrelay.services.knowledge import SearchHit
from tests.items import task_record


def as_sent(widget: Any) -> dict[str, Any]:
    """A widget as it is in an SSE frame (the SDK's serialisation)."""
    data: dict[str, Any] = widget.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def widget_event(item_id: str, widget: Any, kind: str = "thread.item.done") -> StreamEvent:
    item = {"id": item_id, "thread_id": "thr_1", "created_at": "2026-01-01T00:00:00", "type": "widget"}
    return StreamEvent(id="1-0", data={"type": kind, "item": {**item, "widget": as_sent(widget)}})


def delta(text: str) -> StreamEvent:
    update = {"type": "assistant_message.content_part.text_delta", "content_index": 0, "delta": text}
    return StreamEvent(id="1-1", data={"type": "thread.item.updated", "item_id": "msg_1", "update": update})


def consoles() -> tuple[Console, io.StringIO, Console, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Console(file=out, width=100), out, Console(file=err, width=100), err


def test_a_task_list_numbers_its_rows_and_remembers_their_actions() -> None:
    out_console, out, _, _ = consoles()
    view = ChatView(out_console)
    widget = task_list_widget([task_record(1, "buy milk"), task_record(2, "call bob", done=True)], total=2)
    view.begin_reply()
    view.show(widget_event("msg_list", widget))
    printed = out.getvalue()
    assert "Tasks (2)" in printed
    milk = next(line for line in printed.splitlines() if "buy milk" in line)
    bob = next(line for line in printed.splitlines() if "call bob" in line)
    assert "[1]" in milk and "#1" in milk and "✓" not in milk
    assert "[2]" in bob and "✓" in bob
    first = view.action(1)
    assert first is not None and first.item_id == "msg_list"
    assert first.action == {
        "type": TOGGLE_ACTION,
        "payload": {"task_id": 1, "done": True, "view": "list", "status": "all"},
    }
    second = view.action(2)
    assert second is not None and second.payload["task_id"] == 2 and second.payload["done"] is False
    assert view.action(3) is None and view.action(0) is None


def test_rows_without_an_action_get_no_number() -> None:
    out_console, out, _, _ = consoles()
    view = ChatView(out_console)
    tasks = [task_record(n, f"task {n}") for n in range(1, MAX_TASK_ROWS + 3)]
    view.show(widget_event("msg_list", task_list_widget(tasks[:MAX_TASK_ROWS], total=len(tasks))))
    assert "2 more not shown" in out.getvalue()
    assert len(view.actions) == MAX_TASK_ROWS
    view.begin_reply()
    view.show(widget_event("msg_empty", task_list_widget([], total=0)))
    assert "No tasks here." in out.getvalue()
    # An empty list has nothing to number, so the earlier numbers stay usable.
    assert len(view.actions) == MAX_TASK_ROWS


def test_a_task_card_numbers_its_button() -> None:
    out_console, out, _, _ = consoles()
    view = ChatView(out_console)
    view.show(widget_event("msg_card", task_card_widget(task_record(7, "file taxes", assignee="bob"))))
    printed = out.getvalue()
    assert "file taxes" in printed and "@bob" in printed
    assert "[1] Mark done" in printed
    action = view.action(1)
    assert action is not None and action.item_id == "msg_card"
    assert action.payload == {"task_id": 7, "done": True, "view": "card"}


def test_a_replaced_widget_is_printed_again_and_renumbered() -> None:
    out_console, out, _, _ = consoles()
    view = ChatView(out_console)
    view.begin_reply()
    view.show(
        widget_event("msg_list", task_list_widget([task_record(1, "buy milk"), task_record(2, "call bob")], total=2))
    )
    view.begin_reply()
    toggled = task_list_widget([task_record(1, "buy milk", done=True), task_record(2, "call bob")], total=2)
    view.show(widget_event("msg_list", toggled, kind="thread.item.replaced"))
    lines = [line for line in out.getvalue().splitlines() if "buy milk" in line]
    assert len(lines) == 2 and "✓" not in lines[0] and "✓" in lines[1]
    assert len(view.actions) == 2
    first = view.action(1)
    assert first is not None and first.payload["done"] is False, "the new version's action: reopen"


def test_sources_render_as_a_panel_without_numbers() -> None:
    hit = SearchHit(document_id="doc_1", title="Guide", heading="VPN", snippet="Use the VPN.", text="...", score=1.0)
    panel = render_widget(as_sent(sources_widget([hit])))
    out_console, out, _, _ = consoles()
    out_console.print(panel)
    assert "Sources (1)" in out.getvalue() and "[1] Guide — VPN" in out.getvalue()
    assert "Use the VPN." in out.getvalue()


def test_text_streams_on_one_line_and_status_lines_stay_out_of_it() -> None:
    out_console, out, err_console, err = consoles()
    view = ChatView(out_console, status=err_console)
    for piece in ["Hello ", "[bold]", "world"]:
        view.show(delta(piece))
    view.note("[reconnecting…]")
    view.show(delta("!"))
    view.show(StreamEvent(id=None, data={"type": "progress_update", "text": "Handing over to Task…"}))
    view.show(StreamEvent(id=None, data={"type": "error", "code": "custom", "message": "boom", "allow_retry": True}))
    view.end_reply()
    assert out.getvalue() == "Hello [bold]world!\n… Handing over to Task…\nerror: boom\n"
    assert "[reconnecting…]" in err.getvalue()
