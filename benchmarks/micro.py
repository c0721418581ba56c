"""Per-stream work wasmxds does besides gRPC, measured without sockets (µs per stream).

    python -m benchmarks.micro [--nodes 10000] [--case basic|classes] [--delta]

Drives the real protocol objects (:class:`~wasmxds.xds.sotw.SotwStream`,
:class:`~wasmxds.xds.delta.DeltaStream`) over a real snapshot built from the
same WasmPlugin YAML the end-to-end benchmark serves, the way
:class:`~wasmxds.xds.server.XdsServer` drives them per stream: the first
request, the first response, its ACK; then a change: the response of the push
and its ACK. Also times the server's other per-stream steps (metrics, the
connect log line, reading the node), so the end-to-end gap to the floor can be
attributed. Prints figures only.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog
from envoy.service.discovery.v3 import discovery_pb2

from benchmarks.loadgen import ECDS_TYPE, FleetConfig
from benchmarks.run import CASES, NAMESPACE, Case
from wasmxds.api.parse import parse_text
from wasmxds.metrics import Metrics, StreamMetrics
from wasmxds.modules.types import LocalFile, Ready
from wasmxds.translate.plugins import LocalDelivery, plugin_resources
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.node import NodeInfo, node_info_from_proto
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream

__all__ = ["ack_for", "main", "snapshot_for"]

# file:// modules are passed through; the delivery is never asked for a path.
_DELIVERY = LocalDelivery(Path("/cache"), Path("/cache"))


def snapshot_for(case: Case, mark: int, pad: int, previous: Snapshot | None) -> Snapshot:
    """The snapshot wasmxds builds from the benchmark's YAML (file:// modules: no fetch)."""
    resources = []
    for plugin_index in range(case.plugins):
        text = case.plugin_yaml(plugin_index, mark if plugin_index == 0 else 0, pad)
        parsed = parse_text(text, f"plugin-{plugin_index}.yaml")
        for plugin in parsed.plugins:
            outcome = Ready(LocalFile(plugin.spec.url.removeprefix("file://")))
            resources.append(
                plugin_resources(plugin, outcome, _DELIVERY, runtime="envoy.wasm.runtime.v8")
            )
    return build_snapshot(
        resources, pending=(), previous=previous or Snapshot.empty("istio-system")
    )


def _timed(label: str, count: int, run: Callable[[], None], rows: list[tuple[str, float]]) -> None:
    started = time.perf_counter()
    run()
    rows.append((label, (time.perf_counter() - started) / count * 1e6))


def measure(nodes: int, case: Case, delta: bool, pad: int) -> list[tuple[str, float]]:
    fleet = FleetConfig(
        nodes=nodes,
        namespaces=(NAMESPACE,),
        label_classes=case.label_classes,
        ecds_names=case.names,
    )
    specs = fleet.part(0, 1)
    protos = [spec.node_proto() for spec in specs]
    infos: list[NodeInfo] = []
    rows: list[tuple[str, float]] = []
    _timed(
        "read the node (node_info_from_proto)",
        nodes,
        lambda: infos.extend(node_info_from_proto(p) for p in protos),
        rows,
    )

    first_snapshot = snapshot_for(case, 0, pad, None)
    second_snapshot = snapshot_for(case, 1, pad, first_snapshot)
    streams: list[Any] = [
        DeltaStream(info, control_plane=b"") if delta else SotwStream(info, control_plane=b"")
        for info in infos
    ]

    def subscribe() -> Any:
        if delta:
            return discovery_pb2.DeltaDiscoveryRequest(
                type_url=ECDS_TYPE, resource_names_subscribe=case.names
            )
        return discovery_pb2.DiscoveryRequest(type_url=ECDS_TYPE, resource_names=case.names)

    requests = [subscribe() for _ in streams]
    _timed(
        "handle(first request)",
        nodes,
        lambda: _each(streams, requests),
        rows,
    )
    payloads: list[list[tuple[str, bytes]]] = []
    _timed(
        "responses() initial",
        nodes,
        lambda: payloads.extend(s.responses(first_snapshot) for s in streams),
        rows,
    )
    acks = [ack_for(delta, p[0][1], case.names) for p in payloads]
    _timed(
        "handle(ACK)",
        nodes,
        lambda: _each(streams, acks),
        rows,
    )
    payloads = []
    _timed(
        "responses() push",
        nodes,
        lambda: payloads.extend(s.responses(second_snapshot) for s in streams),
        rows,
    )
    acks = [ack_for(delta, p[0][1], case.names) for p in payloads if p]
    _timed(
        "handle(ACK) of the push",
        nodes,
        lambda: _each(streams, acks),
        rows,
    )
    rows.append(("  (push payload bytes)", float(len(payloads[0][0][1])) if payloads[0] else 0.0))
    # After the ACK the server asks settled() and leaves the writer asleep; it
    # used to wake it, and the writer recomputed an empty response.
    _timed("settled() after the ACK", nodes, lambda: _settled(streams, second_snapshot), rows)
    _timed(
        "  vs. responses() after the ACK (recomputed)",
        nodes,
        lambda: _recompute(streams, second_snapshot),
        rows,
    )

    # The server's calls per push and its ACK, through the same adapter.
    events = StreamMetrics(Metrics())

    def metric_calls() -> None:
        for _ in range(nodes):
            events.on_push(ECDS_TYPE, "sotw", 0.01)
            events.on_ack(ECDS_TYPE, 0.01)

    _timed("metrics per push (on_push, on_ack)", nodes, metric_calls, rows)

    sink = io.StringIO()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sink),
    )
    log = structlog.get_logger("bench")

    def log_lines() -> None:
        for info in infos:
            log.info(
                "xds.connected",
                node=info.id,
                namespace=info.namespace,
                peer="ipv4:x",
                flavour="sotw",
                service="ads",
            )

    _timed("connect log line (json)", nodes, log_lines, rows)
    return rows


def _settled(streams: Sequence[Any], snapshot: Snapshot) -> None:
    for stream in streams:
        stream.settled(snapshot)


def _recompute(streams: Sequence[Any], snapshot: Snapshot) -> None:
    for stream in streams:
        for state in stream.types.values():
            state.settled_on = None
        stream.responses(snapshot)


def _each(streams: Sequence[Any], requests: Sequence[Any]) -> None:
    for stream, request in zip(streams, requests, strict=True):
        stream.handle(request)


def ack_for(delta: bool, payload: bytes, names: Sequence[str]) -> Any:
    """The request an Envoy sends to accept ``payload`` (a serialized response)."""
    if delta:
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(payload)
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
    response = discovery_pb2.DiscoveryResponse.FromString(payload)
    return discovery_pb2.DiscoveryRequest(
        type_url=response.type_url,
        version_info=response.version_info,
        resource_names=names,
        response_nonce=response.nonce,
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--case", choices=sorted(CASES), default="basic")
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--pad", type=int, default=256)
    args = parser.parse_args(None if argv is None else list(argv))
    rows = measure(args.nodes, CASES[args.case], args.delta, args.pad)
    flavour = "delta" if args.delta else "sotw"
    print(f"per stream, {args.nodes} streams, case {args.case}, {flavour}:")
    for label, value in rows:
        print(f"  {label:42} {value:9.1f}" + ("" if label.startswith("  (") else " µs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
