"""Rollouts kept across restarts: ``<cache>/rollouts.json``.

Per ECDS resource name: the old and new versions (ECDS content hashes), the
steps and interval, the phase, the step, when it started and why it last
moved, and its recent history. The plugin versions themselves are not in
this file: the reconcile stage keeps each staged plugin's stable version
(WasmPlugin and module digest) in ``<cache>/rollout-stable.json`` the way it
keeps last good versions, and the new version is whatever the sources say.

A restart **resumes**: a persisted rollout whose old and new versions are
again the plugin's stable and desired versions carries on at its step and
phase (``Paused`` stays paused, ``RolledBack`` stays rolled back), and the
current step bakes again from the restart, since the ACKs and health it
had seen are gone with the streams. Anything else (the spec changed while
down, the stable version could not be restored) starts over from what is
known. Written atomically, owner-only (:mod:`wasmxds.statefile`); an
unreadable file is logged and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from wasmxds.api.objects import ObjectKey
from wasmxds.api.rollout import RolloutPolicy
from wasmxds.rollout.model import MAX_HISTORY, Phase, Rollout, Version
from wasmxds.statefile import StateFile

__all__ = ["ROLLOUTS_FILE", "RolloutFile", "SavedRollout"]

log = structlog.get_logger(__name__)

ROLLOUTS_FILE = "rollouts.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedRollout:
    """A rollout as the file keeps it (everything but the plugin versions themselves)."""

    key: ObjectKey
    old: str
    new: str
    steps: tuple[float, ...]
    interval: float
    phase: Phase
    step: int
    started_at: float
    reason: str
    rollback_cause: str
    history: tuple[dict[str, Any], ...]

    def rollout(self, old: Version, new: Version, *, now: float, wall: float) -> Rollout:
        """The rollout again, between these versions; its step bakes again from ``now``."""
        step = max(0, min(self.step, len(self.steps) - 1))
        return Rollout(
            self.key,
            old,
            new,
            RolloutPolicy(self.steps, self.interval),
            phase=self.phase,
            step=step,
            started_at=self.started_at,
            step_started_at=wall,
            step_started=now,
            reason=self.reason,
            rollback_cause=self.rollback_cause,
            history=list(self.history)[-MAX_HISTORY:],
        )


def _encode(rollout: Rollout) -> dict[str, Any]:
    return {
        "namespace": rollout.key.namespace,
        "name": rollout.key.name,
        "kind": rollout.key.kind,
        "old": rollout.old.version,
        "new": rollout.new.version,
        "steps": list(rollout.policy.steps),
        "interval": rollout.policy.interval,
        "phase": rollout.phase.value,
        "step": rollout.step,
        "started_at": rollout.started_at,
        "reason": rollout.reason,
        "rollback_cause": rollout.rollback_cause,
        "history": list(rollout.history),
    }


def _decode(value: Any) -> SavedRollout:
    if not isinstance(value, dict):
        raise ValueError("entry is not an object")
    steps = tuple(float(step) for step in value["steps"])
    if not steps or steps[-1] != 100:
        raise ValueError(f"steps {steps!r} do not end at 100")
    history = value.get("history", [])
    if not isinstance(history, list):
        raise ValueError("history is not a list")
    return SavedRollout(
        key=ObjectKey(str(value["namespace"]), str(value["name"]), str(value.get("kind", ""))),
        old=str(value["old"]),
        new=str(value["new"]),
        steps=steps,
        interval=float(value["interval"]),
        phase=Phase(value["phase"]),
        step=int(value["step"]),
        started_at=float(value["started_at"]),
        reason=str(value.get("reason", "")),
        rollback_cause=str(value.get("rollback_cause", "")),
        history=tuple(h for h in history if isinstance(h, dict)),
    )


class RolloutFile:
    """The persisted rollouts; ``path=None`` keeps nothing on disk (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self._loaded: dict[str, SavedRollout] = {}
        self._current: dict[str, dict[str, Any]] = {}
        self._live: Mapping[str, Rollout] = {}
        self._file = StateFile(
            path,
            prefix=".rollouts-",
            failed_event="rollout.state_write_failed",
            snapshot=self.document,
            encode=lambda document: json.dumps(document, sort_keys=True, indent=1).encode(),
        )

    @property
    def dirty(self) -> bool:
        return self._file.dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._file.dirty = value

    @classmethod
    def load(cls, path: Path) -> RolloutFile:
        """Read ``path``; missing is empty, unreadable or corrupt is logged and ignored."""
        saved = cls(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("version") != _VERSION:
                raise ValueError("unknown rollouts file version")
            entries = document["rollouts"]
            if not isinstance(entries, dict):
                raise ValueError("rollouts is not an object")
        except FileNotFoundError:
            return saved
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning(
                "rollout.state_unreadable",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}"[:200],
                action="ignored; rollouts in progress start over",
            )
            return saved
        for name, value in entries.items():
            try:
                saved._loaded[str(name)] = _decode(value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning(
                    "rollout.state_entry_skipped",
                    path=str(path),
                    resource=str(name)[:200],
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
        return saved

    def peek(self, name: str) -> SavedRollout | None:
        """The persisted rollout of ``name``, not yet used, left in place."""
        return self._loaded.get(name)

    def take(self, name: str, *, old: str, new: str) -> SavedRollout | None:
        """The persisted rollout of ``name`` if it went from ``old`` to ``new`` (used once)."""
        record = self._loaded.pop(name, None)
        if record is None:
            return None
        self.dirty = True
        if record.old == old and record.new == new:
            return record
        if record.phase is Phase.COMPLETE and record.new == old:
            return None  # finished before the restart: nothing to resume
        log.info(
            "rollout.state_outdated",
            plugin=str(record.key),
            detail="the plugin's versions changed while wasmxds was down; starting over",
        )
        return None

    def replace(self, rollouts: Mapping[str, Rollout]) -> None:
        """Make ``rollouts`` (kept, and read at each write) the content; rewritten at the
        next flush if it changed since the last call."""
        self._live = rollouts
        current = {name: _encode(rollout) for name, rollout in rollouts.items()}
        if current != self._current:
            self._current = current
            self.dirty = True

    def document(self) -> dict[str, Any]:
        entries: dict[str, Any] = {
            name: {
                "namespace": r.key.namespace,
                "name": r.key.name,
                "old": r.old,
                "new": r.new,
                "steps": list(r.steps),
                "interval": r.interval,
                "phase": r.phase.value,
                "step": r.step,
                "started_at": r.started_at,
                "reason": r.reason,
                "rollback_cause": r.rollback_cause,
                "history": list(r.history),
            }
            for name, r in self._loaded.items()
        }
        entries.update((name, _encode(rollout)) for name, rollout in self._live.items())
        return {"version": _VERSION, "rollouts": dict(sorted(entries.items()))}

    async def flush(self) -> None:
        await self._file.flush()
