"""A fleet of protocol-level proxies around a Rollouts engine, without sockets.

Each pass plans like reconcile does, builds the snapshot the way translate
does, and lets every proxy fetch and answer what is due (ACK, or NACK when the
proxy is told to reject a version).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from tests.factories import make_node, make_plugin
from tests.xds.helpers import DELIVERY, ROOT, module_for, request
from wasmxds.api.objects import WasmPlugin
from wasmxds.api.rollout import RolloutPolicy, parse_steps
from wasmxds.modules.types import Ready
from wasmxds.rollout.engine import Rollouts
from wasmxds.translate.plugins import PluginResources, plugin_resources
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS


def staged_plugin(
    name: str = "p", *, steps: str = "25,50,100", interval: str = "10s", **spec: Any
) -> WasmPlugin:
    plugin = make_plugin(name, **spec)
    annotations = {"rollout.wasmxds.io/steps": steps, "rollout.wasmxds.io/interval": interval}
    return dataclasses.replace(plugin, annotations=annotations)


def resources(plugin: WasmPlugin) -> PluginResources:
    return plugin_resources(
        plugin, Ready(module_for(plugin)), DELIVERY, runtime="envoy.wasm.runtime.v8"
    )


class Proxy:
    """One SotW stream subscribed to some ECDS names; remembers every version it was sent."""

    def __init__(self, node: NodeInfo, names: Iterable[str]) -> None:
        self.node = node
        self.protocol = SotwStream(node)
        self.names = tuple(names)
        self.received: dict[str, list[str]] = {}
        self.reject: set[str] = set()
        """Versions this proxy NACKs."""
        self.nacked: list[tuple[str, str]] = []

    def ecds_names(self) -> frozenset[str]:
        state = self.protocol.types.get(ECDS)
        return frozenset(state.names) if state is not None else frozenset()

    def accepted(self, type_url: str, name: str) -> str | None:
        return self.protocol.accepted_version(type_url, name)

    def holds(self, name: str) -> str | None:
        return self.accepted(ECDS, name)

    def sync(self, snapshot: Snapshot) -> list[tuple[str, str]]:
        """Fetch and answer until nothing is due; returns what it NACKed this time."""
        if ECDS not in self.protocol.types:
            self.protocol.handle(request(*self.names))
        nacked: list[tuple[str, str]] = []
        while True:
            payload = self.protocol.next_response(ECDS, snapshot)
            if payload is None:
                return nacked
            response = discovery_pb2.DiscoveryResponse.FromString(payload)
            state = self.protocol.types[ECDS]
            sent = [(r.name, r.version) for r in state.in_flight_resources]
            for name, version in sent:
                self.received.setdefault(name, []).append(version)
            bad = [pair for pair in sent if pair[1] in self.reject]
            error = "rejected" if bad else None
            self.protocol.handle(
                request(
                    *self.names, nonce=response.nonce, version=response.version_info, error=error
                )
            )
            nacked.extend(sent if bad else [])


class Fleet:
    """Proxies, an engine with a hand-driven clock, and the passes that connect them."""

    def __init__(
        self,
        count: int = 40,
        *,
        names: Iterable[str] = ("default.p",),
        health: Any = None,
        **engine: Any,
    ) -> None:
        self.now = 1000.0
        self.changes = 0
        self.proxies = [Proxy(make_node(f"proxy-{i}"), names) for i in range(count)]
        self.engine = Rollouts(
            root_namespace=ROOT,
            sessions=lambda: self.proxies,
            changed=self._changed,
            health=health,
            clock=lambda: self.now,
            wall=lambda: self.now + 1.7e9,
            **engine,
        )
        self.snapshot = Snapshot.empty(ROOT)

    def _changed(self) -> None:
        self.changes += 1

    def push(self, *plugins: WasmPlugin) -> Snapshot:
        """One reconcile pass: plan, build, and let every proxy sync (NACKs reach the engine)."""
        served = {p.resource_name: resources(p) for p in plugins}
        modules = {p.resource_name: module_for(p) for p in plugins}
        plan = self.engine.plan(served, modules)
        self.snapshot = build_snapshot(
            plan.served.values(), pending=(), previous=self.snapshot, staged=plan.staged
        )
        for proxy in self.proxies:
            for name, version in proxy.sync(self.snapshot):
                self.engine.on_rejected(proxy.node, ECDS, [(name, version)], "bad config")
        return self.snapshot

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.engine.evaluate()

    def holding(self, name: str, version: str) -> list[Proxy]:
        return [p for p in self.proxies if p.holds(name) == version]


def default_policy(steps: str = "100", interval: float = 0.0) -> RolloutPolicy:
    return RolloutPolicy(parse_steps(steps), interval)
