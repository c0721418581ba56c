"""The serve flags for slow hosts: parsed into settings, refused with a sentence when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasmxds.cli import build_parser
from wasmxds.cli.serve import settings_from_args
from wasmxds.errors import SettingsError
from wasmxds.settings import ServeSettings, parse_rate


def serve_settings(tmp_path: Path, *flags: str) -> ServeSettings:
    args = build_parser().parse_args(["serve", "--config-dir", str(tmp_path), *flags])
    return settings_from_args(args)


def test_defaults_let_a_slow_host_go_within_a_window(tmp_path: Path) -> None:
    """Without flags: 1 KiB/s over 20 s, 15 s idle, 10 s connect, 2 of the 4 slots per host."""
    settings = serve_settings(tmp_path)
    assert settings.fetch_min_rate == 1024.0
    assert settings.fetch_rate_window == 20.0
    assert settings.fetch_idle_timeout == 15.0
    assert settings.fetch_connect_timeout == 10.0
    assert (settings.max_parallel_pulls, settings.max_pulls_per_host) == (4, 2)


def test_flags_parse_like_the_other_durations_and_sizes(tmp_path: Path) -> None:
    """Durations take ms/s/m, rates a size per second; the per-host cap never exceeds the total."""
    settings = serve_settings(
        tmp_path,
        "--fetch-min-rate",
        "64KiB/s",
        "--fetch-rate-window",
        "30s",
        "--fetch-idle-timeout",
        "500ms",
        "--fetch-connect-timeout",
        "2s",
        "--max-parallel-pulls",
        "3",
        "--max-pulls-per-host",
        "8",
    )
    assert settings.fetch_min_rate == 64 * 1024.0
    assert settings.fetch_rate_window == 30.0
    assert settings.fetch_idle_timeout == 0.5
    assert settings.fetch_connect_timeout == 2.0
    assert settings.max_pulls_per_host == 3


@pytest.mark.parametrize(
    ("text", "rate"), [("0", 0.0), ("512", 512.0), ("1KiB/s", 1024.0), ("2M", 2.0 * (1 << 20))]
)
def test_rates_accept_a_size_with_or_without_per_second(text: str, rate: float) -> None:
    """``0`` turns the check off; ``/s`` is optional."""
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fetch-min-rate", "fast"], "--fetch-min-rate 'fast': use a size per second"),
        (["--fetch-rate-window", "0s"], "--fetch-rate-window must be positive"),
        (["--fetch-idle-timeout", "15"], "--fetch-idle-timeout: invalid duration '15'"),
        (["--max-pulls-per-host", "0"], "--max-pulls-per-host must be at least 1"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    """Each wrong value names its flag and what is expected."""
    with pytest.raises(SettingsError, match=message):
        serve_settings(tmp_path, *flags)
