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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmxds.xds import wire
from wasmxds.xds.protocol import (
    ProtocolError,
    StreamProtocol,
    Verdict,
    listener_references,
    versions_hash,
)
from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.types import ECDS, FULL_STATE, LISTENER, WILDCARD

if TYPE_CHECKING:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.xds.snapshot import Snapshot

__all__ = ["ProtocolError", "SotwStream", "TypeState", "Verdict", "held_version"]

# DiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_VERSION_INFO = 1
_TYPE_URL = 4
_NONCE = 5


@dataclass(frozen=True, slots=True)
class _Shared:
    """A computed ECDS response, minus its nonce: what the memo on the snapshot holds."""

    to_send: tuple[PreparedResource, ...]
    sent_version: str
    body: bytes
    """version_info, resources and type_url fields; the nonce and control plane follow."""


def held_version(held: dict[str, PreparedResource]) -> str:
    """The version_info for a set of resources: a hash of their names and versions."""
    return versions_hash({name: resource.version for name, resource in held.items()})


@dataclass(slots=True)
class TypeState:
    """One resource type on one stream."""

    type_url: str
    names: frozenset[str] = frozenset()
    wildcard: bool = False
    """Subscribed to every resource of the type: ``*``, or legacy wildcard (an empty
    first request for LDS/CDS, as Envoy sends them)."""
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
    rejected_state: str = ""
    """For full-state types: the version (whole set) the client rejected."""
    suspects: set[str] = field(default_factory=set)
    last_error: str = ""
    nacks: int = 0
    last_outcome: str = ""
    """"ack" or "nack": how the client answered the latest response it answered."""
    settled_on: object = None
    """The snapshot for which nothing is left to send (all of it sent, nothing held
    back), until a request other than a plain ACK changes the state. Lets the ACK
    of every push skip recomputing a response that would be empty."""

    def version_held(self, name: str) -> str | None:
        """The version of ``name`` the client holds (as far as this stream knows)."""
        held = self.held.get(name)
        return None if held is None else held.version


