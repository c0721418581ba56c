"""Simulated Envoy nodes: many ADS streams over real gRPC, behaving like Envoy's xDS client.

Each node opens an ADS stream (SotW ``StreamAggregatedResources`` or delta
``DeltaAggregatedResources``), subscribes to ECDS names (and optionally to every
listener, LDS wildcard), and ACKs every response the way Envoy does:

- the node (id, cluster, metadata NAMESPACE and LABELS) goes on the first
  request of a stream only (Envoy's ``set_node_on_first_message_only``, which
  Istio sets; ``--node-on-every-request`` sends it on every request instead);
- a SotW ACK repeats the subscription with the response's ``version_info`` and
  ``nonce``; a delta ACK carries ``response_nonce``;
- after a reconnect, SotW requests carry the last accepted ``version_info`` per
  type and delta requests carry ``initial_resource_versions``, so a server can
  skip resending what the node holds;
- a lost stream is retried with Envoy's jittered exponential backoff (base
  500 ms, max 30 s: each delay is uniform in [0, interval), the interval
  doubles per failure and resets when a stream delivers a message).

Nodes record when each *mark* arrived and was ACKed. A mark is the text
``wxbmark-<n>`` that the benchmark puts in a plugin's configuration (it ends up
verbatim in the serialized resource), so "change n reached every node" is
measurable with the same client against any server, without knowing how that
server computes versions.

Run many nodes per process with asyncio; split a fleet over several processes
with ``worker`` mode (the runner in :mod:`benchmarks.run` drives workers over
stdin/stdout, one JSON object per line). Standalone::

    python -m benchmarks.loadgen --target 127.0.0.1:18000 --nodes 1000 --names default.a
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

__all__ = [
    "ECDS_TYPE",
    "LDS_TYPE",
    "Backoff",
    "FleetConfig",
    "LoadGen",
    "NodeSpec",
    "SimNode",
    "mark_text",
]

ECDS_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
LDS_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = _ADS + "StreamAggregatedResources"
DELTA_METHOD = _ADS + "DeltaAggregatedResources"

_MARK_PREFIX = "wxbmark-"
# Searching the raw response bytes is cheaper than unpacking every resource, and
# works whatever wraps the configuration (Wasm filter, Any, StringValue).
_MARK_RE = re.compile(rb"wxbmark-(\d+)")

# One HTTP/2 connection per channel: gRPC shares subchannels between channels
# with equal arguments unless each has its own pool, which would put a whole
# simulated fleet on one connection.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", -1),  # Envoy's envoy_grpc default: unlimited
    ("grpc.enable_retries", 0),
]


def mark_text(n: int) -> str:
    """The text a configuration carries so nodes can tell change ``n`` arrived."""
    return f"{_MARK_PREFIX}{n}"


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _raw(data: bytes) -> bytes:
    return data


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """Who a simulated proxy is and what it subscribes to."""

    id: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    ecds_names: tuple[str, ...]
    lds_wildcard: bool = False

    def node_proto(self) -> Any:
        metadata = struct_pb2.Struct()
        metadata.update({"NAMESPACE": self.namespace, "LABELS": dict(self.labels)})
        return base_pb2.Node(id=self.id, cluster="bench", metadata=metadata)

    @property
    def type_urls(self) -> tuple[str, ...]:
        # Envoy asks for listeners first; ECDS names come from the listeners' filters.
        return ((LDS_TYPE,) if self.lds_wildcard else ()) + (
            (ECDS_TYPE,) if self.ecds_names else ()
        )

    def names(self, type_url: str) -> tuple[str, ...]:
        return self.ecds_names if type_url == ECDS_TYPE else ()


def class_labels(index: int) -> tuple[tuple[str, str], ...]:
    """Labels of label class ``index``: distinct per class, ``group`` shared by every tenth."""
    return (("app", f"app-{index}"), ("group", f"g{index % 10}"))


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A fleet of nodes, cheap to send to worker processes (nodes are derived, not listed)."""

    nodes: int
    namespaces: tuple[str, ...] = ("bench",)
    label_classes: int = 1
    ecds_names: tuple[str, ...] = ()
    lds_wildcard: bool = False
    id_prefix: str = "node"

    def spec(self, index: int) -> NodeSpec:
        return NodeSpec(
            id=f"{self.id_prefix}-{index}",
            namespace=self.namespaces[index % len(self.namespaces)],
            labels=class_labels(index % self.label_classes),
            ecds_names=self.ecds_names,
            lds_wildcard=self.lds_wildcard,
        )

    def part(self, part: int, parts: int) -> list[NodeSpec]:
        """Every ``parts``-th node starting at ``part``: workers split a fleet evenly."""
        return [self.spec(i) for i in range(part, self.nodes, parts)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetConfig:
        return cls(
            nodes=int(data["nodes"]),
            namespaces=tuple(data["namespaces"]),
            label_classes=int(data["label_classes"]),
            ecds_names=tuple(data["ecds_names"]),
            lds_wildcard=bool(data["lds_wildcard"]),
            id_prefix=str(data["id_prefix"]),
        )


@dataclass(slots=True)
class Backoff:
    """Envoy's JitteredExponentialBackOffStrategy (source/common/common/backoff_strategy.cc)."""

    base: float = 0.5
    max: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    _interval: float = 0.0

    def next(self) -> float:
        interval = self._interval or self.base
        self._interval = self.max if interval > self.max / 2 else interval * 2
        return min(self.rng.random() * interval, self.max)

    def reset(self) -> None:
        self._interval = 0.0


class Connection:
    """A channel (one HTTP/2 connection) shared by one or more nodes' streams."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel: grpc.aio.Channel | None = None

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        return self._channel

    async def close(self) -> None:
        """Drop the connection; streams on it end, and the next stream makes a new one."""
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


@dataclass(slots=True)
class Counters:
    """Fleet-wide tallies a worker keeps as events happen, so status queries are O(1)."""

    open: int = 0
    synced: int = 0
    marks: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    attempts: int = 0


class SimNode:
    """One simulated Envoy: an ADS stream with reconnects, and what it received when."""

    def __init__(
        self,
        spec: NodeSpec,
        connection: Connection,
        counters: Counters,
        *,
        delta: bool = False,
        backoff: Backoff | None = None,
        node_on_every_request: bool = False,
    ) -> None:
        self.spec = spec
        self.delta = delta
        self._connection = connection
        self._counters = counters
        self._node = spec.node_proto()
        self._every = node_on_every_request
        self._backoff = backoff or Backoff()
        self.sotw_versions: dict[str, str] = {}
        """SotW: per type, the version_info of the last response accepted."""
        self.held: dict[str, dict[str, str]] = {t: {} for t in spec.type_urls}
        """Delta: per type, name → version of what the node holds."""
        self.marks: dict[int, tuple[float, float]] = {}
        """Mark → (received, ACK sent), wall clock, first time seen."""
        self.started_at = 0.0
        self.synced_at: float | None = None
        """When the first stream had every subscribed type answered and ACKed."""
        self.responses = 0
        self.is_open = False
        self.kills = 0
        self._delivered = False
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self.started_at = time.time()
        self._task = asyncio.create_task(self._run(), name=f"node.{self.spec.id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _set_open(self, value: bool) -> None:
        if value != self.is_open:
            self.is_open = value
            self._counters.open += 1 if value else -1

    async def _run(self) -> None:
        while True:
            kills = self.kills
            self._counters.attempts += 1
            self._delivered = False
            # The stream runs in its own task so that its end (an RPC error, or the
            # cancellation a deliberate kill causes) is observed, never propagated.
            stream = asyncio.create_task(self._stream(self._connection.channel()))
            try:
                await asyncio.wait((stream,))
            finally:
                stream.cancel()
            self._set_open(False)
            if self.kills == kills:
                self._counters.failures[_failure(stream)] += 1
            if self._delivered:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next())

    # -- one stream -------------------------------------------------------

    def _first_requests(self) -> list[Any]:
        requests: list[Any] = []
        for type_url in self.spec.type_urls:
            names = self.spec.names(type_url)
            if self.delta:
                request = discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url,
                    resource_names_subscribe=names,
                    initial_resource_versions=self.held.get(type_url, {}),
                )
            else:
                request = discovery_pb2.DiscoveryRequest(
                    type_url=type_url,
                    resource_names=names,
                    version_info=self.sotw_versions.get(type_url, ""),
                )
            if not requests or self._every:
                request.node.CopyFrom(self._node)
            requests.append(request)
        return requests

    async def _stream(self, channel: grpc.aio.Channel) -> None:
        method = DELTA_METHOD if self.delta else SOTW_METHOD
        call = channel.stream_stream(
            method, request_serializer=_serialize, response_deserializer=_raw
        )()
        for request in self._first_requests():
            await call.write(request)
        self._set_open(True)
        answered: set[str] = set()
        wanted = set(self.spec.type_urls)
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                return
            received = time.time()
            assert isinstance(raw, bytes)
            self._delivered = True
            self.responses += 1
            type_url = await (
                self._ack_delta(call, raw) if self.delta else self._ack_sotw(call, raw)
            )
            acked = time.time()
            for match in _MARK_RE.findall(raw):
                mark = int(match)
                if mark not in self.marks:
                    self.marks[mark] = (received, acked)
                    self._counters.marks[mark] += 1
            answered.add(type_url)
            if self.synced_at is None and answered >= wanted:
                self.synced_at = acked
                self._counters.synced += 1

    async def _ack_sotw(self, call: Any, raw: bytes) -> str:
        response = discovery_pb2.DiscoveryResponse.FromString(raw)
        type_url: str = response.type_url
        ack = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=response.version_info,
            resource_names=self.spec.names(type_url),
            response_nonce=response.nonce,
        )
        if self._every:
            ack.node.CopyFrom(self._node)
        await call.write(ack)
        self.sotw_versions[type_url] = response.version_info
        return type_url

    async def _ack_delta(self, call: Any, raw: bytes) -> str:
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        type_url: str = response.type_url
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        if self._every:
            ack.node.CopyFrom(self._node)
        await call.write(ack)
        held = self.held.setdefault(type_url, {})
        for resource in response.resources:
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)
        return type_url


def _failure(stream: asyncio.Task[None]) -> str:
    if stream.cancelled():
        return "CANCELLED"
    error = stream.exception()
    if error is None:
        return "EOF"  # the server ended the stream
    if isinstance(error, grpc.aio.AioRpcError):
        return str(error.code().name)
    return type(error).__name__


class LoadGen:
    """A fleet (or a worker's part of one) in this process."""

    def __init__(
        self,
        target: str,
        specs: Sequence[NodeSpec],
        *,
        delta: bool = False,
        streams_per_connection: int = 1,
        node_on_every_request: bool = False,
        seed: int = 0,
    ) -> None:
        self.counters = Counters()
        per = max(1, streams_per_connection)
        self.connections = [Connection(target) for _ in range((len(specs) + per - 1) // per)]
        rng = random.Random(seed)
        self.nodes = [
            SimNode(
                spec,
                self.connections[i // per],
                self.counters,
                delta=delta,
                backoff=Backoff(rng=random.Random(rng.random())),
                node_on_every_request=node_on_every_request,
            )
            for i, spec in enumerate(specs)
        ]

    async def ramp(self, per_second: float, start_at: float | None = None) -> None:
        """Start every node, ``per_second`` at a time (a burst of thousands at once fails)."""
        start = start_at if start_at is not None else time.time()
        await asyncio.sleep(max(0.0, start - time.time()))
        for i, node in enumerate(self.nodes):
            due = start + i / per_second if per_second > 0 else start
            delay = due - time.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            node.start()

    async def kill(self) -> float:
        """Drop every connection at once; nodes reconnect with backoff. Returns the wall clock."""
        at = time.time()
        for node in self.nodes:
            node.kills += 1
        await asyncio.gather(*(c.close() for c in self.connections))
        return at

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))
        await asyncio.gather(*(c.close() for c in self.connections))

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "nodes": len(self.nodes),
            "open": c.open,
            "synced": c.synced,
            "attempts": c.attempts,
            "failures": dict(c.failures),
            "marks": {str(k): v for k, v in c.marks.items()},
        }

    def sync_times(self) -> dict[str, Any]:
        """Per synced node: (started, synced) wall clock."""
        return {
            "times": [(n.started_at, n.synced_at) for n in self.nodes if n.synced_at is not None],
            "missing": sum(1 for n in self.nodes if n.synced_at is None),
        }

    def mark_times(self, mark: int) -> dict[str, Any]:
        """Per node that has ``mark``: (received, ACK sent), wall clock."""
        times = [n.marks[mark] for n in self.nodes if mark in n.marks]
        return {"times": times, "missing": len(self.nodes) - len(times)}


# -- worker mode: driven by benchmarks.run over stdin/stdout ---------------


async def _stdin_lines() -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=1 << 24)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _reply(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def worker() -> None:
    """Answer one command per line until ``stop`` or end of input."""
    reader = await _stdin_lines()
    gen: LoadGen | None = None
    background: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        command = json.loads(line)
        op = command["op"]
        if op == "start":
            fleet = FleetConfig.from_json(command["fleet"])
            gen = LoadGen(
                command["target"],
                fleet.part(command["part"], command["parts"]),
                delta=command.get("delta", False),
                streams_per_connection=command.get("streams_per_connection", 1),
                node_on_every_request=command.get("node_on_every_request", False),
                seed=command["part"],
            )
            task = asyncio.create_task(gen.ramp(command["ramp_per_s"], command.get("start_at")))
            background.add(task)
            task.add_done_callback(background.discard)
            _reply({"ok": True, "nodes": len(gen.nodes)})
        elif gen is None:
            _reply({"error": f"{op}: no fleet started"})
        elif op == "status":
            _reply(gen.status())
        elif op == "sync_times":
            _reply(gen.sync_times())
        elif op == "mark_times":
            _reply(gen.mark_times(int(command["mark"])))
        elif op == "kill":
            _reply({"at": await gen.kill()})
        elif op == "stop":
            break
        else:
            _reply({"error": f"unknown op {op!r}"})
    if gen is not None:
        await gen.stop()
    _reply({"stopped": True})


# -- standalone -------------------------------------------------------------


async def _standalone(args: argparse.Namespace) -> None:
    fleet = FleetConfig(
        nodes=args.nodes,
        namespaces=tuple(args.namespace or ["bench"]),
        label_classes=args.label_classes,
        ecds_names=tuple(args.names),
        lds_wildcard=args.lds,
    )
    gen = LoadGen(
        args.target,
        fleet.part(0, 1),
        delta=args.delta,
        streams_per_connection=args.streams_per_connection,
        node_on_every_request=args.node_on_every_request,
    )
    started = time.time()
    ramp = asyncio.create_task(gen.ramp(args.ramp))
    deadline = started + args.duration
    try:
        while time.time() < deadline:
            await asyncio.sleep(1.0)
            status = gen.status()
            print(f"{time.time() - started:6.1f}s {json.dumps(status)}", flush=True)
    finally:
        ramp.cancel()
        await gen.stop()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=["worker"], help="be a worker driven over stdin")
    parser.add_argument("--target", default="127.0.0.1:18000")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--namespace", action="append", help="node namespaces (repeatable)")
    parser.add_argument("--label-classes", type=int, default=1)
    parser.add_argument(
        "--names", nargs="*", default=[], help="ECDS names every node subscribes to"
    )
    parser.add_argument("--lds", action="store_true", help="also subscribe to every listener")
    parser.add_argument("--delta", action="store_true", help="delta ADS instead of SotW")
    parser.add_argument("--streams-per-connection", type=int, default=1)
    parser.add_argument("--node-on-every-request", action="store_true")
    parser.add_argument("--ramp", type=float, default=1000.0, help="new streams per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to run")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(None if argv is None else list(argv))
    if args.mode == "worker":
        asyncio.run(worker())
    else:
        asyncio.run(_standalone(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
