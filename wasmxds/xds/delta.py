"""Incremental (delta) xDS, per stream: subscribe/unsubscribe, per-resource versions, removals.

Pure protocol logic, driven like :mod:`wasmxds.xds.sotw`. The differences the
spec (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds)
asks for:

- Subscription changes are honoured even when the request's nonce is stale;
  the nonce only decides whether a request ACKs or NACKs the response in flight.
- ``initial_resource_versions`` on a reconnect tells what the client already
  holds: unchanged resources are not sent again.
- A name in ``resource_names_subscribe`` is sent even if the client is thought
  to hold it already.
- What the client holds and is gone goes into ``removed_resources``: a deleted
  plugin, or one that left the proxy's scope. Removal of an ECDS resource waits
  while a listener the client may still use references it.
- Versions are per resource (content hashes); ``system_version_info`` is a
  digest of everything the client holds, for humans and debugging.

At most one response per type is in flight, as with SotW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmxds.translate.filters import StandIn
from wasmxds.xds import wire
from wasmxds.xds.protocol import (
    ProtocolError,
    StreamProtocol,
    Verdict,
    isolate_suspect,
    listener_references,
    versions_hash,
)
from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.snapshot import EcdsTag
from wasmxds.xds.types import ECDS, LISTENER, WILDCARD

if TYPE_CHECKING:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.xds.snapshot import Snapshot

__all__ = ["DeltaStream", "DeltaTypeState"]

# DeltaDiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_SYSTEM_VERSION = 1
_TYPE_URL = 4
_NONCE = 5
_REMOVED = 6
_ABSENT = ""  # "the client knows this name does not exist"


@dataclass(frozen=True, slots=True)
class _Shared:
    """A computed ECDS response, minus its nonce: what the memo on the snapshot holds."""

    updates: tuple[tuple[str, str], ...]
    removals: tuple[str, ...]
    system_version: str
    head: bytes
    """system_version_info, resources and type_url fields; the nonce follows."""
    tail: bytes
    """removed_resources fields; the control plane follows."""


def _is_noop(resource: PreparedResource) -> bool:
    return isinstance(resource.tag, EcdsTag) and resource.tag.standin is StandIn.NOT_SELECTED


@dataclass(slots=True)
class DeltaTypeState:
    """One resource type on one delta stream."""

    type_url: str
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    sent: dict[str, str] = field(default_factory=dict)
    """Name → version the client holds once sent responses apply; ``""`` = told absent."""
    listener_refs: dict[str, frozenset[str]] = field(default_factory=dict)
    """For LDS: the ECDS names each held listener references."""
    in_flight: str = ""
    in_flight_versions: dict[str, str] = field(default_factory=dict)
    last_nonce: str = ""
    system_version: str = ""
    acked_version: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    suspects: set[str] = field(default_factory=set)
    last_error: str = ""
    nacks: int = 0
    last_outcome: str = ""
    """"ack" or "nack": how the client answered the latest response it answered."""
    settled_on: object = None
    """The snapshot for which nothing is left to send (see the SotW ``TypeState``)."""

    @property
    def sent_version(self) -> str:
        return self.system_version

    def version_held(self, name: str) -> str | None:
        """The version of ``name`` the client holds (as far as this stream knows)."""
        return self.sent.get(name) or None


class DeltaStream(StreamProtocol[DeltaTypeState]):
    """Protocol state of one delta stream (ADS carries several types on it)."""

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Verdict:
        """Apply one request; subscriptions always, ACK/NACK only for the nonce in flight."""
        if not request.type_url:
            raise ProtocolError("type_url is required on an aggregated (ADS) stream")
        state = self.types.get(request.type_url)
        first = state is None
        verdict = Verdict.UPDATE
        if state is None:
            state = self.types[request.type_url] = DeltaTypeState(request.type_url)
            state.sent.update(request.initial_resource_versions)
            state.wildcard = request.type_url in WILDCARD and not request.resource_names_subscribe
            verdict = Verdict.INITIAL
        elif state.in_flight and request.response_nonce == state.in_flight:
            if request.HasField("error_detail"):
                self._rejected(state, request.error_detail.message)
                verdict = Verdict.NACK
            else:
                state.acked_version = state.system_version
                verdict = Verdict.ACK
            state.last_outcome = verdict.value
            state.in_flight = ""
            state.in_flight_versions = {}
        elif request.response_nonce and request.response_nonce != state.last_nonce:
            verdict = Verdict.STALE  # still apply its subscription changes (spec)
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
                continue
            state.names.add(name)
            if not first:
                # The client asks again: it must get the resource even if we think it has it.
                state.sent.pop(name, None)
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
                continue
            state.names.discard(name)
            state.sent.pop(name, None)
            state.rejected.pop(name, None)
            state.suspects.discard(name)
        if (
            verdict is not Verdict.ACK
            or request.resource_names_subscribe
            or request.resource_names_unsubscribe
        ):
            state.settled_on = None
        return verdict

    def in_flight_names(self, type_url: str) -> list[str]:
        """Resources of the response for ``type_url`` awaiting an answer."""
        state = self.types.get(type_url)
        return [] if state is None else list(state.in_flight_versions)

    def _rejected(self, state: DeltaTypeState, message: str) -> None:
        state.nacks += 1
        state.last_error = message
        rejected = {n: v for n, v in state.in_flight_versions.items() if v != _ABSENT}
        if len(rejected) == 1:
            state.rejected.update(rejected)
        else:
            state.suspects.update(rejected)
        for name, version in rejected.items():
            if state.sent.get(name) == version:
                del state.sent[name]

    def _removal_blocked(self, type_url: str, name: str) -> bool:
        listeners = self.types.get(LISTENER)
        if type_url != ECDS or listeners is None:
            return False
        refs = frozenset().union(*listeners.listener_refs.values())
        return bool(listeners.in_flight) or name in refs

    def _changes(
        self, state: DeltaTypeState, snapshot: Snapshot
    ) -> tuple[list[PreparedResource], list[str]]:
        desired = snapshot.resolve(state.type_url, self.node, state.names)
        if state.wildcard:
            desired = {**snapshot.resolve_all(state.type_url, self.node), **desired}
        # Delta can say "gone": a plugin that does not apply to this proxy is
        # removed rather than served as the allow-all no-op SotW needs.
        desired = {name: r for name, r in desired.items() if not _is_noop(r)}
        updates = [
            resource
            for name, resource in sorted(desired.items())
            if state.sent.get(name) != resource.version
            and state.rejected.get(name) != resource.version
            and not snapshot.is_pending(state.type_url, name)
        ]
        # Only what the client holds is removed. A subscribed name that never
        # existed gets no answer: Envoy 1.40 takes a removal of a resource it
        # never had as an answer yet leaves the listener warming forever, while
        # silence lets initial_fetch_timeout apply default_config.
        removals = []
        for name, version in sorted(state.sent.items()):
            if version == _ABSENT or name in desired or snapshot.is_pending(state.type_url, name):
                continue
            if self._removal_blocked(state.type_url, name):
                state.settled_on = None  # an LDS ACK may unblock it
                continue
            removals.append(name)
        return updates, removals

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        """The serialized DeltaDiscoveryResponse to send now for ``type_url``, if any."""
        state = self.types.get(type_url)
        if state is None or state.in_flight or state.settled_on is snapshot:
            return None
        state.settled_on = snapshot
        key = self._shared_key(state)
        if key is not None:
            shared = snapshot.delta_responses.get(key)
            if not isinstance(shared, _Shared):
                # Computed from the class, the subscription and the versions held
                # only (see _shared_key): every stream in the same state reuses it.
                shared = self._shared(state, snapshot)
                snapshot.delta_responses[key] = shared
            return self._send_shared(state, shared)
        updates, removals = self._changes(state, snapshot)
        suspect = isolate_suspect(updates, state.suspects)
        if suspect is not None:
            if len(updates) + len(removals) > 1:
                state.settled_on = None  # the rest goes once this one is answered
            updates, removals = suspect, []
        if not updates and not removals:
            return None
        for resource in updates:
            state.sent[resource.name] = resource.version
            if type_url == LISTENER:
                state.listener_refs[resource.name] = listener_references([resource])
        for name in removals:
            state.sent[name] = _ABSENT
            state.listener_refs.pop(name, None)
        nonce = self._next_nonce()
        state.in_flight = state.last_nonce = nonce
        state.in_flight_versions = {r.name: r.version for r in updates} | dict.fromkeys(
            removals, _ABSENT
        )
        state.system_version = versions_hash({n: v for n, v in state.sent.items() if v != _ABSENT})
        return b"".join(
            (
                wire.string_field(_SYSTEM_VERSION, state.system_version),
                *(resource.delta_field for resource in updates),
                wire.string_field(_TYPE_URL, type_url),
                wire.string_field(_NONCE, nonce),
                *(wire.string_field(_REMOVED, name) for name in removals),
                self._control_plane,
            )
        )

    # -- responses shared by every stream of a class ------------------------

    def _shared_key(self, state: DeltaTypeState) -> object | None:
        """What the next ECDS response depends on, when nothing per stream is involved.

        Streams of one node class resolve to the same resources, so with the
        same subscription and the same versions held they get the same changes
        but for the nonce. NACKed or suspect resources, and listener mode (ECDS
        removals wait for this stream's LDS ACK), take the regular path.
        """
        if state.type_url != ECDS or state.rejected or state.suspects or LISTENER in self.types:
            return None
        return (
            self.node.class_key,
            frozenset(state.names),
            state.wildcard,
            frozenset(state.sent.items()),
        )

    def _shared(self, state: DeltaTypeState, snapshot: Snapshot) -> _Shared:
        updates, removals = self._changes(state, snapshot)
        sent = dict(state.sent)
        for resource in updates:
            sent[resource.name] = resource.version
        for name in removals:
            sent[name] = _ABSENT
        system_version = versions_hash({n: v for n, v in sent.items() if v != _ABSENT})
        head = b"".join(
            (
                wire.string_field(_SYSTEM_VERSION, system_version),
                *(resource.delta_field for resource in updates),
                wire.string_field(_TYPE_URL, state.type_url),
            )
        )
        tail = b"".join(wire.string_field(_REMOVED, name) for name in removals)
        return _Shared(
            tuple((r.name, r.version) for r in updates), tuple(removals), system_version, head, tail
        )

    def _send_shared(self, state: DeltaTypeState, shared: _Shared) -> bytes | None:
        """Apply a (possibly shared) response to this stream's state, as next_response does."""
        if not shared.updates and not shared.removals:
            return None
        for name, version in shared.updates:
            state.sent[name] = version
        for name in shared.removals:
            state.sent[name] = _ABSENT
        nonce = self._next_nonce()
        state.in_flight = state.last_nonce = nonce
        state.in_flight_versions = dict(shared.updates) | dict.fromkeys(shared.removals, _ABSENT)
        state.system_version = shared.system_version
        return shared.head + wire.string_field(_NONCE, nonce) + shared.tail + self._control_plane
