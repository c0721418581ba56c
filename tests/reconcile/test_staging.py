"""Reconcile with staged rollouts: the plan is served, rolled-back plugins say so, and the
stable version a rollout starts from survives a restart (<cache>/rollout-stable.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.factories import make_node
from tests.reconcile.test_last_good import GOOD, collect, version
from tests.reconcile.test_last_good_persisted import store_module
from tests.reconcile.test_reconcile import FakeModules
from wasmxds.api.objects import WasmPlugin
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module, Ready
from wasmxds.reconcile import Reconciler, Serving
from wasmxds.reconcile.last_good import LastGoodFile
from wasmxds.reconcile.staging import ROLLOUT_STABLE_FILE, Staging
from wasmxds.rollout import Rollouts
from wasmxds.rollout.state import ROLLOUTS_FILE, RolloutFile
from wasmxds.sources.state import SourceState
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.snapshot import Snapshot

NAME = "default.a"


def staged(tag: str) -> WasmPlugin:
    plugin = version(tag)
    return dataclasses.replace(
        plugin,
        annotations={"rollout.wasmxds.io/steps": "50,100", "rollout.wasmxds.io/interval": "1h"},
    )


class Process:
    """One wasmxds over ``cache``: reconciler, rollouts engine, their files."""

    def __init__(self, cache: Path, module: Module, plugin: WasmPlugin) -> None:
        self.modules = FakeModules()
        self.modules.outcomes[GOOD] = Ready(module)
        self.state = SourceState({plugin.key: plugin})
        self.published: list[Snapshot] = []
        self.rollouts = Rollouts(
            root_namespace="istio-system", saved=RolloutFile.load(cache / ROLLOUTS_FILE)
        )
        self.staging = Staging(self.rollouts, LastGoodFile.load(cache / ROLLOUT_STABLE_FILE))
        self.reconciler = Reconciler(
            sources=[lambda: self.state],
            resolver=self.modules,
            delivery=LocalDelivery(cache, cache),
            runtime="envoy.wasm.runtime.v8",
            publish=collect(self.published),
            root_namespace="istio-system",
            find_module=ModuleStore(cache).get,
            staging=self.staging,
        )

    def config_for(self, node: NodeInfo) -> str:
        resource = self.published[-1].ecds_for(node, NAME)
        assert resource is not None
        return str(resource.message)

    async def stop(self) -> None:
        await self.rollouts.flush()


def nodes() -> tuple[NodeInfo, NodeInfo]:
    inside = next(n for i in range(999) if (n := make_node(f"n{i}")).cohort < 50)
    outside = next(n for i in range(999) if (n := make_node(f"n{i}")).cohort >= 50)
    return inside, outside


async def test_restart_mid_rollout_keeps_the_old_version_for_the_rest(tmp_path: Path):
    """After a restart mid-rollout the proxies outside the step still get the old version."""
    module = await store_module(tmp_path)
    inside, outside = nodes()
    first = Process(tmp_path, module, staged("v1"))
    await first.reconciler.reconcile()
    first.state = SourceState({staged("v2").key: staged("v2")})
    await first.reconciler.reconcile()
    assert "v2" in first.config_for(inside)
    assert "v1" in first.config_for(outside)
    assert first.reconciler.kept_modules() >= {module.digest}
    await first.stop()
    assert (tmp_path / ROLLOUT_STABLE_FILE).exists()

    second = Process(tmp_path, module, staged("v2"))
    await second.reconciler.reconcile()
    assert "v2" in second.config_for(inside)
    assert "v1" in second.config_for(outside), "the restart sent the new version to everyone"
    assert second.rollouts.view("default/a")["phase"] == "Progressing"


async def test_rolled_back_plugin_serves_the_old_version_and_says_so(tmp_path: Path):
    """After a rollback every proxy gets the old version; the status says last good."""
    module = await store_module(tmp_path)
    inside, outside = nodes()
    process = Process(tmp_path, module, staged("v1"))
    await process.reconciler.reconcile()
    process.state = SourceState({staged("v2").key: staged("v2")})
    await process.reconciler.reconcile()
    process.rollouts.abort("default/a")
    await process.reconciler.reconcile()
    assert "v1" in process.config_for(inside)
    assert "v1" in process.config_for(outside)
    entry = process.reconciler.status[staged("v2").key]
    assert entry.serving is Serving.LAST_GOOD
    assert entry.served is not None
    assert "v1" in str(entry.served.config)
