"""What a ChatKit client shows after applying a stream of events: the items it keeps, in order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kitrelay.gateway.client import StreamEvent


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
