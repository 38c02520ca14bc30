"""Turns judged, faults injected → one row per fault (and one for the steady load between faults), each against
its targets: 0 lost, 0 duplicated, 0 wrong, recovery within its bound."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.chaos.client import TurnRecord
from benchmarks.chaos.compare import TurnJudgement
from benchmarks.chaos.faults import Injection

STEADY = "steady load (between faults)"


@dataclass
class Row:
    label: str
    target_s: float | None  # recovery bound; None: no fault, nothing to recover from
    turns: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    recoveries: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exercised: bool = True

    @property
    def recovery_s(self) -> float | None:
        if not self.recoveries or any(r is None for r in self.recoveries):
            return None
        return max(r for r in self.recoveries if r is not None)

    @property
    def passed(self) -> bool:
        if sum(self.verdicts.values()) or not self.exercised:
            return False
        if self.target_s is None:
            return True
        recovery = self.recovery_s
        return recovery is not None and recovery <= self.target_s

    def summary(self) -> dict[str, Any]:
        return {
            "fault": self.label,
            "turns": self.turns,
            "lost": self.verdicts["lost"],
            "duplicated": self.verdicts["duplicated"],
            "wrong": self.verdicts["wrong"],
            "errors": sum(self.errors.values()),
            "error_texts": dict(self.errors),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "recoveries_s": [None if r is None else round(r, 2) for r in self.recoveries],
            "recovery_target_s": self.target_s,
            "exercised": self.exercised,
            "passed": self.passed,
            "notes": self.notes,
            "problems": self.problems,
        }


def server_recovery(injection: Injection, records: list[TurnRecord]) -> float | None:
    """From the kill to the end of the first turn sent after it that got its reply."""
    if injection.fault_at is None:
        return None
    fault_at = injection.fault_at
    ends = [r.ended for r in records if r.started >= fault_at and r.outcome == "ok" and r.ended]
    return min(ends) - fault_at if ends else None


def outage_recovery(injection: Injection) -> float | None:
    """The turn sent during the outage: from its first sending to its reply."""
    if injection.outage is None or not injection.outage.records:
        return None
    first = injection.outage.records[0]
    return first.ended - first.started if first.outcome == "ok" else None


def build_rows(injections: list[Injection], judged: list[TurnJudgement]) -> list[Row]:
    rows: dict[str, Row] = {}
    for injection in injections:
        fault = injection.fault
        row = rows.setdefault(fault.key, Row(fault.label, fault.recovery_target_s))
        row.exercised &= injection.exercised
        row.notes += [f"round {injection.round + 1}: {note}" for note in injection.notes]
        if fault.outage_label:
            outage = rows.setdefault(f"{fault.key}:outage", Row(fault.outage_label, fault.recovery_target_s))
            outage.recoveries.append(outage_recovery(injection))
    records = [j.record for j in judged]
    for injection in injections:
        if injection.fault.kind == "server":
            injection.recovery_s = server_recovery(injection, records)
        rows[injection.fault.key].recoveries.append(injection.recovery_s)
    steady = Row(STEADY, None)
    first_bad: dict[str, str | None] = {}  # conversation -> the row of its first turn that went wrong
    for judgement in judged:
        record = judgement.record
        key = _row_of(record, injections)
        if judgement.verdict is not None:
            # A turn that went wrong after an earlier one of its conversation did (a task list showing a task
            # twice, say) counts where that one does, unless a fault struck during it.
            key = first_bad.setdefault(record.conversation, key) if key is None else key
            first_bad.setdefault(record.conversation, key)
        row = steady if key is None else rows[key]
        row.turns += 1
        row.errors.update(judgement.record.errors)
        if judgement.verdict is not None:
            row.verdicts[judgement.verdict] += 1
            row.problems.append(
                f"{record.conversation} turn {record.index + 1} ({record.step.label}, {record.turn_id}): "
                + "; ".join(judgement.details)
            )
        row.notes += _stream_notes(judgement.record)
    return [*rows.values(), steady]


def _row_of(record: TurnRecord, injections: list[Injection]) -> str | None:
    """The row a turn counts in: the fault it was the victim of (or was sent during the outage of); else the last
    fault that struck while it ran; else the first fault whose window (from the fault until all was back) it
    overlapped; else the steady load's."""
    for injection in injections:
        if injection.victim is not None and record is injection.victim_turn:
            return injection.fault.key
        if injection.outage is not None and injection.outage.records and record is injection.outage.records[0]:
            return f"{injection.fault.key}:outage"
    struck = [i for i in injections if i.fault_at is not None and record.overlaps(i.fault_at, i.fault_at)]
    if struck:
        return struck[-1].fault.key
    for injection in injections:
        start, end = injection.window
        if record.overlaps(start, end):
            return injection.fault.key
    return None


def _stream_notes(record: TurnRecord) -> list[str]:
    """What the client received twice without it changing what it shows (so no verdict), worth a line."""
    notes = []
    # The same event (id and content) twice. A frame without an id of its own reports the one before it (SSE's
    # last event id), so an id seen again alone is no repeat.
    events = Counter((r.event.id, json.dumps(r.event.data, sort_keys=True)) for r in record.events if r.event.id)
    if repeated := sum(n - 1 for n in events.values() if n > 1):
        notes.append(f"{record.turn_id}: {repeated} events received twice")
    removed = Counter(r.event.data.get("item_id") for r in record.events if r.event.type == "thread.item.removed")
    if twice := sum(n - 1 for n in removed.values() if n > 1):
        notes.append(f"{record.turn_id}: thread.item.removed repeated {twice} times for the same item")
    return notes


def print_table(console: Console, rows: list[Row], *, title: str) -> None:
    table = Table(title=title)
    for column, justify in (
        ("fault", "left"),
        ("turns", "right"),
        ("lost", "right"),
        ("dup", "right"),
        ("wrong", "right"),
        ("errors", "right"),
        ("recovery", "right"),
        ("target", "right"),
        ("result", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        recovery = "-" if row.target_s is None else _seconds(row.recovery_s)
        target = "-" if row.target_s is None else f"≤ {row.target_s:g} s"
        result = "[green]PASS[/]" if row.passed else "[red]FAIL[/]"
        table.add_row(
            row.label,
            str(row.turns),
            str(row.verdicts["lost"]),
            str(row.verdicts["duplicated"]),
            str(row.verdicts["wrong"]),
            str(sum(row.errors.values())),
            recovery,
            target,
            result,
        )
    console.print(table)
    for row in rows:
        lines = [(f"error ×{n}: {text}", "") for text, n in row.errors.most_common()]
        if not row.exercised:
            lines.append(("not exercised as intended (see notes)", "red"))
        lines += [(f"note: {n}", "") for n in dict.fromkeys(row.notes)]
        lines += [(p, "red") for p in row.problems[:6]]
        if len(row.problems) > 6:
            lines.append((f"… and {len(row.problems) - 6} more turns (--json has them all)", ""))
        if lines:
            console.print(Text(row.label, style="bold"))
            for line, style in lines:
                console.print(Text(f"  {line}", style=style), highlight=False)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"
