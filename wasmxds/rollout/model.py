"""One plugin's staged rollout: its versions, where it stands, and why (the engine's record).

The JSON a rollout shows (:meth:`Rollout.view`) is what ``/debug/rollouts`` and
``wasmxds rollouts -o json`` print; docs/rollouts.md describes each field.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wasmxds.api.objects import ObjectKey
from wasmxds.api.rollout import RolloutPolicy
from wasmxds.modules.types import Module
from wasmxds.translate.plugins import PluginResources
from wasmxds.xds.resources import shown_version

__all__ = [
    "MAX_HISTORY",
    "MAX_WAITING_SHOWN",
    "Counts",
    "Phase",
    "Rollout",
    "Version",
    "clip",
    "iso",
]

MAX_HISTORY = 32
# Waiting proxies named in a view (the count covers them all).
MAX_WAITING_SHOWN = 20
# Proxy ids and NACK messages come from clients: cut before they reach logs and views.
_CLIP = 200


def clip(text: str) -> str:
    """``text`` cut to a bounded length (it came from a client)."""
    return text if len(text) <= _CLIP else text[:_CLIP] + "…"


"""Events kept per rollout (the newest): enough to read a whole rollout of many steps."""


class Phase(enum.StrEnum):
    PROGRESSING = "Progressing"
    """Steps advance on their own once the step's proxies ACKed and stayed healthy."""
    PAUSED = "Paused"
    """Held at its step by an operator; a NACK or bad health still rolls it back."""
    COMPLETE = "Complete"
    """Every proxy gets the new version; it is the plugin's stable version now."""
    ROLLED_BACK = "RolledBack"
    """Every proxy gets the previous version again; not retried until the spec changes."""

    @property
    def active(self) -> bool:
        return self in (Phase.PROGRESSING, Phase.PAUSED)


def iso(wall: float | None) -> str | None:
    """A wall-clock time as RFC 3339 UTC (seconds), for views and the state file."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Version:
    """One served version of a plugin: its filter and what identifies it."""

    resources: PluginResources
    version: str
    """What identifies it: the plugin's ECDS resource version, or with per-scope overrides
    or scope annotations, a hash over those resources' versions and the scope."""
    module: Module | None
    """The cached module behind it; None for file:// modules (not in the cache)."""
    ecds: Mapping[str, str] = field(default_factory=dict)
    """Per ECDS resource (the plugin's own and its per-scope overrides'), the version
    proxies ACK; empty when only the plugin's own resource is known (``version`` is it)."""

    def acked(self, name: str) -> str:
        """The version of ECDS resource ``name`` that proxies holding this version ACK."""
        return self.ecds.get(name, self.version)

    @property
    def shown(self) -> str:
        """The version as views, reasons and logs show it: an HMAC when it holds values
        from Secrets (the real one would let a reader test guesses of them)."""
        return shown_version(self.version, secret=self.resources.has_secret_values)

    def view(self) -> dict[str, Any]:
        plugin = self.resources.plugin
        return {
            "version": self.shown,
            "module": self.module.digest if self.module is not None else None,
            "generation": plugin.generation,
            "fingerprint": plugin.fingerprint,
        }


@dataclass(slots=True)
class Counts:
    """What this replica's connected proxies of one rollout hold (at the last evaluation)."""

    new: int = 0
    """Proxies that ACKed the new version."""
    old: int = 0
    """Proxies that hold the previous version."""
    in_step: int = 0
    """Proxies the current step takes (the plugin applies, their cohort is below the step)."""
    waiting: int = 0
    """Of those, how many have not ACKed the new version yet."""
    new_nodes: tuple[str, ...] = ()
    old_nodes: tuple[str, ...] = ()
    waiting_nodes: tuple[str, ...] = ()
    """The first :data:`MAX_WAITING_SHOWN` of the waiting proxies' ids, each cut short."""

    def view(self) -> dict[str, Any]:
        return {
            "new": self.new,
            "old": self.old,
            "in_step": self.in_step,
            "waiting": self.waiting,
            "waiting_nodes": list(self.waiting_nodes),
        }


@dataclass(slots=True)
class Rollout:
    """A plugin moving from ``old`` to ``new`` in ``policy.steps``."""

    key: ObjectKey
    old: Version
    new: Version
    policy: RolloutPolicy
    phase: Phase = Phase.PROGRESSING
    step: int = 0
    started_at: float = field(default_factory=time.time)
    step_started_at: float = field(default_factory=time.time)
    """Wall clock: when the current step began (health is judged since then)."""
    step_started: float = 0.0
    """Monotonic clock: when the current step began (its bake time runs from then)."""
    reason: str = ""
    """Why it last advanced, paused, completed or rolled back."""
    rollback_cause: str = ""
    """"nack", "health" or "abort" once rolled back."""
    health: dict[str, Any] | None = None
    counts: Counts = field(default_factory=Counts)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.key.resource_name

    @property
    def percent(self) -> float:
        return self.policy.steps[min(self.step, len(self.policy.steps) - 1)]

    def record(self, event: str, reason: str, *, wall: float) -> None:
        self.reason = reason
        self.history.append({"at": iso(wall), "event": event, "step": self.step, "reason": reason})
        del self.history[:-MAX_HISTORY]

    def view(self, now: float) -> dict[str, Any]:
        """The JSON-able view (see the module docstring)."""
        due = None
        if self.phase is Phase.PROGRESSING:
            due = max(0.0, self.step_started + self.policy.interval - now)
        return {
            "plugin": str(self.key),
            "resource": self.name,
            "phase": self.phase.value,
            "old": self.old.view(),
            "new": self.new.view(),
            "steps": list(self.policy.steps),
            "step": self.step,
            "percent": self.percent,
            "interval_seconds": self.policy.interval,
            "started_at": iso(self.started_at),
            "step_started_at": iso(self.step_started_at),
            "bake_left_seconds": None if due is None else round(due, 3),
            "proxies": self.counts.view(),
            "health": self.health,
            "reason": self.reason,
            "history": list(self.history),
        }
