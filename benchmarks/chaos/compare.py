"""Judging a conversation against the same script run without faults.

Three views of each conversation are compared with the reference's, turn by turn, after normalising what
legitimately differs between two runs (item, thread, turn and document ids, timestamps, and task numbers, which
become each task's place in its team's list):

* the client's: what each turn put on screen (new or changed items at its end: replies and widgets, after
  removals, replacements and reloads);
* the store's: the saved thread (hidden items left out), cut into one part per user message;
* the domain's: the team's task rows (title, done), each added task exactly once.

A turn is **lost** when something it should show is missing and nothing else is there (no reply, a user message
without a reply, a task never added), **duplicated** when all of it is there and some of it twice (a reply, a
widget, a task row), **wrong** otherwise. One verdict per turn, the worst (lost, then duplicated, then wrong).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.chaos.client import Conversation, TurnRecord
from kitrelay.services.tasks import TaskRecord

Verdict = Literal["lost", "duplicated", "wrong"]
SEVERITY: dict[Verdict, int] = {"lost": 3, "duplicated": 2, "wrong": 1}

_ID = re.compile(r"\b[a-z]{2,8}_[0-9a-z]{20,}\b")
_DROPPED_KEYS = frozenset({"id", "thread_id", "created_at", "updated_at", "completed_at", "document_id"})


def _json_key(value: Any) -> str:
    return repr(value)


class Normaliser:
    """Maps a team's task ids to their place in its list (1, 2, ...), and ids of anything else to one token."""

    def __init__(self, tasks: list[TaskRecord]) -> None:
        self.places = {task.number: place for place, task in enumerate(sorted(tasks, key=lambda t: t.number), start=1)}

    def _task(self, number: str) -> str:
        place = self.places.get(int(number))
        return f"{place}" if place is not None else f"?{number}"

    def text(self, value: str) -> str:
        value = _ID.sub("<id>", value)
        value = re.sub(r"#(\d+)", lambda m: "#" + self._task(m.group(1)), value)
        return re.sub(r"\btask-(\d+)\b", lambda m: "task-" + self._task(m.group(1)), value)

    def value(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in sorted(value.items()) if k not in _DROPPED_KEYS}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        if key == "task_id" and isinstance(value, int) and not isinstance(value, bool):
            return self._task(str(value))
        return value

    def item(self, item: Mapping[str, Any]) -> str:
        """One item as a comparable string: its type and normalised content."""
        kind = item.get("type")
        if kind in ("assistant_message", "user_message"):
            parts = item.get("content") or []
            text = "".join(str(p.get("text", "")) for p in parts)
            annotations = [self.value(p.get("annotations") or []) for p in parts]
            return f"{kind}: {self.text(text)} {_json_key(annotations) if any(annotations) else ''}".rstrip()
        if kind == "widget":
            return f"widget: {_json_key(self.value(item.get('widget')))}"
        return f"{kind}: {_json_key(self.value(dict(item)))}"


def classify(expected: list[str], got: list[str]) -> Verdict | None:
    if got == expected:
        return None
    want, have = Counter(expected), Counter(got)
    if have < want:
        return "lost"  # only part of it (or nothing) arrived
    if want < have and all(k in want for k in have):
        return "duplicated"  # all of it, and some of it again
    return "wrong"


@dataclass
class TurnJudgement:
    record: TurnRecord
    verdict: Verdict | None = None
    details: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict | None, where: str, expected: list[str], got: list[str]) -> None:
        if verdict is None:
            return
        if self.verdict is None or SEVERITY[verdict] > SEVERITY[self.verdict]:
            self.verdict = verdict
        self.details.append(f"{where}: {verdict}; expected {_short(expected)}, got {_short(got)}")


def _short(items: list[str], each: int = 90) -> str:
    return " | ".join(i if len(i) <= each else i[:each] + "…" for i in items) if items else "nothing"


@dataclass
class Reference:
    """What a fault-free run of a script gives, normalised."""

    views: list[list[str]]  # per turn, the client's
    segments: list[list[str]]  # per user message, the store's (the user message first)
    tasks: list[tuple[str, bool]]


def reference_of(conversation: Conversation, saved: list[dict[str, Any]], tasks: list[TaskRecord]) -> Reference:
    norm = Normaliser(tasks)
    return Reference(
        views=[[norm.item(i) for i in record.view] for record in conversation.records],
        segments=_segments(norm, saved),
        tasks=[(t.title, t.done) for t in tasks],
    )


