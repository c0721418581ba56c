"""The gRPC edge: xDS streams in, snapshots out.

Served on one port: ADS (``StreamAggregatedResources`` and
``DeltaAggregatedResources``) and the standalone ECDS service
(``StreamExtensionConfigs`` and ``DeltaExtensionConfigs``), for configs whose
``config_source`` points straight at wasmxds instead of ADS.

The server holds per-stream protocol state only (:mod:`wasmxds.xds.sotw`,
:mod:`wasmxds.xds.delta`). Responses are assembled from bytes prepared once
per resource version, so the handlers use a pass-through serializer instead of
building messages per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from wasmxds import __version__
from wasmxds.log import SampledLog
from wasmxds.settings import HostPort
from wasmxds.xds import wire
from wasmxds.xds.delta import DeltaStream
from wasmxds.xds.events import NoEvents, Rejections, StreamEvents
from wasmxds.xds.identity import (
    IdentityPolicy,
    IdentityRefused,
    RefusalLog,
    SpiffeId,
    claimed_namespaces,
    clip,
)
from wasmxds.xds.node import ClassKey, NodeInfo, node_info_from_metadata, node_metadata
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream
from wasmxds.xds.stream import DEFAULT_MAX_RESOURCE_NAMES, LimitExceeded, ProtocolError, Verdict
from wasmxds.xds.types import ECDS, WILDCARD
from wasmxds.xds.wakeup import Wakeup

__all__ = ["Session", "TlsFiles", "XdsServer"]

log = structlog.get_logger(__name__)

# Requests are parsed messages; responses are pre-assembled bytes.
_Context = grpc.aio.ServicerContext[Any, bytes]
AnyStream = SotwStream | DeltaStream

_ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_ECDS_SERVICE = "envoy.service.extension.v3.ExtensionConfigDiscoveryService"
_SOTW_CONTROL_PLANE = 6  # DiscoveryResponse.control_plane
_DELTA_CONTROL_PLANE = 7  # DeltaDiscoveryResponse.control_plane

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
    # gRPC core queues new calls the application has not picked up yet, and
    # refuses them beyond 1000 (at random) and 3000 (always). grpc.aio picks
    # them up one at a time on the event loop, so a burst of reconnecting
    # proxies (thousands after a restart or a network blip) overflows the queue
    # and they fail into Envoy's backoff, up to 30 s. A waiting call is cheap:
    # let bursts wait instead (benchmarks/: 10k streams at once sync with no
    # failure; with the defaults about a third of them fail).
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 50_000),
]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Server certificate and key; with ``client_ca``, clients must present a cert it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(eq=False, slots=True)
class Session:
    """One connected stream: who is on it, how it speaks, and its protocol state."""

    id: int
    node: NodeInfo
    peer: str
    protocol: AnyStream
    service: str
    identity: str = ""
    """The client certificate's subject on mutual TLS streams, "" otherwise."""
    verified: SpiffeId | None = None
    """The SPIFFE ID the namespace was taken from (``--node-identity certificate``);
    None when the namespace is the node metadata's claim."""
    connected_at: float = field(default_factory=time.time)
    wake: Wakeup = field(default_factory=Wakeup)
    sent_at: dict[str, float] = field(default_factory=dict)
    """Per type: when the response now awaiting an answer was sent (monotonic)."""
    woken_by: Snapshot | None = None
    """The snapshot whose publication woke this stream, until the writer has run."""
    indexed_names: frozenset[str] = frozenset()
    """The ECDS names the server's index holds this stream under."""
    indexed_changes: int = -1
    """``protocol.subscription_changes`` when the stream was last indexed."""

    @property
    def flavour(self) -> str:
        return self.protocol.flavour

    def ecds_names(self) -> frozenset[str]:
        state = self.protocol.types.get(ECDS)
        return frozenset(state.names) if state is not None else frozenset()

    def accepted(self, type_url: str, name: str) -> str | None:
        """The version of ``name`` the proxy has ACKed (None: none, or one still in flight)."""
        return self.protocol.accepted_version(type_url, name)

    def watches_wildcard(self) -> bool:
        return any(t in self.protocol.types for t in WILDCARD)


def _control_plane(field_number: int) -> bytes:
    identity = base_pb2.ControlPlane(identifier=f"wasmxds/{__version__}@{socket.gethostname()}")
    return wire.length_delimited(field_number, identity.SerializeToString())


