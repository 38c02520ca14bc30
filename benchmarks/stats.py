"""Figures of a benchmark run: percentiles, per-process costs, and the summary written to the JSON result."""

from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import Any

import psutil

from benchmarks.deployment import ProcessUsage
from benchmarks.users import TurnSample


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0 < q < 1) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, round(q * 1000) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


@dataclass
class RunResult:
    deployment: str
    scenario: str
    users: int
    wall_s: float
    samples: list[TurnSample]
    usage: dict[str, ProcessUsage]
    # Scenario-specific figures (open streams, memory per stream, events/s...).
    extra: dict[str, float] = field(default_factory=dict)
    # Gaps counted for the p99 (streams: only those while every stream was open); None: all of them.
    gaps_s: list[float] | None = None
    # The runs this one pools (`pooled`), each with its own figures in the summary.
    rounds: list[RunResult] = field(default_factory=list)

    @classmethod
    def pooled(cls, runs: list[RunResult]) -> RunResult:
        """Several runs of one scenario against one deployment as one: every turn's sample, the wall time and the
        CPU of all of them (turns/s is all turns over all their time), the highest peak RSS."""
        first = runs[0]
        if len(runs) == 1:
            return first
        usage = {
            name: ProcessUsage(
                cpu_s=sum(run.usage[name].cpu_s for run in runs),
                peak_rss_mb=max(run.usage[name].peak_rss_mb for run in runs),
                start_rss_mb=first.usage[name].start_rss_mb,
            )
            for name in first.usage
        }
        return cls(
            deployment=first.deployment,
            scenario=first.scenario,
            users=first.users,
            wall_s=sum(run.wall_s for run in runs),
            samples=[sample for run in runs for sample in run.samples],
            usage=usage,
            rounds=runs,
        )

    @property
    def errors(self) -> list[str]:
        return [f"{s.kind}: {s.error}" for s in self.samples if s.error is not None]

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.error is None]
        firsts = [s.first_event_s for s in ok if s.first_event_s is not None]
        answers = [s.first_answer_s for s in ok if s.first_answer_s is not None]
        follow_ups = [s.first_answer_s for s in ok if s.follow_up and s.first_answer_s is not None]
        follow_up_events = [s.first_event_s for s in ok if s.follow_up and s.first_event_s is not None]
        gaps = self.gaps_s if self.gaps_s is not None else [g for s in ok for g in s.gaps_s]
        durations = [s.duration_s for s in ok]
        turns = len(self.samples)
        events = sum(s.events for s in self.samples)
        processes = {
            name: {
                "cpu_s": round(u.cpu_s, 3),
                "cpu_ms_per_turn": round(u.cpu_s * 1000 / turns, 3) if turns else None,
                "turns_per_cpu_s": round(turns / u.cpu_s, 1) if u.cpu_s > 0 else None,
                "peak_rss_mb": round(u.peak_rss_mb, 1),
                "start_rss_mb": round(u.start_rss_mb, 1),
            }
            for name, u in self.usage.items()
        }
        return {
            "deployment": self.deployment,
            "scenario": self.scenario,
            "users": self.users,
            "turns": turns,
            "errors": len(self.errors),
            "error_examples": self.errors[:5],
            "wall_s": round(self.wall_s, 3),
            "turns_per_s": round(turns / self.wall_s, 2) if self.wall_s else None,
            "events": events,
            "events_per_s": round(events / self.wall_s, 1) if self.wall_s else None,
            "first_event_ms_p50": ms(percentile(firsts, 0.5)),
            "first_event_ms_p99": ms(percentile(firsts, 0.99)),
            "first_answer_ms_p50": ms(percentile(answers, 0.5)),
            "first_answer_ms_p99": ms(percentile(answers, 0.99)),
            "follow_up_first_answer_ms_p50": ms(percentile(follow_ups, 0.5)),
            "follow_up_first_event_ms_p50": ms(percentile(follow_up_events, 0.5)),
            "event_gap_ms_p50": ms(percentile(gaps, 0.5)),
            "event_gap_ms_p90": ms(percentile(gaps, 0.9)),
            "event_gap_ms_p99": ms(percentile(gaps, 0.99)),
            "event_gap_ms_p999": ms(percentile(gaps, 0.999)),
            "turn_ms_p50": ms(percentile(durations, 0.5)),
            "turn_ms_p99": ms(percentile(durations, 0.99)),
            "by_kind_first_event_ms_p50": {
                kind: ms(percentile([s.first_event_s for s in ok if s.kind == kind and s.first_event_s], 0.5))
                for kind in sorted({s.kind for s in ok})
            },
            "by_kind_first_answer_ms_p50": {
                kind: ms(percentile([s.first_answer_s for s in ok if s.kind == kind and s.first_answer_s], 0.5))
                for kind in sorted({s.kind for s in ok})
            },
            "cpu_ms_per_turn_all": round(sum(u.cpu_s for u in self.usage.values()) * 1000 / turns, 3)
            if turns
            else None,
            "processes": processes,
            **self.extra,
            **({"rounds": [_round_figures(run.summary()) for run in self.rounds]} if self.rounds else {}),
        }


def _round_figures(summary: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "turns",
        "errors",
        "turns_per_s",
        "first_event_ms_p50",
        "first_event_ms_p99",
        "first_answer_ms_p50",
        "follow_up_first_answer_ms_p50",
        "turn_ms_p50",
    )
    cpu = {name: figures["cpu_ms_per_turn"] for name, figures in summary["processes"].items()}
    return {**{key: summary[key] for key in keys}, "cpu_ms_per_turn": cpu}


def machine() -> dict[str, Any]:
    """Where the figures came from: they mean little without the machine and how busy it was."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
