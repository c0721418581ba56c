"""The staged-rollout engine: which plugins roll out in steps, where each stands, and when it moves.

Between reconcile and translate. Every reconcile pass hands :meth:`Rollouts.plan`
what it would serve; the plan says what to serve instead and which plugins are
staged (:class:`wasmxds.translate.snapshot.Staged`), and translation puts each
proxy on the old or the new version by its cohort point
(:attr:`wasmxds.xds.node.NodeInfo.cohort`).

- **What is staged**: a new served version (module and configuration: the ECDS
  resource's content hash) of a plugin that already has a served version, when
  its policy has steps (annotations over ``--rollout-steps``/``--rollout-interval``).
  A first version goes everywhere at once (nothing to protect), and so does
  any change of a plugin without steps; a removal is never staged.
- **Advance**: once the current step's bake time (the interval) is over, every
  connected proxy of the step that the plugin applies to and that subscribes to
  it has ACKed the new version, and the health verdict stayed healthy. A step
  still waiting for ACKs at :func:`ack_deadline` pauses, naming the proxies.
- **Rollback**: any NACK of the new version (:meth:`on_rejected`, called by the
  xDS server), an unhealthy verdict, or :meth:`abort` puts every proxy back on
  the previous version; the rollout stays ``RolledBack`` until the plugin's
  served version changes again.
- **Replicas**: cohorts and steps come from the node id and the policy only,
  so replicas agree on who is in a step; each sees only its own proxies' ACKs
  and advances on those (a replica with no proxy in a step advances when its
  bake time ends). A NACK on one replica rolls back only that replica's view.

Timers run in :meth:`Rollouts.run`, a task of the supervised service. The
operator controls (:meth:`pause`, :meth:`resume`, :meth:`promote`,
:meth:`abort`) and :meth:`views` are the API of ``/debug/rollouts`` and
``wasmxds rollout``; docs/rollouts.md describes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from wasmxds.api.objects import ObjectKey
from wasmxds.api.rollout import NO_STAGING, RolloutPolicy, rollout_policy
from wasmxds.api.scope import PREFIX as SCOPE_PREFIX
from wasmxds.errors import RolloutError, RolloutNotFound
from wasmxds.metrics import Metrics
from wasmxds.modules.types import Module
from wasmxds.rollout.model import Phase, Rollout, Version, clip
from wasmxds.rollout.signals import HealthSource, ProxyStream, count
from wasmxds.rollout.state import RolloutFile
from wasmxds.translate.plugins import PluginResources, standin_resources
from wasmxds.translate.routes import base_name, override_resources
from wasmxds.translate.snapshot import Staged
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.resources import prepare
from wasmxds.xds.types import ECDS

__all__ = ["Plan", "Rollouts", "ack_deadline", "resource_version"]

log = structlog.get_logger(__name__)

# How often active rollouts are looked at (ACKs, health, bake time).
DEFAULT_TICK = 0.5


@dataclass(slots=True)
class Plan:
    """What one reconcile pass serves once rollouts are applied."""

    served: dict[str, PluginResources]
    staged: dict[str, Staged] = field(default_factory=dict)
    modules: dict[str, Module] = field(default_factory=dict)
    """Per resource name, a module the plan serves (or keeps for a step) besides the
    pass's own: previous versions still in use."""


def ack_deadline(interval: float) -> float:
    """How long a step may bake with proxies still waiting before the rollout pauses."""
    return max(3 * interval, interval + 60)


def resource_version(resources: PluginResources) -> str:
    """The version of ``resources``' rollouts (see :func:`versions`)."""
    return versions(resources)[0]


def versions(resources: PluginResources) -> tuple[str, dict[str, str]]:
    """The rollout version of ``resources`` and the ECDS versions proxies ACK, by resource.

    The rollout version is the plugin's own ECDS content hash; with per-scope overrides
    or scope annotations it also covers those resources' versions and the scope, so a
    change of an override's config or of the scope alone is staged too.
    """
    name = resources.plugin.resource_name
    ecds = {name: prepare(name, resources.config).version}
    for override, patched in sorted(override_resources(resources).items()):
        ecds[override] = prepare(override, patched.config).version
    scope = sorted(
        (k, v) for k, v in resources.plugin.annotations.items() if k.startswith(SCOPE_PREFIX)
    )
    if len(ecds) == 1 and not scope:
        return ecds[name], ecds
    digest = hashlib.sha256(repr((sorted(ecds.items()), scope)).encode()).hexdigest()
    return digest[:16], ecds


