"""Reconcile's side of staged rollouts (:mod:`wasmxds.rollout`): apply the plan, keep the
stable versions across restarts.

Each pass, what reconcile would serve goes through :meth:`Rollouts.plan`: a
plugin rolled back serves its previous version again (its status says so), a
plugin in a staged rollout keeps its previous version in the snapshot for the
proxies outside the step, and the previous modules stay in use (the purge
keeps them). The stable version of every staged plugin (the one a rollout
starts from) is written to ``<cache>/rollout-stable.json`` in the last-good
format and read back at the first pass, so a restart mid-rollout still has
the version the proxies outside the step must keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

from wasmxds.api.configsecrets import config_secret_refs
from wasmxds.api.objects import ObjectKey
from wasmxds.modules.types import Module, ModuleOutcome, Ready
from wasmxds.reconcile.kubestatus import RolloutCondition
from wasmxds.reconcile.last_good import LastGoodFile, SavedGood
from wasmxds.rollout import Phase, Plan, Rollouts
from wasmxds.translate.plugins import Delivery, PluginResources, plugin_resources

__all__ = ["ROLLOUT_STABLE_FILE", "Staging"]

log = structlog.get_logger(__name__)

ROLLOUT_STABLE_FILE = "rollout-stable.json"


class Staging:
    """The rollouts engine as reconcile uses it, with its persisted stable versions."""

    def __init__(self, rollouts: Rollouts, saved: LastGoodFile | None = None) -> None:
        self.rollouts = rollouts
        self._saved = saved if saved is not None else LastGoodFile()

    def kept_modules(self) -> set[str]:
        digests = {saved.digest for saved in self._saved.entries.values()}
        return digests | self.rollouts.kept_modules()

    async def restore(
        self,
        find_module: Callable[[str], Module | None] | None,
        prepare_delivery: Callable[[Iterable[ModuleOutcome]], Awaitable[Delivery]],
        *,
        runtime: str,
        usable: Callable[[SavedGood], bool],
    ) -> None:
        """Hand the engine the stable versions kept before a restart (first pass only).

        A version whose module is gone, that may not be served under today's signature
        rules (``usable``), or that takes values from Secrets (never written to disk) is
        dropped: its plugin's next change goes everywhere at once, as a first version, and
        a saved rollout to the version it has now is held (the engine's ``_hold_unrestored``).
        """
        found: list[tuple[SavedGood, Module]] = []
        for saved in self._saved.entries.values():
            module = None
            if find_module is not None:
                module = await asyncio.to_thread(find_module, saved.digest)
            if module is None or not usable(saved) or config_secret_refs(saved.plugin.annotations):
                log.warning(
                    "rollout.stable_not_restored",
                    plugin=str(saved.plugin.key),
                    digest=saved.digest,
                    action="its next change is not staged against it",
                )
                continue
            found.append((saved, module))
        if not found:
            return
        delivery = await prepare_delivery([Ready(module) for _, module in found])
        for saved, module in found:
            resources = plugin_resources(saved.plugin, Ready(module), delivery, runtime=runtime)
            if resources.standin is None:
                self.rollouts.restore(resources, module)

    def plan(self, served: dict[str, PluginResources], modules: dict[str, Module]) -> Plan:
        """The pass's plan; rolled-back plugins' served versions and modules are replaced in
        ``served`` and ``modules``."""
        plan = self.rollouts.plan(served, modules)
        for name, resources in plan.served.items():
            if resources is not served.get(name):
                served[name] = resources
                module = plan.modules.get(name)
                if module is not None:
                    modules[name] = module
                else:
                    modules.pop(name, None)
        self._saved.replace(
            {
                name: SavedGood(version.resources.plugin, version.module.digest)
                for name, version in sorted(self.rollouts.stable_versions().items())
                if version.module is not None
            }
        )
        return plan

    def rolled_back(self, key: ObjectKey) -> str | None:
        """Why the plugin is rolled back (its previous version is served), None if it is not."""
        rollout = self.rollouts.rollout(key)
        if rollout is None or rollout.phase is not Phase.ROLLED_BACK:
            return None
        return f"rolled back to {rollout.old.version}: {rollout.reason}"

    def condition(self, key: ObjectKey) -> RolloutCondition | None:
        """The plugin's rollout condition for Kubernetes status, None without a rollout."""
        rollout = self.rollouts.rollout(key)
        if rollout is None:
            return None
        if rollout.phase is Phase.ROLLED_BACK:
            return RolloutCondition(
                "RolledBack",
                "True",
                rollout.rollback_cause.capitalize() or "RolledBack",
                f"version {rollout.new.version} rolled back to {rollout.old.version}"
                f" on every proxy: {rollout.reason}; not retried until the spec changes",
            )
        step = f"step {rollout.step + 1}/{len(rollout.policy.steps)} ({rollout.percent:g}%)"
        if rollout.phase is Phase.COMPLETE:
            return RolloutCondition(
                "RolloutProgressing", "False", "Complete", f"every proxy has {rollout.new.version}"
            )
        return RolloutCondition(
            "RolloutProgressing",
            "True",
            rollout.phase.value,
            f"{rollout.old.version} → {rollout.new.version} at {step}: {rollout.reason}",
        )

    async def flush(self) -> None:
        await self._saved.flush()
