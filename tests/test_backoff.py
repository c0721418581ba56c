"""Backoff delays: exponential growth, cap, jitter bounds, validation."""

from __future__ import annotations

from typing import Any

import pytest

from wasmxds.backoff import Backoff


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    """delay(1) is the initial delay, each failure multiplies it, and max caps it."""
    backoff = Backoff(initial=0.5, factor=2.0, max=3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_huge_attempt_numbers_stay_capped() -> None:
    """After thousands of failures the delay is still the cap, not an overflow."""
    assert Backoff(initial=1.0, factor=2.0, max=300.0).delay(100_000) == 300.0


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_spreads_within_the_fraction(draw: float, expected: float) -> None:
    """A 20% jitter maps the random draw onto [0.8, 1.2] times the base delay."""
    backoff = Backoff(initial=1.0, max=1.0, jitter=0.2, random=lambda: draw)
    assert backoff.delay(1) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"factor": 0.5},
        {"initial": 2.0, "max": 1.0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_invalid_parameters_are_rejected(kwargs: dict[str, Any]) -> None:
    """Nonsensical settings fail when the Backoff is built, not at the first retry."""
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)
