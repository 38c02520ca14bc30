"""Renders a ChatKit event stream in a terminal: text as it streams, widgets as tables, progress and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from kitrelay.gateway.client import StreamEvent


def _texts(node: Any) -> list[str]:
    """Every visible string of a widget subtree, in reading order."""
    if isinstance(node, list):
        return [text for child in node for text in _texts(child)]
    if not isinstance(node, dict):
        return []
    own = [str(node[key]) for key in ("value", "label") if isinstance(node.get(key), str)]
    return own + _texts(node.get("children", []))


def render_widget(widget: dict[str, Any]) -> Table | Panel:
    status = widget.get("status") or {}
    if widget.get("type") == "ListView":
        table = Table(title=status.get("text"), show_header=False, expand=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("item")
        for index, row in enumerate(widget.get("children", []), start=1):
            done = "check-circle-filled" in str(row)
            table.add_row(str(index), ("✓ " if done else "  ") + "  ".join(_texts(row.get("children", []))))
        return table
    return Panel("\n".join(_texts(widget.get("children", []))), title=status.get("text") or widget.get("type"))


async def print_stream(events: AsyncIterator[StreamEvent], console: Console) -> str | None:
    """Print the stream; return the thread id when the stream created a thread."""
    thread_id: str | None = None
    in_text = False
    async for event in events:
        data = event.data
        match event.type:
            case "thread.created":
                thread_id = data["thread"]["id"]
            case "thread.item.updated" if data["update"].get("type") == "assistant_message.content_part.text_delta":
                console.print(data["update"]["delta"], end="", soft_wrap=True, highlight=False)
                in_text = True
            case "thread.item.done" if data["item"]["type"] == "assistant_message":
                if in_text:
                    console.print()
                in_text = False
            case "thread.item.done" if data["item"]["type"] == "widget":
                console.print(render_widget(data["item"]["widget"]))
            case "progress_update":
                console.print(f"[dim]… {data.get('text', '')}[/]")
            case "notice":
                console.print(f"[yellow]{data.get('title') or 'Notice'}: {data.get('message', '')}[/]")
            case "error":
                console.print(f"[red]error: {data.get('message') or data.get('code')}[/]")
    return thread_id
