"""Reading ChatKit streams as a client does: all of a stream, a stream up to mid-reply, and what it shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from kitrelay.gateway.client import StreamEvent
from kitrelay.gateway.turn_relay import QUIET_NOTICE


def visible_items(events: Iterable[StreamEvent]) -> list[dict[str, Any]]:
    """Items as a client ends up with them: added, updated with text, finished, replaced or removed."""
    items: dict[str, dict[str, Any]] = {}
    for event in events:
        data = event.data
        match event.type:
            case "thread.item.added" | "thread.item.done" | "thread.item.replaced":
                items[data["item"]["id"]] = data["item"]
            case "thread.item.removed":
                items.pop(data["item_id"], None)
            case "thread.item.updated" if data["update"]["type"] == "assistant_message.content_part.text_delta":
                item = items.get(data["item_id"])
                if item is not None:
                    content = item.setdefault("content", [])
                    if not content:
                        content.append({"type": "output_text", "text": "", "annotations": []})
                    content[data["update"]["content_index"]]["text"] += data["update"]["delta"]
    return list(items.values())


def assistant_texts(events: Iterable[StreamEvent]) -> list[str]:
    return [
        "".join(part["text"] for part in item.get("content", []))
        for item in visible_items(events)
        if item["type"] == "assistant_message"
    ]


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


async def until_text(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    """Read a stream up to its first text delta: the middle of a reply."""
    seen: list[StreamEvent] = []
    async for event in events:
        seen.append(event)
        if event.type == "thread.item.updated" and event.data["update"]["type"].endswith("text_delta"):
            return seen
    raise AssertionError("the stream ended before any text")


def progress_lines(events: Iterable[StreamEvent]) -> list[str]:
    """The progress lines the turn itself showed, without the relay's "still working" notice: a loaded machine
    can be quiet for its few seconds anywhere."""
    return [e.data["text"] for e in events if e.type == "progress_update" and e.data.get("text") != QUIET_NOTICE]
