"""What the chaos runner's users say, and what a ChatKit client shows of it.

A conversation is five turns, the load generator's (benchmarks/users.py): add a task with a long title (so its
reply streams for a couple of seconds at the offline model's token delay, time enough to break something in the
middle of it), add a second one, list the tasks (a `ListView` widget), click the first task in that list
(`threads.custom_action`: the task worker redraws the widget, no model), and ask the research agent a question
answered from the team's handbook (a sources widget and a cited answer).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from kitrelay.gateway.client import StreamEvent

StepKind = Literal["add", "list", "click", "research"]
WorkerKind = Literal["task", "research"]

# Forty words: "Added task #N "<title>"." streams as about 45 deltas, 1.8 s at 40 ms a token.
LONG_TITLE_WORDS = 40
# Three scripts, so that a reply that went to the wrong conversation cannot look right.
VARIANTS: tuple[tuple[str, str], ...] = (
    ("alpha", "what does the handbook say about VPN access?"),
    ("beta", "what does the handbook say about expenses?"),
    ("gamma", "how is VPN access requested according to the handbook?"),
)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    text: str | None  # the user's message; None for the click
    worker: WorkerKind  # the kind of worker that writes the reply (after triage hands over)

    @property
    def label(self) -> str:
        return self.kind if self.kind != "add" or self.text is None else f"add ({self.text.split()[2]})"


def script(variant: int) -> tuple[Step, ...]:
    name, question = VARIANTS[variant % len(VARIANTS)]
    long_title = f"{name} " + " ".join(f"w{i}" for i in range(LONG_TITLE_WORDS))
    return (
        Step("add", f"add task {long_title}", "task"),
        Step("add", f"add task review {name} notes", "task"),
        Step("list", "list my tasks", "task"),
        Step("click", None, "task"),
        Step("research", question, "research"),
    )


class ClientView:
    """The items a client shows, in order: added, streamed into, finished, replaced, removed; reloaded from the
    store when a turn's events are gone; cut after a retried message, as ChatKit's client does on a retry."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def apply(self, event: StreamEvent) -> None:
        data = event.data
        match event.type:
            case "thread.item.added" | "thread.item.done" | "thread.item.replaced":
                self.items[data["item"]["id"]] = copy.deepcopy(data["item"])
            case "thread.item.removed":
                self.items.pop(data["item_id"], None)
            case "thread.item.updated":
                self._update(data["item_id"], data["update"])

    def _update(self, item_id: str, update: dict[str, Any]) -> None:
        item = self.items.get(item_id)
        if item is None or not update["type"].startswith("assistant_message.content_part."):
            return
        content: list[dict[str, Any]] = item.setdefault("content", [])
        index = update["content_index"]
        while len(content) <= index:
            content.append({"type": "output_text", "text": "", "annotations": []})
        match update["type"]:
            case "assistant_message.content_part.added" | "assistant_message.content_part.done":
                content[index] = copy.deepcopy(update["content"])
            case "assistant_message.content_part.text_delta":
                content[index]["text"] = content[index].get("text", "") + update["delta"]

    def reload(self, items: list[dict[str, Any]]) -> None:
        self.items = {item["id"]: copy.deepcopy(item) for item in items}

    def truncate_after(self, item_id: str) -> None:
        if item_id not in self.items:
            return
        ids = list(self.items)
        for later in ids[ids.index(item_id) + 1 :]:
            del self.items[later]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.items)

    def last_widget(self, widget_type: str) -> dict[str, Any] | None:
        for item in reversed(self.items.values()):
            if item.get("type") == "widget" and (item.get("widget") or {}).get("type") == widget_type:
                return item
        return None


def changed_items(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """What a turn put on screen: the items that are new or different at its end, in the order shown."""
    return [
        item for item_id, item in after.items() if item.get("type") != "user_message" and before.get(item_id) != item
    ]


def first_action(node: Any) -> dict[str, Any] | None:
    """The first `onClickAction` in a widget tree, depth first: the first task row of a list."""
    if isinstance(node, dict):
        action = node.get("onClickAction")
        if isinstance(action, dict):
            return action
        children: list[Any] = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        if (found := first_action(child)) is not None:
            return found
    return None