class Rollouts:
    """Every plugin's rollout state (see the module docstring)."""

    def __init__(
        self,
        *,
        default: RolloutPolicy = NO_STAGING,
        root_namespace: str,
        sessions: Callable[[], Iterable[ProxyStream]] = lambda: (),
        changed: Callable[[], None] = lambda: None,
        health: HealthSource | None = None,
        saved: RolloutFile | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tick: float = DEFAULT_TICK,
    ) -> None:
        self.default = default
        self._root_namespace = root_namespace
        self._sessions = sessions
        self._changed = changed
        self.health = health
        self._saved = saved if saved is not None else RolloutFile()
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        self._tick = tick
        # Per resource name: the version every proxy got last (what a rollout starts from).
        self._stable: dict[str, Version] = {}
        self._rollouts: dict[str, Rollout] = {}
        # Restored after a restart, used at the plugin's first plan.
        self._restored: dict[str, Version] = {}
        self._wake = asyncio.Event()
        if metrics is not None:
            metrics.live_gauge(
                "wasmxds_rollout_proxies",
                "connected proxies of each staged rollout by the version they hold (old, new)",
                ("plugin", "version"),
                self._proxy_counts,
            )

    # -- reconcile side ---------------------------------------------------

    def restore(self, resources: PluginResources, module: Module | None) -> None:
        """A plugin's stable version as it was before a restart (read back by reconcile)."""
        name = resources.plugin.resource_name
        version, ecds = versions(resources)
        self._restored[name] = Version(resources, version, module, ecds)

    def stable_versions(self) -> dict[str, Version]:
        """The stable version of every plugin whose changes are staged (reconcile persists them)."""
        return {
            name: version
            for name, version in self._stable.items()
            if name in self._rollouts or self._policy(version.resources).staged
        }

    def _policy(self, resources: PluginResources) -> RolloutPolicy:
        return rollout_policy(resources.plugin.annotations, self.default)

    def plan(self, served: Mapping[str, PluginResources], modules: Mapping[str, Module]) -> Plan:
        """Apply the rollouts to what a reconcile pass would serve (``modules``: its modules)."""
        plan = Plan(dict(served))
        for name in [n for n in self._stable if n not in served]:
            # Removed: never staged, and forgotten (a re-created plugin starts over).
            self._stable.pop(name, None)
            if self._rollouts.pop(name, None) is not None:
                self._saved.dirty = True
        for name, desired in served.items():
            if desired.standin is None:
                self._plan_one(plan, name, Version(desired, "", modules.get(name)))
        self._saved.replace(self._rollouts)
        return plan

    def _plan_one(self, plan: Plan, name: str, desired: Version) -> None:
        stable = self._stable.get(name)
        rollout = self._rollouts.get(name)
        version, ecds = self._version_of(desired.resources, stable, rollout)
        desired = Version(desired.resources, version, desired.module, ecds)
        if stable is None:
            restored = self._restored.pop(name, None)
            if restored is None and self._hold_unrestored(plan, name, desired):
                return
            stable = restored or desired
            rollout = self._resume(name, stable, desired)
            if rollout is not None:
                # The saved previous version is used up: later passes must find it here.
                self._stable[name] = stable
        if stable.resources.standin is not None and (
            rollout is None or rollout.new.version != desired.version
        ):
            # Held after a restart (see _hold_unrestored) and changed since: there is no
            # previous version to stage against, so the new one goes everywhere at once.
            self._stable[name] = desired
            if self._rollouts.pop(name, None) is not None:
                self._saved.dirty = True
            return
        if desired.version == stable.version:
            self._stable[name] = desired
            if rollout is not None and rollout.phase is not Phase.COMPLETE:
                # Back to the version everyone has: nothing left to roll out or back.
                del self._rollouts[name]
            return
        if rollout is not None and rollout.new.version == desired.version:
            rollout.new = desired
            self._apply(plan, rollout, stable)
            return
        policy = self._policy(desired.resources)
        if not policy.staged:
            self._stable[name] = desired
            self._rollouts.pop(name, None)
            return
        now, wall = self._clock(), self._wall()
        rollout = Rollout(
            stable.resources.plugin.key,
            stable,
            desired,
            policy,
            started_at=wall,
            step_started_at=wall,
            step_started=now,
        )
        started = f"new version {desired.shown}: step 0 ({policy.steps[0]:g}%)"
        rollout.record("started", started, wall=wall)
        log.info(
            "rollout.started",
            plugin=str(rollout.key),
            old=stable.shown,
            new=desired.shown,
            steps=list(policy.steps),
            interval=policy.interval,
        )
        self._rollouts[name] = rollout
        self._stable[name] = stable
        self._apply(plan, rollout, stable)
        self._wake.set()

    @staticmethod
    def _version_of(
        resources: PluginResources, stable: Version | None, rollout: Rollout | None
    ) -> tuple[str, dict[str, str]]:
        """:func:`versions` of ``resources``; a known version's when the filter and the
        annotations (overrides, scope) are the same (cheaper than hashing on every pass)."""
        for known in (stable, rollout.new if rollout is not None else None):
            if (
                known is not None
                and known.ecds
                and known.resources.config == resources.config
                and known.resources.plugin.annotations == resources.plugin.annotations
            ):
                return known.version, dict(known.ecds)
        return versions(resources)

    def _hold_unrestored(self, plan: Plan, name: str, desired: Version) -> bool:
        """After a restart: hold back the new version of a saved rollout whose previous
        version could not be restored (True), rather than give it to every proxy.

        The previous version is replaced by the plugin's fail-strategy stand-in (what
        reconcile serves for a plugin with nothing good to serve). A rolled-back rollout
        stays RolledBack: every proxy gets the stand-in. A rollout under way is held
        Paused: proxies in its step keep the new version, the others get the stand-in,
        until an operator promotes or aborts it.
        """
        record = self._saved.peek(name)
        if record is None or record.new != desired.version or record.old == desired.version:
            return False
        if record.phase not in (Phase.ROLLED_BACK, Phase.PROGRESSING, Phase.PAUSED):
            return False
        lost = "the previous version could not be restored after a restart"
        standin = standin_resources(desired.resources.plugin, lost)
        stable = Version(standin, record.old, None)
        self._saved.take(name, old=record.old, new=record.new)
        rollout = record.rollout(stable, desired, now=self._clock(), wall=self._wall())
        if record.phase is Phase.ROLLED_BACK:
            reason = f"{lost}; every proxy gets the fail-strategy stand-in"
            event = "held_rolled_back"
        else:
            rollout.phase = Phase.PAUSED
            reason = (
                f"{lost}; promote or abort (proxies outside step {rollout.step} get the"
                " fail-strategy stand-in meanwhile)"
            )
            event = "held_paused"
        rollout.record(event, reason, wall=self._wall())
        log.warning(
            "rollout.previous_not_restored",
            plugin=str(rollout.key),
            phase=rollout.phase.value,
            new=desired.shown,
            reason=reason,
        )
        self._rollouts[name] = rollout
        self._stable[name] = stable
        self._saved.dirty = True
        self._apply(plan, rollout, stable)
        self._wake.set()
        return True

    def _resume(self, name: str, stable: Version, desired: Version) -> Rollout | None:
        """After a restart: the persisted rollout to ``desired``, if it is still that one."""
        record = self._saved.take(name, old=stable.version, new=desired.version)
        if record is None:
            return None
        rollout = record.rollout(stable, desired, now=self._clock(), wall=self._wall())
        self._rollouts[name] = rollout
        log.info(
            "rollout.resumed",
            plugin=str(rollout.key),
            phase=rollout.phase.value,
            step=rollout.step,
            detail="after a restart; the current step bakes again from now",
        )
        self._wake.set()
        return rollout

    def _apply(self, plan: Plan, rollout: Rollout, stable: Version) -> None:
        name = rollout.name
        if rollout.phase is Phase.ROLLED_BACK:
            plan.served[name] = stable.resources
        elif rollout.phase.active:
            plan.staged[name] = Staged(stable.resources, rollout.percent)
        else:
            return
        if stable.module is not None:
            plan.modules[name] = stable.module

    def kept_modules(self) -> set[str]:
        """Digests of modules a rollout may still serve (the purge keeps them)."""
        digests = {v.module.digest for v in self._stable.values() if v.module is not None}
        digests.update(v.module.digest for v in self._restored.values() if v.module is not None)
        return digests

    # -- xDS side -----------------------------------------------------------

    def on_rejected(
        self, node: NodeInfo, type_url: str, rejected: Collection[tuple[str, str]], error: str
    ) -> None:
        """A proxy NACKed these versions: a new version under rollout among them rolls back."""
        if type_url != ECDS:
            return
        for name, version in rejected:
            # A per-scope override's resource belongs to its plugin's rollout.
            rollout = self._rollouts.get(base_name(name))
            if rollout is None or not rollout.phase.active or version != rollout.new.acked(name):
                continue
            self._roll_back(
                rollout,
                "nack",
                f"proxy {clip(node.id)!r} rejected version {version}: {clip(error)}",
            )

    # -- timers ---------------------------------------------------------------

    def evaluate(self) -> None:
        """Look at every active rollout once: health, ACKs, bake time; advance or roll back."""
        active = [r for r in self._rollouts.values() if r.phase.active]
        if not active:
            return
        streams = list(self._sessions())
        now = self._clock()
        for rollout in active:
            rollout.counts = count(rollout, streams, self._root_namespace)
            if not self._healthy(rollout):
                continue
            if rollout.phase is not Phase.PROGRESSING:
                continue
            baking = now - rollout.step_started
            if baking >= rollout.policy.interval and not rollout.counts.waiting:
                self._advance(rollout)
            elif baking >= ack_deadline(rollout.policy.interval):
                self._stall(rollout)

    def _stall(self, rollout: Rollout) -> None:
        """Pause a step some proxies never ACKed, saying who (an operator promotes or aborts)."""
        counts = rollout.counts
        shown = ", ".join(counts.waiting_nodes[:5])
        more = "…" if counts.waiting > 5 else ""
        reason = f"waiting for {counts.waiting} proxies to ACK: {shown}{more}"
        rollout.phase = Phase.PAUSED
        rollout.record("stalled", reason, wall=self._wall())
        log.warning(
            "rollout.stalled",
            plugin=str(rollout.key),
            step=rollout.step,
            waiting=counts.waiting,
            reason=reason,
            action="paused; promote or abort it (`wasmxds rollout`), or fix the proxies",
        )
        self._saved.dirty = True
        self._changed()

    def _healthy(self, rollout: Rollout) -> bool:
        """Ask the health source; an unhealthy verdict rolls back (False)."""
        if self.health is None or not rollout.counts.new_nodes:
            return True
        verdict = self.health.verdict(
            rollout.counts.new_nodes,
            rollout.counts.old_nodes,
            since=rollout.step_started_at,
            plugin=str(rollout.key),
        )
        rollout.health = {
            "healthy": verdict.healthy,
            "known": verdict.known,
            "reason": verdict.reason,
            "details": verdict.details,
        }
        if verdict.healthy:
            return True
        self._roll_back(rollout, "health", f"unhealthy at step {rollout.step}: {verdict.reason}")
        return False

    def _advance(self, rollout: Rollout) -> None:
        wall = self._wall()
        counts, percent = rollout.counts, rollout.percent
        why = (
            f"{counts.in_step} proxies of step {rollout.step} ({percent:g}%) ACKed"
            f" {rollout.new.shown} and stayed healthy for {rollout.policy.interval:g}s"
        )
        if rollout.step + 1 >= len(rollout.policy.steps):
            rollout.phase = Phase.COMPLETE
            self._stable[rollout.name] = rollout.new
            rollout.record("completed", why, wall=wall)
        else:
            rollout.step += 1
            rollout.step_started, rollout.step_started_at = self._clock(), wall
            now_at = f"now step {rollout.step} ({rollout.percent:g}%)"
            rollout.record("advanced", f"{why}; {now_at}", wall=wall)
        if self._metrics is not None:
            self._metrics.rollout_steps.inc()
        log.info(
            "rollout.advanced",
            plugin=str(rollout.key),
            step=rollout.step,
            percent=rollout.percent,
            phase=rollout.phase.value,
            proxies=counts.in_step,
        )
        self._saved.dirty = True
        self._changed()

    def _roll_back(self, rollout: Rollout, cause: str, reason: str) -> None:
        rollout.phase = Phase.ROLLED_BACK
        rollout.rollback_cause = cause
        rollout.record("rolled_back", reason, wall=self._wall())
        if self._metrics is not None:
            self._metrics.rollout_rollbacks.labels(cause).inc()
        log.warning(
            "rollout.rolled_back",
            plugin=str(rollout.key),
            cause=cause,
            step=rollout.step,
            new=rollout.new.shown,
            old=rollout.old.shown,
            reason=reason,
            action="every proxy gets the previous version; not retried until the spec changes",
        )
        self._saved.dirty = True
        self._changed()

    async def run(self) -> None:
        """Evaluate active rollouts every tick (sleeping while none is active) until cancelled."""
        while True:
            active = any(r.phase.active for r in self._rollouts.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick if active else None)
            self._wake.clear()
            self.evaluate()
            await self._saved.flush()

    async def flush(self) -> None:
        """Write the rollouts file if anything changed (shutdown)."""
        self._saved.replace(self._rollouts)
        await self._saved.flush()

    # -- operator API -----------------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        """Every known rollout (active, complete or rolled back), JSON-able, by plugin."""
        now = self._clock()
        return [self._rollouts[name].view(now) for name in sorted(self._rollouts)]

    def view(self, key: str | ObjectKey) -> dict[str, Any]:
        return self._find(key).view(self._clock())

    def rollout(self, key: ObjectKey) -> Rollout | None:
        """The plugin's rollout, if it has one (Kubernetes status reads it)."""
        return self._rollouts.get(key.resource_name)

    def _find(self, key: str | ObjectKey) -> Rollout:
        text = str(key)
        namespace, sep, name = text.partition("/")
        found = self._rollouts.get(f"{namespace}.{name}") if sep else None
        if found is None:
            raise RolloutNotFound(
                f"no staged rollout for {text!r} (expected NAMESPACE/NAME of a plugin with one;"
                " `wasmxds rollouts` lists them)"
            )
        return found

    def _require_active(self, rollout: Rollout, action: str) -> None:
        if not rollout.phase.active:
            raise RolloutError(
                f"cannot {action} the rollout of {rollout.key}: it is {rollout.phase.value}"
                " (only a Progressing or Paused rollout can be steered; a new version of the"
                " plugin starts a new one)"
            )

    def pause(self, key: str | ObjectKey) -> dict[str, Any]:
        """Hold the rollout at its step (NACKs and bad health still roll it back)."""
        rollout = self._find(key)
        self._require_active(rollout, "pause")
        if rollout.phase is Phase.PROGRESSING:
            rollout.phase = Phase.PAUSED
            rollout.record("paused", "paused by an operator", wall=self._wall())
            log.info("rollout.paused", plugin=str(rollout.key), step=rollout.step)
            self._saved.dirty = True
        return rollout.view(self._clock())

    def resume(self, key: str | ObjectKey) -> dict[str, Any]:
        """Let a paused rollout advance again; its step bakes again from now."""
        rollout = self._find(key)
        self._require_active(rollout, "resume")
        if rollout.phase is Phase.PAUSED:
            rollout.phase = Phase.PROGRESSING
            rollout.step_started, rollout.step_started_at = self._clock(), self._wall()
            rollout.record("resumed", "resumed by an operator", wall=rollout.step_started_at)
            log.info("rollout.resumed", plugin=str(rollout.key), step=rollout.step)
            self._saved.dirty = True
            self._wake.set()
        return rollout.view(self._clock())

    def promote(self, key: str | ObjectKey) -> dict[str, Any]:
        """Give every proxy the new version now; the rollout completes."""
        rollout = self._find(key)
        self._require_active(rollout, "promote")
        rollout.phase = Phase.COMPLETE
        rollout.step = len(rollout.policy.steps) - 1
        self._stable[rollout.name] = rollout.new
        rollout.record("promoted", "promoted by an operator", wall=self._wall())
        log.info("rollout.promoted", plugin=str(rollout.key))
        self._saved.dirty = True
        self._changed()
        return rollout.view(self._clock())

    def abort(self, key: str | ObjectKey) -> dict[str, Any]:
        """Roll back to the previous version on every proxy (RolledBack, not retried)."""
        rollout = self._find(key)
        self._require_active(rollout, "abort")
        self._roll_back(rollout, "abort", "aborted by an operator")
        return rollout.view(self._clock())

    def _proxy_counts(self) -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for name in sorted(self._rollouts):
            rollout = self._rollouts[name]
            if rollout.phase.active:
                out.append(((str(rollout.key), "new"), float(rollout.counts.new)))
                out.append(((str(rollout.key), "old"), float(rollout.counts.old)))
        return out