class SotwStream(StreamProtocol[TypeState]):
    """Protocol state of one SotW stream (ADS carries several types on it)."""

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
            # Legacy wildcard: only an empty *first* request means "everything".
            state.wildcard = request.type_url in WILDCARD and not request.resource_names
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
            state.last_outcome = verdict.value
            state.in_flight = ""
            state.in_flight_resources = ()
        names = frozenset(request.resource_names)
        wildcard = state.wildcard
        if "*" in names:
            state.wildcard, names = True, names - {"*"}
        elif names and verdict is not Verdict.INITIAL:
            state.wildcard = False
        if names != state.names:
            for gone in state.names - names:
                state.held.pop(gone, None)
                state.rejected.pop(gone, None)
                state.suspects.discard(gone)
            state.names = names
        elif verdict is Verdict.ACK and state.wildcard == wildcard:
            return verdict  # a plain ACK: what is left to send is unchanged
        state.settled_on = None
        return verdict

    def in_flight_names(self, type_url: str) -> list[str]:
        """Resources of the response for ``type_url`` awaiting an answer."""
        state = self.types.get(type_url)
        return [] if state is None else [r.name for r in state.in_flight_resources]

    def _rejected(self, state: TypeState, message: str) -> None:
        state.nacks += 1
        state.last_error = message
        if state.type_url in FULL_STATE:
            # The whole set is one unit: park that exact set until it changes.
            state.rejected_state = state.sent_version
            state.held = {}
            return
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

    def _removal_blocked(self, type_url: str, name: str) -> bool:
        """Whether a listener the client may still be using references ECDS ``name``.

        The listener must drop the reference before the resource goes; until
        the LDS update is acknowledged the removal waits.
        """
        listeners = self.types.get(LISTENER)
        if type_url != ECDS or listeners is None:
            return False
        return bool(listeners.in_flight) or name in listener_references(listeners.held.values())

    def _desired(self, state: TypeState, snapshot: Snapshot) -> dict[str, PreparedResource]:
        if state.wildcard:
            return snapshot.resolve_all(state.type_url, self.node)
        return snapshot.resolve(state.type_url, self.node, state.names)

    def _full_state(self, state: TypeState, snapshot: Snapshot) -> list[PreparedResource] | None:
        """For LDS/CDS: the complete set when it differs from what the client holds."""
        desired = self._desired(state, snapshot)
        version = held_version(desired)
        if state.resume_version:
            resume, state.resume_version = state.resume_version, ""
            if version == resume:
                state.held = dict(desired)
                state.sent_version = state.acked_version = resume
                return None
        elif version == held_version(state.held) and state.sent_version:
            return None
        if version == state.rejected_state:
            return None
        state.held = dict(desired)
        return list(desired.values())

    def _wanted(self, state: TypeState, snapshot: Snapshot) -> list[PreparedResource]:
        """What to send; clears ``state.settled_on`` when anything is held back."""
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
                if self._removal_blocked(state.type_url, name):
                    state.settled_on = None  # an LDS ACK may unblock it
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
        if state is None or state.in_flight or state.settled_on is snapshot:
            return None
        state.settled_on = snapshot
        if type_url in FULL_STATE:
            full = self._full_state(state, snapshot)
            if full is None:
                return None
            to_send = full
        else:
            key = self._shared_key(state)
            shared = snapshot.sotw_responses.get(key) if key is not None else None
            if isinstance(shared, _Shared):
                return self._send_shared(state, shared)
            to_send = self._wanted(state, snapshot)
            if key is not None:
                # Computed from the class, the subscription and what is held only
                # (see _shared_key): every stream in the same state can reuse it.
                shared = self._shared(state, to_send, type_url)
                snapshot.sotw_responses[key] = shared
                return self._send_shared(state, shared)
            if not to_send:
                return None
            suspects = [r for r in to_send if r.name in state.suspects]
            if suspects:
                if len(to_send) > 1:
                    state.settled_on = None  # the rest goes once this one is answered
                to_send = suspects[:1]
                state.suspects.discard(suspects[0].name)
            for resource in to_send:
                state.held[resource.name] = resource
        nonce = self._next_nonce()
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

    # -- responses shared by every stream of a class ------------------------

    def _shared_key(self, state: TypeState) -> object | None:
        """What the next ECDS response depends on, when nothing per stream is involved.

        Streams of one node class resolve to the same resources (the snapshot's
        per-class memo), so with the same subscription and the same resources
        held (compared by identity: resources are shared objects), they get the
        same response but for the nonce. Anything that makes the answer depend
        on this stream's history (a resume version, NACKed or suspect
        resources, a listener that may still reference a removed resource)
        takes the regular path.
        """
        if (
            state.resume_version
            or state.rejected
            or state.suspects
            or LISTENER in self.types
            or state.type_url in FULL_STATE
        ):
            return None
        return (state.type_url, self.node.class_key, state.names, frozenset(state.held.items()))

    def _shared(self, state: TypeState, to_send: list[PreparedResource], type_url: str) -> _Shared:
        held = dict(state.held)
        for resource in to_send:
            held[resource.name] = resource
        sent_version = held_version(held) if to_send else state.sent_version
        body = b"".join(
            (
                wire.string_field(_VERSION_INFO, sent_version),
                *(resource.sotw_field for resource in to_send),
                wire.string_field(_TYPE_URL, type_url),
            )
        )
        return _Shared(tuple(to_send), sent_version, body)

    def _send_shared(self, state: TypeState, shared: _Shared) -> bytes | None:
        """Apply a (possibly shared) response to this stream's state, as next_response does."""
        if not shared.to_send:
            return None
        for resource in shared.to_send:
            state.held[resource.name] = resource
        nonce = self._next_nonce()
        state.in_flight = state.last_nonce = nonce
        state.in_flight_resources = shared.to_send
        state.sent_version = shared.sent_version
        return shared.body + wire.string_field(_NONCE, nonce) + self._control_plane
