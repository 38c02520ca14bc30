"""benchmarks/cli_startup.py runs and reports against its targets (the figures themselves are the benchmark's)."""

from __future__ import annotations

import re

import pytest

from benchmarks import cli_startup


def test_the_help_figures_are_printed_with_a_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_startup.main(["--no-chat", "--runs", "2"])
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("kitrelay --help")]
    assert re.search(r"wall median \d+\.\d{3} s, min \d+\.\d{3} s; CPU median \d+\.\d{3} s +(PASS|FAIL) ", line)
    assert code == (0 if "PASS" in line else 1)
    assert "load average before" in out and "load average after" in out
