"""Renders a ChatKit event stream in a terminal: text as it streams, widgets as tables and panels, progress,
notices and errors.

Widgets that carry server actions (a task row, a "Mark done" button) get numbers when they are printed: `[1]`,
`[2]`, ... The terminal client sends the numbered action as `threads.custom_action` when the user types `/1`, and
the replaced widget is printed again, renumbered. Numbers stay valid until a later reply prints new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from kitrelay.gateway.client import StreamEvent

_TEXT_DELTA = "assistant_message.content_part.text_delta"


@dataclass(frozen=True)
class WidgetAction:
    """One numbered action: what `threads.custom_action` needs to carry it out."""

    item_id: str
    type: str
    payload: dict[str, Any]

    @property
    def action(self) -> dict[str, Any]:
        return {"type": self.type, "payload": self.payload}


# Gives a widget node's action its number (None when the node has no server action).
Numberer = Callable[[dict[str, Any]], int | None]


def _no_numbers(_: dict[str, Any]) -> int | None:
    return None


def _texts(node: Any, number: Numberer = _no_numbers) -> list[str]:
    """Every visible string of a widget subtree, in reading order; a button's label carries its number."""
    if isinstance(node, list):
        return [text for child in node for text in _texts(child, number)]
    if not isinstance(node, dict):
        return []
    own = [str(node[key]) for key in ("value", "label") if isinstance(node.get(key), str)]
    if node.get("type") == "Button" and own and (n := number(node)) is not None:
        own = [f"[{n}] {own[0]}"]
    return own + _texts(node.get("children", []), number)


def render_widget(widget: dict[str, Any], number: Numberer = _no_numbers) -> Table | Panel:
    """A ListView as a table (a clickable row shows its number in the first column), anything else as a panel."""
    status = widget.get("status") or {}
    if widget.get("type") == "ListView":
        table = Table(title=status.get("text"), show_header=False, expand=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("item")
        for row in widget.get("children", []):
            done = "check-circle-filled" in str(row)
            n = number(row)
            line = ("✓ " if done else "  ") + "  ".join(_texts(row.get("children", [])))
            table.add_row(f"[{n}]" if n is not None else "", Text(line))
        return table
    body = Text("\n".join(_texts(widget.get("children", []), number)))
    return Panel(body, title=status.get("text") or widget.get("type"), expand=False)


def _server_action(node: dict[str, Any]) -> dict[str, Any] | None:
    action = node.get("onClickAction")
    # Client-handled actions are for a browser's own code; a terminal has nothing to run them with.
    if isinstance(action, dict) and isinstance(action.get("type"), str) and action.get("handler") != "client":
        return action
    return None


class ChatView:
    """Prints one conversation's events. Between replies it keeps the numbered actions and the thread id."""

    def __init__(self, console: Console, status: Console | None = None) -> None:
        self.console = console
        # Status lines ("[reconnecting…]") go here; by default the same console.
        self.status = status or console
        self.actions: list[WidgetAction] = []
        self.thread_id: str | None = None
        self._in_text = False
        self._renumber = True

    def begin_reply(self) -> None:
        """The next printed widget with actions replaces the current numbers."""
        self._renumber = True

    def end_reply(self) -> None:
        self._end_text()

    def note(self, message: str) -> None:
        """A dim status line that never lands inside the reply's text on the reply's console."""
        if self._in_text and self.status is self.console:
            self._end_text()
        prefix = "\n" if self._in_text else ""
        self.status.print(Text(prefix + message, style="dim"))

    def show(self, event: StreamEvent) -> None:
        data = event.data
        match event.type:
            case "thread.created":
                self.thread_id = data["thread"]["id"]
            case "thread.item.updated" if data["update"].get("type") == _TEXT_DELTA:
                self.console.print(data["update"]["delta"], end="", soft_wrap=True, highlight=False, markup=False)
                self._in_text = True
            case "thread.item.done" if data["item"]["type"] == "assistant_message":
                self._end_text()
            case "thread.item.done" | "thread.item.replaced" if data["item"]["type"] == "widget":
                self._end_text()
                self.print_widget(data["item"]["id"], data["item"]["widget"])
            case "thread.item.removed":
                # A redelivered turn withdrew what a dead attempt wrote; its replacement follows.
                self.note("(a part of the reply was withdrawn and is being rewritten)")
            case "progress_update":
                self._end_text()
                self.console.print(Text(f"… {data.get('text', '')}", style="dim"))
            case "notice":
                self._end_text()
                self.console.print(Text(f"{data.get('title') or 'Notice'}: {data.get('message', '')}", style="yellow"))
            case "error":
                self._end_text()
                self.console.print(Text(f"error: {data.get('message') or data.get('code')}", style="red"))
            case _:
                pass

    def print_widget(self, item_id: str, widget: dict[str, Any]) -> None:
        def number(node: dict[str, Any]) -> int | None:
            action = _server_action(node)
            if action is None:
                return None
            if self._renumber:
                self.actions = []
                self._renumber = False
            payload = action.get("payload")
            self.actions.append(
                WidgetAction(item_id=item_id, type=action["type"], payload=payload if isinstance(payload, dict) else {})
            )
            return len(self.actions)

        self.console.print(render_widget(widget, number))

    def action(self, number: int) -> WidgetAction | None:
        return self.actions[number - 1] if 0 < number <= len(self.actions) else None

    def _end_text(self) -> None:
        if self._in_text:
            self.console.print()
        self._in_text = False
