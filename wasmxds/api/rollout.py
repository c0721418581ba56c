"""Staged rollouts: the ``rollout.wasmxds.io/steps`` and ``.../interval`` annotations.

Istio ignores annotations it does not know, so the same WasmPlugin YAML still
applies there::

    metadata:
      annotations:
        rollout.wasmxds.io/steps: "5,25,100"   # percent of the proxies the plugin applies to
        rollout.wasmxds.io/interval: "60s"     # how long each step bakes

Steps are percentages, strictly increasing, each in (0, 100], the last one
100. The interval is a duration with a unit (``500ms``, ``60s``, ``5m``,
``1h``). Either annotation alone takes the other from the server's defaults
(``--rollout-steps``, ``--rollout-interval``). Steps of just ``100`` turn
staging off for the plugin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from wasmxds.api.convert import FieldPath, Issue, Locator

__all__ = [
    "INTERVAL_ANNOTATION",
    "MAX_INTERVAL",
    "NO_STAGING",
    "STEPS_ANNOTATION",
    "RolloutPolicy",
    "interval_in_bounds",
    "parse_interval",
    "parse_steps",
    "rollout_issues",
    "rollout_policy",
]

STEPS_ANNOTATION = "rollout.wasmxds.io/steps"
INTERVAL_ANNOTATION = "rollout.wasmxds.io/interval"
# More steps than this is a typo, not a plan (and each step is one push per proxy).
_MAX_STEPS = 20
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_INTERVAL = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """How a plugin's changes roll out: ``steps`` in percent (last 100), each baking
    ``interval`` seconds."""

    steps: tuple[float, ...] = (100.0,)
    interval: float = 0.0

    @property
    def staged(self) -> bool:
        return len(self.steps) > 1


NO_STAGING = RolloutPolicy()


def parse_steps(text: str) -> tuple[float, ...]:
    """``"5,25,100"`` → ``(5.0, 25.0, 100.0)``; raises ValueError saying what is wrong."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of percentages (e.g. 5,25,100)")
    steps: list[float] = []
    for part in parts:
        try:
            value = float(part.removesuffix("%"))
        except ValueError:
            raise ValueError(f"{part!r} is not a percentage (e.g. 5,25,100)") from None
        if not 0 < value <= 100:
            raise ValueError(f"step {part} is not in (0, 100]")
        if steps and value <= steps[-1]:
            raise ValueError(f"steps must increase: {part} comes after {steps[-1]:g}")
        steps.append(value)
    if steps[-1] != 100:
        raise ValueError(f"the last step must be 100 (every proxy), not {steps[-1]:g}")
    if len(steps) > _MAX_STEPS:
        raise ValueError(f"at most {_MAX_STEPS} steps (got {len(steps)})")
    return tuple(steps)


def parse_interval(text: str) -> float:
    """``"60s"`` → 60.0; raises ValueError saying what is wrong."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use a number with ms, s, m or h (e.g. 60s)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not interval_in_bounds(seconds):
        raise ValueError(
            f"{text[:40]!r} is too long an interval: at most 7 days (168h), so a rollout "
            "step bakes for a bounded time"
        )
    return seconds


def interval_in_bounds(seconds: float) -> bool:
    """Whether a bake time is one the annotation and ``--rollout-interval`` accept."""
    # A long digit string overflows to inf, which no JSON view or timer can hold.
    return math.isfinite(seconds) and seconds <= MAX_INTERVAL


def rollout_policy(annotations: Mapping[str, str], default: RolloutPolicy) -> RolloutPolicy:
    """The plugin's policy: its annotations over ``default``; a malformed one counts as absent
    (validation refuses such a plugin before it gets here)."""
    steps, interval = default.steps, default.interval
    try:
        if STEPS_ANNOTATION in annotations:
            steps = parse_steps(annotations[STEPS_ANNOTATION])
        if INTERVAL_ANNOTATION in annotations:
            interval = parse_interval(annotations[INTERVAL_ANNOTATION])
    except ValueError:
        return default
    return RolloutPolicy(steps, interval)


def rollout_issues(annotations: Mapping[str, str], locate: Locator) -> list[Issue]:
    """Validation problems of the rollout annotations, at the annotation's line."""
    issues = []
    checks = ((STEPS_ANNOTATION, parse_steps), (INTERVAL_ANNOTATION, parse_interval))
    for annotation, parse in checks:
        text = annotations.get(annotation)
        if text is None:
            continue
        try:
            parse(text)
        except ValueError as exc:
            path: FieldPath = ("metadata", "annotations", annotation)
            issues.append(Issue(path, locate(path), str(exc)))
    return issues
