"""The load generator end to end at a tiny size: it starts the embedded default (a gateway and one worker per
kind as separate processes) and the in-process baseline, holds real conversations with both over HTTP + SSE, and
writes every figure the README quotes, each latency and throughput figure pooled over rounds run in turn with
the baseline's. A smoke test: it checks the figures are there and sane, not their size."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.load import main


def test_a_tiny_run_writes_every_figure(tmp_path: Path, nats_url: str, redis_url: str) -> None:
    out = tmp_path / "result.json"
    code = main(
        [
            "--scenario", "latency",
            "--scenario", "throughput",
            "--scenario", "streams",
            "--latency-conversations", "1",
            "--rounds", "2",
            "--users", "2",
            "--conversations", "1",
            "--streams", "3",
            "--stream-tokens", "10",
            "--stream-token-delay-ms", "20",
            "--nats", nats_url,
            "--redis", redis_url,
            "--out", str(out),
            "--work-dir", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    document = json.loads(out.read_text())
    assert code == 0, document["results"]
    results = {(r["deployment"], r["scenario"]): r for r in document["results"]}
    assert set(results) == {
        ("kitrelay", "latency"),
        ("kitrelay", "throughput"),
        ("baseline", "latency"),
        ("baseline", "throughput"),
        ("kitrelay", "streams"),
    }
    for (deployment, scenario), result in results.items():
        assert result["errors"] == 0, result["error_examples"]
        expected = {"latency": 5, "throughput": 10, "streams": 3}[scenario]
        if scenario == "streams":
            assert result["turns"] == expected and "rounds" not in result
        else:
            # Two rounds of each, pooled, each with its own figures.
            assert result["turns"] == 2 * expected
            assert [r["turns"] for r in result["rounds"]] == [expected, expected]
            assert all(r["turns_per_s"] > 0 and r["first_event_ms_p50"] > 0 for r in result["rounds"])
        assert 0 < result["first_event_ms_p50"] <= result["first_event_ms_p99"]
        assert 0 < result["turn_ms_p50"] <= result["turn_ms_p99"]
        assert result["turns_per_s"] > 0
        assert result["event_gap_ms_p99"] > 0
        processes = result["processes"]
        names = {"kitrelay": {"gateway", "worker-triage", "worker-task", "worker-research"}, "baseline": {"baseline"}}
        if scenario == "streams":
            names["kitrelay"] = {"gateway", "feeder"}
        assert set(processes) == names[deployment]
        for figures in processes.values():
            assert figures["cpu_s"] > 0
            assert figures["peak_rss_mb"] > 10
    streams = results[("kitrelay", "streams")]
    assert streams["peak_open_streams"] == 3
    # Each stream relays the feeder's message: added, 10 deltas, done.
    assert streams["relayed_events"] == 3 * 12
    assert {t["scenario"] for t in document["targets"]} == {"latency", "throughput", "streams"}
    assert document["machine"]["cpus"] >= 1
