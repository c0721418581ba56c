"""What the metrics service costs: decoding Envoy's stats flushes, streams on loopback, memory.

    python -m benchmarks.health [--clusters 10,100,1000] [--streams 200] [--idle 1000]

1. **Decode**: a flush shaped like Envoy's (per cluster ~40 counters and ~15
   gauges, plus listener, HTTP and Wasm stats) reduced to health figures by a
   full decode, and by the scan the servicer uses; per message and per family.
2. **Streams**: ``--streams`` client streams on loopback each send flushes to
   the real :class:`~wasmxds.health.metrics_service.MetricsService` on an
   :class:`~wasmxds.xds.server.XdsServer`; messages and families per second the
   server takes (the clients share the process and its one core: a lower bound).
3. **Memory**: ``--idle`` open streams after their first flush; Python heap
   (tracemalloc) and RSS growth per stream, client side included (an upper bound).

Prints figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2

from wasmxds.health.counters import read_report, scan_families
from wasmxds.health.metrics_service import MetricsService
from wasmxds.health.verdict import FleetHealth
from wasmxds.health.wire import COUNTER, GAUGE, METHOD, SERVICE, StreamMetricsMessage
from wasmxds.settings import HostPort
from wasmxds.xds.server import XdsServer

__all__ = ["envoy_flush", "main"]

_CLUSTER_COUNTERS = 40
_CLUSTER_GAUGES = 15


def envoy_flush(clusters: int, node_id: str | None = None) -> bytes:
    """A stats flush of an Envoy with ``clusters`` clusters, one listener and one Wasm plugin."""
    message: Any = StreamMetricsMessage()
    if node_id is not None:
        message.identifier.node = base_pb2.Node(id=node_id).SerializeToString()

    def add(name: str, kind: int, value: float) -> None:
        family = message.envoy_metrics.add(name=name, type=kind)
        metric = family.metric.add()
        (metric.counter if kind == COUNTER else metric.gauge).value = value

    for c in range(clusters):
        for i in range(_CLUSTER_COUNTERS):
            add(f"cluster.service_{c}.upstream_stat_{i}", COUNTER, i % 3)
        for i in range(_CLUSTER_GAUGES):
            add(f"cluster.service_{c}.gauge_{i}", GAUGE, i)
    for name in ("downstream_rq_completed", "downstream_rq_5xx", "downstream_rq_2xx"):
        add(f"http.ingress.{name}", COUNTER, 10)
        add(f"listener.0.0.0.0_10000.http.ingress.{name}", COUNTER, 10)
    add("wasm.default.auth.vm_reload_backoff", COUNTER, 0)
    add("wasm.envoy.wasm.runtime.v8.active", GAUGE, 2)
    data: bytes = message.SerializeToString()
    return data


def _decode(clusters: int) -> None:
    data = envoy_flush(clusters)
    families = len(StreamMetricsMessage.FromString(data).envoy_metrics)
    rounds = max(10, 10_000 // clusters)
    for how, families_of in (
        ("full decode", lambda raw: StreamMetricsMessage.FromString(raw).envoy_metrics),
        ("scan (served)", scan_families),
    ):
        start = time.perf_counter()
        for _ in range(rounds):
            _, samples = read_report(families_of(data))
        per = (time.perf_counter() - start) / rounds
        print(
            f"decode  {how:13s} clusters={clusters:5d} bytes={len(data):8d} families={families:6d}"
            f"  {per * 1e6:8.1f} µs/message  {families / per / 1e6:6.2f} M families/s"
            f"  health samples kept={samples}"
        )


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[tuple[XdsServer, MetricsService]]:
    xds = XdsServer(address=HostPort("127.0.0.1", 0), root_namespace="istio-system", grace=0.2)
    service = MetricsService(FleetHealth(), xds_identities=xds.node_identities)
    xds.add_service(service.handlers())
    started = asyncio.Event()
    task = asyncio.create_task(xds.run(started))
    await started.wait()
    try:
        yield xds, service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _streams(streams: int, clusters: int, per_stream: int) -> None:
    flush = envoy_flush(clusters)
    families = len(StreamMetricsMessage.FromString(flush).envoy_metrics)
    async with _served() as (xds, service):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}")
        method: Any = channel.stream_unary(
            f"/{SERVICE}/{METHOD}", request_serializer=None, response_deserializer=None
        )

        async def one(index: int) -> None:
            async def messages() -> AsyncIterator[bytes]:
                yield envoy_flush(0, f"proxy-{index}")
                for _ in range(per_stream):
                    yield flush

            await method(messages())

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(streams)))
        took = time.perf_counter() - start
        await channel.close()
        sent = streams * per_stream
        print(
            f"streams {streams} streams x {per_stream} flushes of {families} families:"
            f" {sent / took:8.0f} messages/s  {sent * families / took / 1e6:5.2f} M families/s"
            f"  (nodes kept: {len(service.health)})"
        )


def _rss_bytes() -> int:
    """The resident set now (Linux /proc), not the peak getrusage reports."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


async def _idle(count: int) -> None:
    async with _served() as (xds, service):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds.port}")
        method: Any = channel.stream_unary(
            f"/{SERVICE}/{METHOD}", request_serializer=None, response_deserializer=None
        )
        release = asyncio.Event()

        async def messages(index: int) -> AsyncIterator[bytes]:
            yield envoy_flush(1, f"idle-{index}")
            await release.wait()

        rss = _rss_bytes()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        calls = [method(messages(i)) for i in range(count)]
        async with asyncio.timeout(60):
            # Poll: the service has no event for "N streams open", nor needs one.
            for _ in iter(int, 1):
                if service.open_streams >= count and len(service.health) >= count:
                    break
                await asyncio.sleep(0.05)
        heap = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        grown = _rss_bytes() - rss
        print(
            f"memory  {count} open metrics streams: {heap / count / 1024:6.1f} KiB Python heap"
            f" and {grown / count / 1024:6.1f} KiB RSS per stream (client and server together)"
        )
        release.set()
        await asyncio.gather(*calls)
        await channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.health", description=__doc__)
    parser.add_argument("--clusters", default="10,100,1000")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--flushes", type=int, default=20, help="per stream")
    parser.add_argument("--idle", type=int, default=1000)
    args = parser.parse_args(argv)
    for clusters in (int(c) for c in args.clusters.split(",")):
        _decode(clusters)
    asyncio.run(_streams(args.streams, 100, args.flushes))
    asyncio.run(_idle(args.idle))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
