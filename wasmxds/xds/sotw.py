"""State-of-the-world xDS, per stream: subscriptions, nonces, ACK/NACK, what to send next.

Pure protocol logic with no gRPC in it: :meth:`SotwStream.handle` takes each
request, :meth:`SotwStream.next_response` says what (if anything) to send for a
type given the current snapshot. The server calls them; tests call them directly.

Protocol decisions follow the xDS spec
(https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol):

- At most one response per type is in flight; the next waits for its ACK/NACK.
  This is the flow control go-control-plane gets from one-shot watches.
- A request whose ``response_nonce`` is not the last nonce sent for its type is
  stale and ignored (#resource-updates: "The management server should not send a
  DiscoveryResponse for any DiscoveryRequest that has a stale nonce").
- A NACK is recognised by ``error_detail`` (the spec's preferred mechanism).
  Content the client rejected is never sent again until it changes (the resend
  loop of go-control-plane#46 and #962). When a response carrying several
  resources is rejected, they are resent one per response so the bad one is
  isolated and the good ones still land.
- Newly subscribed names are answered at once even if sent before; a name that
  leaves the subscription is forgotten, so subscribing again resends it.
- Non-full-state types (ECDS) send only what changed. The type's
  ``version_info`` is a hash of everything the stream then holds, so a client
  reconnecting with the version it last accepted (after a wasmxds restart) gets
  nothing resent when nothing changed.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmxds.xds import wire
from wasmxds.xds.resources import PreparedResource

if TYPE_CHECKING:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.translate.node import NodeInfo
    from wasmxds.xds.snapshot import Snapshot

__all__ = ["ProtocolError", "SotwStream", "TypeState", "Verdict", "held_version"]

# DiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_VERSION_INFO = 1
_TYPE_URL = 4
_NONCE = 5


class ProtocolError(Exception):
    """The client broke the protocol; the stream should end with INVALID_ARGUMENT."""


class Verdict(enum.Enum):
    """What a request turned out to be."""

    INITIAL = "initial"
    ACK = "ack"
    NACK = "nack"
    UPDATE = "update"
    STALE = "stale"


def held_version(held: dict[str, PreparedResource]) -> str:
    """The version_info for a set of resources: a hash of their names and versions."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(held):
        digest.update(f"{name}\0{held[name].version}\0".encode())
    return digest.hexdigest()


@dataclass(slots=True)
class TypeState:
    """One resource type on one stream."""

    type_url: str
    names: frozenset[str] = frozenset()
    held: dict[str, PreparedResource] = field(default_factory=dict)
    """What the client holds once every response sent so far is applied (optimistic,
    as in go-control-plane: counted when sent, corrected on NACK)."""
    in_flight: str = ""
    in_flight_resources: tuple[PreparedResource, ...] = ()
    last_nonce: str = ""
    sent_version: str = ""
    acked_version: str = ""
    resume_version: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    suspects: set[str] = field(default_factory=set)
    last_error: str = ""
    nacks: int = 0


class SotwStream:
    """Protocol state of one SotW stream (ADS carries several types on it)."""

    def __init__(self, node: NodeInfo, *, control_plane: bytes = b"") -> None:
        self.node = node
        self.types: dict[str, TypeState] = {}
        self._control_plane = control_plane
        self._nonce = 0

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> Verdict:
        """Apply one request to the stream state."""
        if not request.type_url:
            raise ProtocolError("type_url is required on an aggregated (ADS) stream")
        state = self.types.get(request.type_url)
        verdict = Verdict.UPDATE
        if state is None:
            state = self.types[request.type_url] = TypeState(request.type_url)
            # A reconnecting client sends the version it last accepted; if the
            # resources it asks for still hash to it, nothing needs resending.
            state.resume_version = request.version_info
            verdict = Verdict.INITIAL
        elif state.last_nonce and request.response_nonce != state.last_nonce:
            return Verdict.STALE
        if state.in_flight and request.response_nonce == state.in_flight:
            if request.HasField("error_detail"):
                self._rejected(state, request.error_detail.message)
                verdict = Verdict.NACK
            else:
                state.acked_version = request.version_info
                verdict = Verdict.ACK
            state.in_flight = ""
            state.in_flight_resources = ()
        names = frozenset(request.resource_names)
        if names != state.names:
            for gone in state.names - names:
                state.held.pop(gone, None)
                state.rejected.pop(gone, None)
                state.suspects.discard(gone)
            state.names = names
        return verdict

    def _rejected(self, state: TypeState, message: str) -> None:
        state.nacks += 1
        state.last_error = message
        rejected = state.in_flight_resources
        if len(rejected) == 1:
            state.rejected[rejected[0].name] = rejected[0].version
        else:
            state.suspects.update(resource.name for resource in rejected)
        for resource in rejected:
            # Envoy may have applied some of them before failing on another;
            # we no longer know what it holds for these names.
            if state.held.get(resource.name) is resource:
                del state.held[resource.name]

    def _wanted(self, state: TypeState, snapshot: Snapshot) -> list[PreparedResource]:
        desired = snapshot.resolve(state.type_url, self.node, state.names)
        if state.resume_version:
            resume, state.resume_version = state.resume_version, ""
            pending = any(snapshot.is_pending(state.type_url, n) for n in state.names)
            if not pending and held_version(desired) == resume:
                state.held = desired
                state.sent_version = state.acked_version = resume
                return []
        wanted = []
        for name in sorted(state.names):
            if snapshot.is_pending(state.type_url, name):
                continue
            want = desired.get(name)
            have = state.held.get(name)
            if want is None:
                if have is None:
                    continue
                want = snapshot.removed_placeholder(name, have)
                if want is None:
                    continue
            if have is not None and have.version == want.version:
                continue
            if state.rejected.get(name) == want.version:
                continue
            wanted.append(want)
        return wanted

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        """The serialized DiscoveryResponse to send now for ``type_url``, if any."""
        state = self.types.get(type_url)
        if state is None or state.in_flight:
            return None
        to_send = self._wanted(state, snapshot)
        if not to_send:
            return None
        suspects = [r for r in to_send if r.name in state.suspects]
        if suspects:
            to_send = suspects[:1]
            state.suspects.discard(suspects[0].name)
        for resource in to_send:
            state.held[resource.name] = resource
        self._nonce += 1
        nonce = str(self._nonce)
        state.in_flight = state.last_nonce = nonce
        state.in_flight_resources = tuple(to_send)
        state.sent_version = held_version(state.held)
        return b"".join(
            (
                wire.string_field(_VERSION_INFO, state.sent_version),
                *(resource.sotw_field for resource in to_send),
                wire.string_field(_TYPE_URL, type_url),
                wire.string_field(_NONCE, nonce),
                self._control_plane,
            )
        )

    def responses(self, snapshot: Snapshot) -> list[bytes]:
        """Everything to send now, across types."""
        out = []
        for type_url in self.types:
            payload = self.next_response(type_url, snapshot)
            if payload is not None:
                out.append(payload)
        return out
