"""Envoy's metrics service (``envoy.service.metrics.v3.MetricsService``), served on the xDS port.

Envoy's ``envoy.stat_sinks.metrics_service`` sink opens one client stream
(``StreamMetrics``) and sends a ``StreamMetricsMessage`` every stats flush: the
first carries ``identifier.node``, each carries ``envoy_metrics`` (Prometheus
``MetricFamily`` messages). Each message is reduced on arrival to a
:class:`~wasmxds.health.report.NodeReport` (:mod:`wasmxds.health.counters`) and
handed to :class:`~wasmxds.health.verdict.FleetHealth`; nothing else of it is
kept.

Bounds, whatever a client sends: a message above ``max_message_bytes`` ends
the stream (``RESOURCE_EXHAUSTED``) before it is parsed; at most
``max_streams`` streams at once and ``max_streams_per_node`` per node id; per
stream only its node id and identity are kept, and per node a few KiB
(:class:`FleetHealth` keeps at most ``max_nodes`` nodes).

**Identity.** With ``--node-identity certificate`` (``identity`` given), a
stream's client certificate must carry a SPIFFE ID, and its samples count only
while the same node id's live ADS/ECDS streams are ALL proven by that same
SPIFFE ID: otherwise a proxy of namespace A could report bad health for B's
proxies and roll B's plugins back (by opening an ADS stream of its own under
B's node id, say). Samples that fail this are dropped and counted
(``no_xds_stream``, ``identity_mismatch``, ``ambiguous_node`` when two identities
hold streams under one node id), not fatal: Envoy's first flush may come before
its ADS stream is up. Figures count for (node id, identity), and verdicts read a
node's figures only while its streams' sole identity is the one that reported
them. With metadata identity, anyone who reaches the xDS port can report health
for any node id. A flush with implausible counters is dropped and counted
(``implausible``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, Protocol

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from google.protobuf.message import DecodeError

from wasmxds.health.counters import read_report, scan_families
from wasmxds.health.verdict import FleetHealth
from wasmxds.health.wire import METHOD, SERVICE, StreamMetricsMessage
from wasmxds.xds.identity import IdentityPolicy, IdentityRefused, RefusalLog, SpiffeId, clip

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_STREAMS",
    "HealthEvents",
    "MetricsService",
]

log = structlog.get_logger(__name__)

_Context = grpc.aio.ServicerContext[bytes, bytes]

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
"""A flush of a proxy with a few hundred clusters is ~1 MiB; larger needs the sink's batch_size."""
DEFAULT_MAX_STREAMS = 20_000
DEFAULT_MAX_STREAMS_PER_NODE = 2
"""One per proxy, and one more while a reconnect overlaps the old stream's end."""
MAX_NODE_ID = 512
"""Istio's node ids (``sidecar~ip~pod.ns~ns.svc.cluster.local``) fit; health keeps each."""


class HealthEvents(Protocol):
    """What the metrics service reports, for whoever counts (``wasmxds.metrics.HealthMetrics``)."""

    def on_metrics_message(self, result: str, reason: str, samples: int) -> None:
        """A message was ``accepted`` (``samples`` read) or ``refused`` for ``reason``."""


class _NoEvents:
    def on_metrics_message(self, result: str, reason: str, samples: int) -> None:
        pass


def _peer_uris(context: _Context) -> list[str]:
    return [v.decode(errors="replace") for v in context.auth_context().get("peer_uri", ())]


