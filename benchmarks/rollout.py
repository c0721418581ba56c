"""What staging a change costs at fleet scale, measured without sockets.

    python -m benchmarks.rollout [--nodes 10000] [--classes 10] [--plugins 10]

Drives real SotW protocol objects over real snapshots, the way the xDS server
does, for one change of one plugin pushed to every stream: once everywhere at
once (no staging), once as the first 25% step of a staged rollout. Then times
one evaluation of the rollout engine (counting ACKs over every stream: what it
does every tick while a rollout runs). Prints figures only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import structlog
from envoy.service.discovery.v3 import discovery_pb2

from wasmxds.api.objects import ObjectKey, Origin, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.types import Module, Ready
from wasmxds.rollout.engine import Rollouts
from wasmxds.translate.plugins import LocalDelivery, PluginResources, plugin_resources
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.xds.node import NodeInfo
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.types import ECDS

__all__ = ["main", "measure"]

_ROOT = "istio-system"
_DELIVERY = LocalDelivery(Path("/cache"), Path("/cache"))


def _plugin(index: int, version: int, staged: bool) -> WasmPlugin:
    spec = wasm_pb2.WasmPlugin(url=f"http://modules.example/p{index}.wasm")
    spec.plugin_config.update({"version": version})
    annotations = (
        {"rollout.wasmxds.io/steps": "25,50,100", "rollout.wasmxds.io/interval": "60s"}
        if staged and index == 0
        else {}
    )
    return WasmPlugin(
        key=ObjectKey("default", f"p{index}"),
        spec=spec,
        labels={},
        annotations=annotations,
        resource_version="",
        generation=version,
        creation_timestamp="",
        origin=Origin(f"p{index}.yaml", 1),
        fingerprint=f"p{index}-v{version}",
    )


def _resources(plugins: int, version: int, staged: bool) -> dict[str, PluginResources]:
    out = {}
    for index in range(plugins):
        plugin = _plugin(index, version if index == 0 else 1, staged)
        digest = f"{index:064x}"
        module = Module(digest=digest, path=Path(f"/cache/modules/sha256/{digest}.wasm"), size=8)
        out[plugin.resource_name] = plugin_resources(
            plugin, Ready(module), _DELIVERY, runtime="envoy.wasm.runtime.v8"
        )
    return out


@dataclasses.dataclass
class _Stream:
    node: NodeInfo
    protocol: SotwStream

    def ecds_names(self) -> frozenset[str]:
        return frozenset(self.protocol.types[ECDS].names)

    def accepted(self, type_url: str, name: str) -> str | None:
        return self.protocol.accepted_version(type_url, name)


def _sync(streams: list[_Stream], snapshot: Snapshot) -> tuple[float, int]:
    """Every stream takes what is due and ACKs it; (seconds, responses sent)."""
    sent = 0
    started = time.perf_counter()
    for stream in streams:
        payload = stream.protocol.next_response(ECDS, snapshot)
        if payload is None:
            continue
        sent += 1
        response = discovery_pb2.DiscoveryResponse.FromString(payload)
        state = stream.protocol.types[ECDS]
        stream.protocol.handle(
            discovery_pb2.DiscoveryRequest(
                type_url=ECDS,
                resource_names=sorted(state.names),
                response_nonce=response.nonce,
                version_info=response.version_info,
            )
        )
    return time.perf_counter() - started, sent


def measure(nodes: int, classes: int, plugins: int, staged: bool) -> dict[str, float]:
    """Push one change of plugin 0 to ``nodes`` streams; figures of that push."""
    engine = Rollouts(root_namespace=_ROOT)
    names = [f"default.p{i}" for i in range(plugins)]
    streams = []
    for index in range(nodes):
        node = NodeInfo(id=f"proxy-{index}", labels={"app": f"app-{index % classes}"})
        protocol = SotwStream(node)
        protocol.handle(discovery_pb2.DiscoveryRequest(type_url=ECDS, resource_names=names))
        streams.append(_Stream(node, protocol))
    engine._sessions = lambda: streams
    first = _resources(plugins, 1, staged)
    plan = engine.plan(first, {})
    snapshot = build_snapshot(plan.served.values(), pending=(), previous=Snapshot.empty(_ROOT))
    _sync(streams, snapshot)
    second = _resources(plugins, 2, staged)
    started = time.perf_counter()
    plan = engine.plan(second, {})
    changed = build_snapshot(
        plan.served.values(), pending=(), previous=snapshot, staged=plan.staged
    )
    build = time.perf_counter() - started
    seconds, sent = _sync(streams, changed)
    started = time.perf_counter()
    engine.evaluate()
    evaluate = time.perf_counter() - started
    return {
        "build_ms": build * 1000,
        "push_us_per_stream": seconds / nodes * 1e6,
        "responses": sent,
        "memos": changed.memoized_positions,
        "evaluate_ms": evaluate * 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--plugins", type=int, default=10)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    for staged in (False, True):
        figures = measure(args.nodes, args.classes, args.plugins, staged)
        label = "staged (step 1: 25%)" if staged else "everywhere at once"
        print(
            f"{label:>22}: {args.nodes} streams, {args.classes} classes:"
            f" build {figures['build_ms']:.1f} ms,"
            f" push {figures['push_us_per_stream']:.1f} µs/stream,"
            f" {figures['responses']:.0f} responses, {figures['memos']:.0f} memos,"
            f" engine evaluation {figures['evaluate_ms']:.1f} ms"
        )


if __name__ == "__main__":
    main()
