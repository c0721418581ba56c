"""Exponential backoff with jitter, shared by the HTTP fetcher and the resolver."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How long to wait after the n-th consecutive failure.

    ``delay(1) == initial``, each later failure multiplies by ``factor``, and the
    result never exceeds ``max`` before jitter. ``jitter`` is a fraction: 0.2
    spreads each delay uniformly over ±20% so that many plugins failing together
    (one registry outage) do not retry in lockstep.
    """

    initial: float = 0.5
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.0
    # Injectable so tests can pin the jitter; excluded from equality and repr.
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"backoff initial delay must be > 0, got {self.initial}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if self.max < self.initial:
            raise ValueError(f"backoff max {self.max} is below its initial delay {self.initial}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt, 1) - 1
        try:
            base = min(self.max, self.initial * self.factor**exponent)
        except OverflowError:  # after ~1000 failures the float power overflows; it is capped anyway
            base = self.max
        if not self.jitter:
            return base
        return base * (1 + self.jitter * (2 * self.random() - 1))