class MetricsService:
    """``StreamMetrics``: proxies' stats in, :class:`FleetHealth` figures out."""

    def __init__(
        self,
        health: FleetHealth,
        *,
        xds_identities: Callable[[str], Collection[SpiffeId | None]],
        identity: IdentityPolicy | None = None,
        events: HealthEvents | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_streams_per_node: int = DEFAULT_MAX_STREAMS_PER_NODE,
    ) -> None:
        """``xds_identities(node_id)``: the identities of that node's live xDS streams (read
        only with ``identity``, which turns on the certificate check)."""
        self.health = health
        self._xds_identities = xds_identities
        self._identity = identity
        self._events: HealthEvents = events or _NoEvents()
        self._max_message_bytes = max_message_bytes
        self._max_streams = max_streams
        self._max_streams_per_node = max_streams_per_node
        self._streams: dict[str, int] = {}
        self._open = 0
        self._refusals = RefusalLog("health.metrics_refused")
        if identity is not None:
            health.bind_identities(self._sole_identity)

    def _sole_identity(self, node_id: str) -> str | None:
        """The one identity all of ``node_id``'s live xDS streams carry; None if none or several."""
        live = set(self._xds_identities(node_id))
        if len(live) != 1:
            return None
        (only,) = live
        return None if only is None else str(only)

    @property
    def open_streams(self) -> int:
        return self._open

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The gRPC handler to register on the xDS server."""
        return [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    # Raw bytes in: the size is checked before anything is parsed.
                    METHOD: grpc.stream_unary_rpc_method_handler(
                        self._serve, request_deserializer=None, response_serializer=None
                    )
                },
            )
        ]

    async def _refuse(
        self, context: _Context, code: grpc.StatusCode, reason: str, message: str, **fields: Any
    ) -> None:
        self._events.on_metrics_message("refused", reason, 0)
        self._refusals.warning(reason=reason, peer=context.peer(), error=message, **fields)
        await context.abort(code, message)

    async def _first(self, raw: bytes, context: _Context) -> str:
        """The node id the first message names; aborts the stream when it names none."""
        node_id = ""
        try:
            message = StreamMetricsMessage.FromString(raw)
            if message.HasField("identifier"):
                node_id = base_pb2.Node.FromString(message.identifier.node).id
        except DecodeError:
            node_id = ""
        if not node_id:
            await self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid",
                "the first StreamMetricsMessage must carry identifier.node with a node id",
            )
        if len(node_id) > MAX_NODE_ID:
            await self._refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid",
                f"node id {clip(node_id)!r} is longer than {MAX_NODE_ID} characters",
            )
        return node_id

    async def _serve(self, requests: AsyncIterator[bytes], context: _Context) -> bytes:
        if self._open >= self._max_streams:
            await self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too_many_streams",
                f"wasmxds takes at most {self._max_streams} metrics streams at once",
            )
        proven: SpiffeId | None = None
        if self._identity is not None:
            try:
                proven = self._identity.certificate_identity(_peer_uris(context))
            except IdentityRefused as exc:
                await self._refuse(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    exc.reason,
                    f"metrics stream: {exc}; with --node-identity certificate only proxies"
                    " with a SPIFFE certificate may report health",
                )
        self._open += 1
        node_id = ""
        try:
            async for raw in requests:
                if len(raw) > self._max_message_bytes:
                    await self._refuse(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "too_large",
                        f"a metrics message of {len(raw)} bytes (node {clip(node_id)!r}) is over"
                        f" wasmxds's limit of {self._max_message_bytes}: set batch_size in the"
                        " proxy's envoy.stat_sinks.metrics_service config",
                    )
                if not node_id:
                    node_id = await self._first(raw, context)
                    self._admit(node_id)
                    if self._streams[node_id] > self._max_streams_per_node:
                        await self._refuse(
                            context,
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            "too_many_streams",
                            f"node {clip(node_id)!r} already has"
                            f" {self._max_streams_per_node} metrics streams open",
                        )
                    log.info("health.metrics_stream", node=clip(node_id), peer=context.peer())
                self._take(node_id, proven, raw)
        finally:
            self._open -= 1
            if node_id:
                self._release(node_id)
        return b""  # StreamMetricsResponse is empty

    def _admit(self, node_id: str) -> None:
        self._streams[node_id] = self._streams.get(node_id, 0) + 1

    def _release(self, node_id: str) -> None:
        left = self._streams[node_id] - 1
        if left:
            self._streams[node_id] = left
        else:
            del self._streams[node_id]

    def _take(self, node_id: str, proven: SpiffeId | None, raw: bytes) -> None:
        if self._identity is not None:
            live = set(self._xds_identities(node_id))
            if live != {proven}:
                reason = (
                    "ambiguous_node"
                    if len(live) > 1
                    else "identity_mismatch"
                    if live
                    else "no_xds_stream"
                )
                self._events.on_metrics_message("refused", reason, 0)
                return
        # Only the few wanted families are decoded (counters.scan_families).
        report, samples = read_report(scan_families(raw))
        if not self.health.observe(
            node_id, report, identity=None if proven is None else str(proven)
        ):
            self._events.on_metrics_message("refused", "implausible", 0)
            return
        self._events.on_metrics_message("accepted", "", samples)