def _peer_identity(context: _Context) -> str:
    """The client certificate's subject (CN or SAN) on mTLS streams, else ""."""
    auth = context.auth_context()
    for key in ("x509_subject_alternative_name", "x509_common_name"):
        values = auth.get(key)
        if values:
            return ",".join(v.decode(errors="replace") for v in values)
    return ""


def _peer_uris(context: _Context) -> list[str]:
    # gRPC core lists the peer certificate's URI SANs under "peer_uri" (grpcio
    # >= 1.41), so the certificate need not be parsed here.
    return [v.decode(errors="replace") for v in context.auth_context().get("peer_uri", ())]


class XdsServer:
    """Serves the current snapshot to every connected proxy."""

    def __init__(
        self,
        *,
        address: HostPort,
        root_namespace: str,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        max_resource_names: int = DEFAULT_MAX_RESOURCE_NAMES,
        grace: float = 5.0,
        tls: TlsFiles | None = None,
        events: StreamEvents | None = None,
        node_identity: IdentityPolicy | None = None,
        rejections: Rejections | None = None,
    ) -> None:
        """``node_identity``: take namespaces from client certificates under this policy
        (needs mutual TLS); None takes them from node metadata. ``rejections`` hears of
        every NACK with the proxy and the versions it rejected (staged rollouts)."""
        self._rejections = rejections
        if node_identity is not None and (tls is None or tls.client_ca is None):
            raise ValueError("node identity from certificates needs mutual TLS (a client CA)")
        self._node_identity = node_identity
        self._refusals = RefusalLog("xds.identity_refused")
        # A fleet reconnecting is thousands of streams a second: a line for each was
        # noise and a visible share of a new stream's CPU; the rest are counted.
        self._connected_log = SampledLog(log, "xds.connected", what="new streams")
        self._disconnected_log = SampledLog(log, "xds.disconnected", what="closed streams")
        self._address = address
        self._events: StreamEvents = events or NoEvents()
        self._events.watch_streams(self._connected_counts)
        self._max_receive_bytes = max_receive_bytes
        self._max_resource_names = max_resource_names
        self._grace = grace
        self._tls = tls
        self._classes: dict[ClassKey, int] = {}
        """Node class → open streams of it; snapshots memoize for these classes only."""
        self._snapshot = Snapshot.empty(root_namespace)
        self._snapshot.limit_memos_to(self._classes)
        self._has_snapshot = asyncio.Event()
        self._sessions: dict[int, Session] = {}
        self._by_name: dict[str, set[Session]] = {}
        self._wildcard: set[Session] = set()
        self._by_node: dict[str, set[Session]] = {}
        self._services: list[grpc.GenericRpcHandler] = []
        self._ids = itertools.count(1)
        self.streams_opened = 0
        self.streams_closed = 0
        self._sotw_control_plane = _control_plane(_SOTW_CONTROL_PLANE)
        self._delta_control_plane = _control_plane(_DELTA_CONTROL_PLANE)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def _connected_counts(self) -> list[tuple[tuple[str, str], float]]:
        counts: dict[tuple[str, str], int] = {}
        for session in self._sessions.values():
            key = (session.flavour, session.service)
            counts[key] = counts.get(key, 0) + 1
        return [(key, float(n)) for key, n in counts.items()]

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def publish(self, snapshot: Snapshot) -> int:
        """Make ``snapshot`` current and wake the streams it affects; returns how many."""
        previous, self._snapshot = self._snapshot, snapshot
        snapshot.limit_memos_to(self._classes)
        if previous is not snapshot:
            snapshot.inherit(previous)
            # Streams only compare against an old snapshot now; its memos are dead weight.
            previous.release()
        first = not self._has_snapshot.is_set()
        self._has_snapshot.set()
        if first:
            return len(self._sessions)
        woken: set[Session] = set()
        for name in snapshot.changed_names(previous):
            woken |= self._by_name.get(name, set())
        if snapshot.listeners_changed(previous):
            woken |= self._wildcard
        for session in woken:
            session.woken_by = snapshot
            session.wake.set()
        return len(woken)

    def node_identities(self, node_id: str) -> list[SpiffeId | None]:
        """The proven identities of ``node_id``'s live streams (None: metadata identity)."""
        return [session.verified for session in self._by_node.get(node_id, ())]

    def add_service(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Serve ``handlers`` on the same port too (before :meth:`run`): the metrics service."""
        self._services.extend(handlers)

    # -- lifecycle --------------------------------------------------------

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        def stream(
            behaviour: Callable[[Any, _Context], Any], request_type: Any
        ) -> grpc.RpcMethodHandler[Any, bytes]:
            return grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=None,  # responses are pre-assembled bytes
            )

        sotw, delta = discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest
        return [
            grpc.method_handlers_generic_handler(
                _ADS_SERVICE,
                {
                    "StreamAggregatedResources": stream(self._ads_sotw, sotw),
                    "DeltaAggregatedResources": stream(self._ads_delta, delta),
                },
            ),
            grpc.method_handlers_generic_handler(
                _ECDS_SERVICE,
                {
                    "StreamExtensionConfigs": stream(self._ecds_sotw, sotw),
                    "DeltaExtensionConfigs": stream(self._ecds_delta, delta),
                },
            ),
        ]

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Listen until cancelled; then stop taking streams and close them within the grace."""
        server = grpc.aio.server(
            options=[*_SERVER_OPTIONS, ("grpc.max_receive_message_length", self._max_receive_bytes)]
        )
        server.add_generic_rpc_handlers([*self._handlers(), *self._services])
        address = str(self._address)
        if self._tls is not None:
            self.port = server.add_secure_port(address, self._tls.credentials())
        else:
            self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen for xDS on {self._address}")
        self._server = server
        await server.start()
        log.info(
            "xds.listening",
            address=f"{self._address.host}:{self.port}",
            tls="mutual" if self._tls and self._tls.client_ca else "server" if self._tls else "off",
        )
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

    async def _ads_sotw(self, requests: AsyncIterator[Any], context: _Context) -> None:
        await self._serve(context, delta=False, service="ads", default_type="")

    async def _ads_delta(self, requests: AsyncIterator[Any], context: _Context) -> None:
        await self._serve(context, delta=True, service="ads", default_type="")

    async def _ecds_sotw(self, requests: AsyncIterator[Any], context: _Context) -> None:
        await self._serve(context, delta=False, service="ecds", default_type=ECDS)

    async def _ecds_delta(self, requests: AsyncIterator[Any], context: _Context) -> None:
        await self._serve(context, delta=True, service="ecds", default_type=ECDS)

    def _unindex(self, session: Session, names: Iterable[str]) -> None:
        for name in names:
            holders = self._by_name.get(name)
            if holders is not None:
                holders.discard(session)
                if not holders:
                    del self._by_name[name]

    def _index(self, session: Session) -> None:
        """Index the stream under what it now subscribes to (a publish wakes it for those)."""
        session.indexed_changes = session.protocol.subscription_changes
        before, after = session.indexed_names, session.ecds_names()
        if after != before:
            self._unindex(session, before - after)
            for name in after - before:
                self._by_name.setdefault(name, set()).add(session)
            session.indexed_names = after
        if session.watches_wildcard():
            self._wildcard.add(session)

    def _register(self, session: Session) -> None:
        self.streams_opened += 1
        self._sessions[session.id] = session
        self._by_node.setdefault(session.node.id, set()).add(session)
        key = session.node.class_key
        self._classes[key] = self._classes.get(key, 0) + 1

    def _forget(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self.streams_closed += 1
            same_node = self._by_node[session.node.id]
            same_node.discard(session)
            if not same_node:
                del self._by_node[session.node.id]
            key = session.node.class_key
            left = self._classes[key] - 1
            if left:
                self._classes[key] = left
            else:
                # Nothing per class outlives the class's last stream.
                del self._classes[key]
                self._snapshot.forget_class(key)
        self._unindex(session, session.indexed_names)
        self._wildcard.discard(session)

    def _handle(self, session: Session, request: Any, default_type: str) -> None:
        if default_type and not request.type_url:
            request.type_url = default_type
        protocol = session.protocol
        if request.HasField("error_detail"):
            verdict = self._handle_nack(session, request)
        else:
            verdict = protocol.handle(request)
            if verdict is Verdict.ACK:
                sent = session.sent_at.pop(request.type_url, None)
                if sent is not None:
                    self._events.on_ack(request.type_url, time.monotonic() - sent)
        if verdict is Verdict.STALE:
            log.debug("xds.stale_nonce", node=session.node.id, nonce=request.response_nonce)
        if session.indexed_changes != protocol.subscription_changes:
            self._index(session)
        # Most requests are the ACK of a push: nothing follows from them, and
        # waking the writer for nothing costs as much as a push's own protocol work.
        if not protocol.settled(self._snapshot):
            session.wake.set()

    def _handle_nack(self, session: Session, request: Any) -> Verdict:
        """A request with ``error_detail``: a NACK if it answers the response in flight."""
        protocol = session.protocol
        type_url = request.type_url
        # What it answers must be read before the protocol forgets it.
        answered = protocol.in_flight_names(type_url)
        rejected = protocol.in_flight_versions(type_url)
        verdict = protocol.handle(request)
        if verdict is not Verdict.NACK:
            return verdict
        session.sent_at.pop(type_url, None)
        self._events.on_nack(type_url, answered)
        if self._rejections is not None and rejected:
            self._rejections.on_rejected(
                session.node, type_url, rejected, request.error_detail.message
            )
        log.warning(
            "xds.nack",
            node=session.node.id,
            type_url=type_url,
            nonce=request.response_nonce,
            error=request.error_detail.message,
        )
        return verdict

    async def _read_requests(self, context: _Context, session: Session, default_type: str) -> None:
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    return
                self._handle(session, request, default_type)
        finally:
            session.wake.set()

    async def _write(self, context: _Context, session: Session, reader: asyncio.Task[None]) -> None:
        """The stream's writer: send what is due, sleep until woken, until the reader ends.

        One loop rather than a coroutine per wake-up: it runs for every stream on
        every push.
        """
        protocol, events, flavour = session.protocol, self._events, session.protocol.flavour
        wake = session.wake
        while True:
            snapshot = self._snapshot
            woken_by, session.woken_by = session.woken_by, None
            changed_at = woken_by.changed_at if woken_by is not None else None
            for type_url, payload in protocol.responses(snapshot):
                await context.write(payload)
                now = time.monotonic()
                session.sent_at[type_url] = now
                events.on_push(type_url, flavour, None if changed_at is None else now - changed_at)
                # Not kept while the writer sleeps: a first response is the whole state.
                del payload
            if reader.done():
                reader.result()
                return
            await wake.wait()

    async def _identify(self, context: _Context, node: Any) -> tuple[NodeInfo, SpiffeId | None]:
        """Who the stream's proxy is; aborts with PERMISSION_DENIED when its certificate
        does not prove the namespace it claims (DESIGN "Node identity")."""
        metadata = node_metadata(node)
        if self._node_identity is None:
            return node_info_from_metadata(node.id, metadata, cluster=node.cluster), None
        try:
            verified = self._node_identity.verify(
                node.id, _peer_uris(context), claimed_namespaces(metadata)
            )
        except IdentityRefused as exc:
            # The node id is the client's to choose: cut, and at most so many lines a window.
            self._refusals.warning(
                node=clip(node.id),
                peer=context.peer(),
                identity=exc.identity or None,
                claimed_namespace=exc.claimed or None,
                reason=exc.reason,
                error=str(exc),
            )
            self._events.on_identity_refused(exc.reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        info = node_info_from_metadata(
            node.id, metadata, cluster=node.cluster, proven_namespace=verified.namespace
        )
        return info, verified

    async def _serve(
        self, context: _Context, *, delta: bool, service: str, default_type: str
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        if not first.HasField("node"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry node"
            )
        node, verified = await self._identify(context, first.node)
        # Until the sources have been read once, every answer would be "nothing".
        await self._has_snapshot.wait()
        protocol: AnyStream = (
            DeltaStream(
                node,
                control_plane=self._delta_control_plane,
                max_names=self._max_resource_names,
            )
            if delta
            else SotwStream(
                node,
                control_plane=self._sotw_control_plane,
                max_names=self._max_resource_names,
            )
        )
        session = Session(
            id=next(self._ids),
            node=node,
            peer=context.peer(),
            protocol=protocol,
            service=service,
            identity=_peer_identity(context) if self._tls else "",
            verified=verified,
        )
        self._register(session)
        reader: asyncio.Task[None] | None = None
        try:
            self._connected_log(
                node=node.id,
                namespace=node.namespace,
                identity=str(verified) if verified else "metadata",
                peer=session.peer,
                flavour=session.flavour,
                service=service,
            )
            self._handle(session, first, default_type)
            reader = asyncio.create_task(
                self._read_requests(context, session, default_type), name=f"xds.read.{session.id}"
            )
            await self._write(context, session, reader)
        except LimitExceeded as exc:
            log.warning("xds.refused", node=node.id, peer=session.peer, reason=str(exc))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            if reader is not None:
                reader.cancel()
            self._forget(session)
            self._disconnected_log(node=node.id, peer=session.peer)
