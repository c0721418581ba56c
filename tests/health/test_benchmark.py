"""benchmarks/health.py still runs: a tiny fleet on loopback, figures printed, none asserted."""

from __future__ import annotations

import pytest

from benchmarks import health


def test_health_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """Every part of the benchmark runs and prints its figure line."""
    code = health.main(["--clusters", "2", "--streams", "3", "--flushes", "2", "--idle", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("µs/message") == 2  # full decode and scan
    assert "messages/s" in out
    assert "(nodes kept: 3)" in out
    assert "5 open metrics streams" in out
