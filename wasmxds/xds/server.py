"""The gRPC edge: ADS streams in, snapshots out.

The server holds per-stream protocol state only (:mod:`wasmxds.xds.sotw`).
Responses are assembled from bytes prepared once per resource version, so the
handlers use a pass-through serializer instead of building messages per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from wasmxds import __version__
from wasmxds.settings import HostPort
from wasmxds.translate.node import NodeInfo, node_info_from_proto
from wasmxds.translate.typeurls import TYPED_EXTENSION_CONFIG
from wasmxds.xds import wire
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import ProtocolError, SotwStream, Verdict

__all__ = ["Session", "XdsServer"]

log = structlog.get_logger(__name__)

# Requests are parsed messages; responses are pre-assembled bytes.
_Context = grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest, bytes]

_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_CONTROL_PLANE_FIELD = 6  # DiscoveryResponse.control_plane

# Envoy's delta requests can exceed gRPC's 4 MiB default at scale (Envoy #36169,
# Envoy Gateway #9564); raise it well beyond.
DEFAULT_MAX_RECEIVE_BYTES = 16 << 20

_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    # Detect proxies that vanished without closing, so their sessions are freed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Envoy may ping often when its xDS cluster sets HTTP/2 keepalive; do not
    # answer that with GOAWAY(too_many_pings).
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


@dataclass(eq=False)
class Session:
    """One connected stream: who is on it and its protocol state."""

    id: int
    node: NodeInfo
    peer: str
    protocol: SotwStream
    connected_at: float = field(default_factory=time.time)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _control_plane_field() -> bytes:
    identity = base_pb2.ControlPlane(identifier=f"wasmxds/{__version__}@{socket.gethostname()}")
    return wire.length_delimited(_CONTROL_PLANE_FIELD, identity.SerializeToString())


class XdsServer:
    """Serves the current snapshot to every connected proxy."""

    def __init__(
        self,
        *,
        address: HostPort,
        root_namespace: str,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        grace: float = 5.0,
    ) -> None:
        self._address = address
        self._max_receive_bytes = max_receive_bytes
        self._grace = grace
        self._snapshot = Snapshot.empty(root_namespace)
        self._has_snapshot = asyncio.Event()
        self._sessions: dict[int, Session] = {}
        self._by_name: dict[str, set[Session]] = {}
        self._ids = itertools.count(1)
        self._control_plane = _control_plane_field()
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def publish(self, snapshot: Snapshot) -> int:
        """Make ``snapshot`` current and wake the streams it affects; returns how many."""
        previous, self._snapshot = self._snapshot, snapshot
        first = not self._has_snapshot.is_set()
        self._has_snapshot.set()
        if first:
            return len(self._sessions)
        woken: set[Session] = set()
        for name in snapshot.changed_names(previous):
            woken |= self._by_name.get(name, set())
        for session in woken:
            session.wake.set()
        return len(woken)

    # -- lifecycle --------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Listen until cancelled; then stop taking streams and close them within the grace."""
        server = grpc.aio.server(
            options=[*_SERVER_OPTIONS, ("grpc.max_receive_message_length", self._max_receive_bytes)]
        )
        handler = grpc.method_handlers_generic_handler(
            _ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream_aggregated,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    # Responses are pre-assembled bytes (see module docstring).
                    response_serializer=None,
                ),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        self.port = server.add_insecure_port(str(self._address))
        if not self.port:
            raise OSError(f"cannot listen for xDS on {self._address}")
        self._server = server
        await server.start()
        log.info("xds.listening", address=f"{self._address.host}:{self.port}")
        if started is not None:
            started.set()
        try:
            await server.wait_for_termination()
        finally:
            await asyncio.shield(self.stop())

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(self._grace)

    # -- streams ----------------------------------------------------------

    def _reindex(self, session: Session, before: frozenset[str], after: frozenset[str]) -> None:
        for name in before - after:
            holders = self._by_name.get(name)
            if holders is not None:
                holders.discard(session)
                if not holders:
                    del self._by_name[name]
        for name in after - before:
            self._by_name.setdefault(name, set()).add(session)

    def _ecds_names(self, session: Session) -> frozenset[str]:
        state = session.protocol.types.get(TYPED_EXTENSION_CONFIG)
        return state.names if state is not None else frozenset()

    def _handle(self, session: Session, request: discovery_pb2.DiscoveryRequest) -> None:
        before = self._ecds_names(session)
        verdict = session.protocol.handle(request)
        if verdict is Verdict.NACK:
            log.warning(
                "xds.nack",
                node=session.node.id,
                type_url=request.type_url,
                version=request.version_info,
                error=request.error_detail.message,
            )
        elif verdict is Verdict.STALE:
            log.debug("xds.stale_nonce", node=session.node.id, nonce=request.response_nonce)
        self._reindex(session, before, self._ecds_names(session))
        session.wake.set()

    async def _read_requests(self, context: _Context, session: Session) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                self._handle(session, request)
        finally:
            session.wake.set()

    async def _stream_aggregated(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: _Context,
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.HasField("node"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node"
            )
        node = node_info_from_proto(first.node)
        await self._has_snapshot.wait()
        session = Session(
            id=next(self._ids),
            node=node,
            peer=context.peer(),
            protocol=SotwStream(node, control_plane=self._control_plane),
        )
        self._sessions[session.id] = session
        log.info("xds.connected", node=node.id, namespace=node.namespace, peer=session.peer)
        reader: asyncio.Task[None] | None = None
        try:
            self._handle(session, first)
            reader = asyncio.create_task(
                self._read_requests(context, session), name=f"xds.read.{session.id}"
            )
            while True:
                for payload in session.protocol.responses(self._snapshot):
                    await context.write(payload)
                if reader.done():
                    reader.result()
                    return
                await session.wake.wait()
                session.wake.clear()
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if reader is not None:
                reader.cancel()
            self._reindex(session, self._ecds_names(session), frozenset())
            del self._sessions[session.id]
            log.info("xds.disconnected", node=node.id, peer=session.peer)