def _segments(norm: Normaliser, saved: list[dict[str, Any]]) -> list[list[str]]:
    segments: list[list[str]] = []
    for item in saved:
        if item.get("type") == "user_message" or not segments:
            segments.append([])
        segments[-1].append(norm.item(item))
    return segments


def judge(
    conversation: Conversation,
    reference: Reference,
    saved: list[dict[str, Any]] | None,
    tasks: list[TaskRecord],
) -> list[TurnJudgement]:
    """Every turn of the conversation, client, store and domain, against the reference."""
    norm = Normaliser(tasks)
    judgements = [TurnJudgement(record) for record in conversation.records]
    for judgement, expected in zip(judgements, reference.views, strict=False):
        record = judgement.record
        got = [norm.item(i) for i in record.view]
        if record.outcome in ("timeout", "skipped", "pending") and got != expected:
            judgement.add("lost", f"client ({record.skipped or record.outcome})", expected, got)
        else:
            judgement.add(classify(expected, got), "client", expected, got)
    _judge_store(conversation, judgements, reference, norm, saved)
    _judge_tasks(conversation, judgements, reference, tasks)
    return judgements


def _turn_of_segment(conversation: Conversation, segment: int) -> int:
    """Which turn a stored part belongs to: the n-th user message is the n-th turn that sends one; the click
    changes the list's part, so a difference there is the later turn's."""
    sending = [i for i, step in enumerate(conversation.steps) if step.text is not None]
    index = sending[min(segment, len(sending) - 1)]
    follower = index + 1
    if follower < len(conversation.steps) and conversation.steps[follower].text is None:
        return follower
    return index


def _judge_store(
    conversation: Conversation,
    judgements: list[TurnJudgement],
    reference: Reference,
    norm: Normaliser,
    saved: list[dict[str, Any]] | None,
) -> None:
    if saved is None:
        if judgements:
            judgements[0].add("lost", "store (no thread)", ["a thread"], [])
        return
    got = _segments(norm, saved)
    by_message: dict[str, list[list[str]]] = {}
    for segment in got:
        by_message.setdefault(segment[0], []).append(segment)
    for index, expected in enumerate(reference.segments):
        turn = _turn_of_segment(conversation, index)
        if turn >= len(judgements):
            continue
        found = by_message.get(expected[0], [])
        if not found:
            judgements[turn].add("lost", f"store part {index + 1}", expected, [])
            continue
        if len(found) > 1:
            judgements[turn].add("duplicated", f"store part {index + 1}", expected, [x for s in found for x in s])
            continue
        judgements[turn].add(classify(expected, found[0]), f"store part {index + 1}", expected, found[0])
    known = {segment[0] for segment in reference.segments}
    for segment in got:
        if segment[0] not in known and judgements:
            judgements[-1].add("wrong", "store (a part the script never sent)", [], segment)


def _judge_tasks(
    conversation: Conversation, judgements: list[TurnJudgement], reference: Reference, tasks: list[TaskRecord]
) -> None:
    """Each task once, with the reference's done state; a difference is the adding turn's (or the click's)."""
    adds = {
        step.text.removeprefix("add task ").strip(): index
        for index, step in enumerate(conversation.steps)
        if step.kind == "add" and step.text is not None
    }
    click = next((i for i, step in enumerate(conversation.steps) if step.kind == "click"), None)
    have = Counter(t.title for t in tasks)
    done = {t.title: t.done for t in tasks}
    for title, expected_done in reference.tasks:
        turn = adds.get(title)
        if turn is None or turn >= len(judgements):
            continue
        row = [f"task {title!r}"]
        if have[title] == 0:
            judgements[turn].add("lost", "task table", row, [])
        elif have[title] > 1:
            judgements[turn].add("duplicated", "task table", row, row * have[title])
        elif done[title] != expected_done and click is not None and click < len(judgements):
            judgements[click].add(
                "wrong", "task table", [f"{title!r} done={expected_done}"], [f"{title!r} done={done[title]}"]
            )
    expected_titles = {title for title, _ in reference.tasks}
    for title in have:
        if title not in expected_titles and judgements:
            judgements[-1].add("wrong", "task table (a task the script never asked for)", [], [title])
