"""A push's Python cost per stream above gRPC: wasmxds's server against the floor, no sockets.

    python -m benchmarks.fanout [--nodes 2000] [--case basic|classes] [--pushes 20] [--no-gc]

Drives the real servers' stream handlers (:class:`wasmxds.xds.server.XdsServer`
and :class:`benchmarks.floor.FloorServer`) with in-memory stand-ins for gRPC's
call context: ``read()`` takes requests from a queue, ``write()`` keeps the
payload and yields once to the event loop, as a write that completes at once
would. Each push is measured in process CPU from the publish to the last
stream having written and then from the ACKs being queued to the last one
handled: the writer wake-ups, response assembly, ACK handling, metrics and
event-loop work, without gRPC's serialization and the kernel. Snapshots and
ACKs are built outside the measured time (a real server gets its ACKs from
gRPC, and builds a snapshot once per change, not per stream).

The end-to-end runner (:mod:`benchmarks.run`) shares two cores with its
clients, so one push's CPU moves by ±15 % from run to run; this moves by a few
percent, which is what telling a 2 µs change apart needs. Prints medians
(µs per stream per push) and the spread; timing never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, cast

import structlog
from envoy.service.discovery.v3 import discovery_pb2

from benchmarks.floor import FloorServer
from benchmarks.loadgen import ECDS_TYPE, FleetConfig
from benchmarks.micro import ack_for, snapshot_for
from benchmarks.run import CASES, NAMESPACE, Case
from wasmxds.metrics import Metrics, StreamMetrics
from wasmxds.settings import HostPort
from wasmxds.xds.server import XdsServer

__all__ = ["main", "measure"]


class _Context:
    """What a stream handler uses of grpc.aio's ServicerContext, in memory."""

    def __init__(self, first: Any) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.requests.put_nowait(first)
        self.written = 0
        self.last = b""

    async def read(self) -> Any:
        return await self.requests.get()

    async def write(self, payload: bytes) -> None:
        self.last = payload
        self.written += 1
        await asyncio.sleep(0)  # a write suspends the writer once

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(details)


async def _quiet(contexts: Sequence[_Context], written: int) -> None:
    """Until every stream has written ``written`` responses and read every request."""
    while True:
        await asyncio.sleep(0)
        if all(c.written >= written and c.requests.empty() for c in contexts):
            for _ in range(3):  # the last readers finish handling
                await asyncio.sleep(0)
            return


async def measure(server_name: str, nodes: int, case: Case, pushes: int) -> list[float]:
    """µs of process CPU per stream, one figure per push."""
    fleet = FleetConfig(
        nodes=nodes,
        namespaces=(NAMESPACE,),
        label_classes=case.label_classes,
        ecds_names=case.names,
    )
    contexts = [
        _Context(
            discovery_pb2.DiscoveryRequest(
                node=spec.node_proto(), type_url=ECDS_TYPE, resource_names=case.names
            )
        )
        for spec in fleet.part(0, 1)
    ]
    snapshots = [snapshot_for(case, mark, 256, None) for mark in range(pushes + 1)]
    wasmxds: XdsServer | None = None
    floor: FloorServer | None = None
    handler: Callable[[Any, Any], Coroutine[Any, Any, None]]
    if server_name == "wasmxds":
        wasmxds = XdsServer(
            address=HostPort("127.0.0.1", 0),
            root_namespace="istio-system",
            events=StreamMetrics(Metrics()),
        )
        wasmxds.publish(snapshots[0])
        handler = cast(Any, wasmxds._ads_sotw)  # the stream handler is what is measured
    else:
        floor = FloorServer(names=case.names, pad=256)
        handler = cast(Any, floor._sotw)
    tasks = [asyncio.create_task(handler(None, context)) for context in contexts]
    await _quiet(contexts, 1)
    for context in contexts:
        context.requests.put_nowait(ack_for(False, context.last, case.names))
    await _quiet(contexts, 1)
    gc.collect()
    figures = []
    for push in range(1, pushes + 1):
        started = time.process_time()
        if wasmxds is not None:
            wasmxds.publish(snapshots[push])
        else:
            assert floor is not None
            floor.push(push)
        await _quiet(contexts, push + 1)
        spent = time.process_time() - started
        # The clients' work: outside the measured time.
        acks = [ack_for(False, context.last, case.names) for context in contexts]
        started = time.process_time()
        for context, ack in zip(contexts, acks, strict=True):
            context.requests.put_nowait(ack)
        await _quiet(contexts, push + 1)
        spent += time.process_time() - started
        figures.append(spent / nodes * 1e6)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return figures


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--case", choices=sorted(CASES), default="basic")
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--servers", default="floor,wasmxds")
    parser.add_argument("--no-gc", action="store_true", help="collector off: Python work only")
    args = parser.parse_args(None if argv is None else list(argv))
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.no_gc:
        gc.disable()
    print(f"µs of CPU per stream per push, {args.nodes} streams, case {args.case}:")
    for name in args.servers.split(","):
        figures = asyncio.run(measure(name, args.nodes, CASES[args.case], args.pushes))
        quartiles = statistics.quantiles(figures, n=4) if len(figures) > 1 else figures * 3
        print(
            f"  {name:8} median {statistics.median(figures):6.1f}"
            f"  (quartiles {quartiles[0]:.1f}-{quartiles[2]:.1f}, {len(figures)} pushes)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
