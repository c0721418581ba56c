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

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmxds.xds import wire
from wasmxds.xds.resources import PreparedResource, PreparedResponse, ResponseKey
from wasmxds.xds.stream import (
    ProtocolError,
    StreamProtocol,
    TypeStateBase,
    Verdict,
    listener_references,
    versions_hash,
)
from wasmxds.xds.types import FULL_STATE, WILDCARD

if TYPE_CHECKING:
    from collections.abc import Sequence

    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.xds.snapshot import Snapshot

__all__ = ["ProtocolError", "SotwStream", "TypeState", "Verdict", "held_version"]

# DiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_VERSION_INFO = 1
_TYPE_URL = 4


def held_version(held: dict[str, PreparedResource]) -> str:
    """The version_info for a set of resources: a hash of their names and versions."""
    return versions_hash({name: resource.version for name, resource in held.items()})


@dataclass(slots=True)
class TypeState(TypeStateBase):
    """One resource type on one SotW stream."""

    names: frozenset[str] = frozenset()
    requested: list[str] = field(default_factory=list)
    """``resource_names`` as the request that set ``names`` listed them: Envoy repeats
    the list in every ACK, and comparing lists is cheaper than building a set."""
    held: dict[str, PreparedResource] = field(default_factory=dict)
    """What the client holds once every response sent so far is applied (optimistic,
    as in go-control-plane: counted when sent, corrected on NACK)."""
    resume_version: str = ""
    rejected_state: str = ""
    """For full-state types: the version (whole set) the client rejected."""

    def version_held(self, name: str) -> str | None:
        held = self.held.get(name)
        return None if held is None else held.version

    def drop_held(self, name: str) -> None:
        self.held.pop(name, None)
        self.holding = None

    def references(self) -> frozenset[str]:
        return listener_references(self.held.values())


class SotwStream(StreamProtocol[TypeState]):
    """Protocol state of one SotW stream (ADS carries several types on it)."""

    __slots__ = ()

    flavour = "sotw"

    def _new_state(self, type_url: str) -> TypeState:
        return TypeState(type_url)

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> Verdict:
        """Apply one request to the stream state."""
        state = self.types.get(request.type_url)
        if (
            state is not None
            and state.in_flight
            and request.response_nonce == state.in_flight
            and request.resource_names == state.requested
            and not request.HasField("error_detail")
        ):
            # The ACK of every push, for the same names: nothing else to look at.
            self._acked(state, request.version_info)
            return Verdict.ACK
        state = self._existing(request.type_url, len(request.resource_names))
        verdict = Verdict.UPDATE
        if state is None:
            state = self._add_type(request.type_url)
            # A reconnecting client sends the version it last accepted; if the
            # resources it asks for still hash to it, nothing needs resending.
            state.resume_version = request.version_info
            # Legacy wildcard: only an empty *first* request means "everything".
            state.wildcard = request.type_url in WILDCARD and not request.resource_names
            verdict = Verdict.INITIAL
        elif state.last_nonce and request.response_nonce != state.last_nonce:
            return Verdict.STALE
        if state.in_flight and request.response_nonce == state.in_flight:
            verdict = self._answer(state, request, request.version_info)
        if request.resource_names == state.requested:
            # The names (and with them the wildcard) are the previous request's.
            if verdict is Verdict.ACK:
                return verdict  # a plain ACK: what is left to send is unchanged
            state.settled_on = None
            return verdict
        # Interned: every proxy of a class asks for the same names, and each read of
        # the field makes new strings (interned strings still go when unused).
        state.requested = [sys.intern(name) for name in request.resource_names]
        names = frozenset(state.requested)
        wildcard = state.wildcard
        if "*" in names:
            state.wildcard, names = True, names - {"*"}
        elif names and verdict is not Verdict.INITIAL:
            state.wildcard = False
        if names != state.names:
            for gone in state.names - names:
                state.forget(gone)
            state.names = names
        elif verdict is Verdict.ACK and state.wildcard == wildcard:
            return verdict  # a plain ACK: what is left to send is unchanged
        if state.wildcard != wildcard or state.names is names:
            self.subscription_changes += 1
        state.settled_on = None
        return verdict

    def _reject(self, state: TypeState) -> None:
        if state.type_url in FULL_STATE:
            # The whole set is one unit: park that exact set until it changes.
            state.rejected_state = state.sent_version
            state.held = {}
            state.holding = None
            return
        super()._reject(state)

    def _desired(self, state: TypeState, snapshot: Snapshot) -> dict[str, PreparedResource]:
        if state.wildcard:
            return snapshot.resolve_all(state.type_url, self.node)
        return snapshot.resolve(state.type_url, self.node, state.names)

    def _full_state(self, state: TypeState, snapshot: Snapshot) -> PreparedResponse | None:
        """For LDS/CDS: the complete set when it differs from what the client holds."""
        desired = self._desired(state, snapshot)
        version = held_version(desired)
        if state.resume_version:
            resume, state.resume_version = state.resume_version, ""
            if version == resume:
                state.held = dict(desired)
                state.holding = None
                state.sent_version = state.acked_version = resume
                return None
        elif version == held_version(state.held) and state.sent_version:
            return None
        if version == state.rejected_state:
            return None
        return self._encode(state.type_url, list(desired.values()), version)

    def _wanted(self, state: TypeState, snapshot: Snapshot) -> list[PreparedResource]:
        """What to send; clears ``state.settled_on`` when anything is held back."""
        desired = snapshot.resolve(state.type_url, self.node, state.names)
        if state.resume_version:
            resume, state.resume_version = state.resume_version, ""
            pending = any(snapshot.is_pending(state.type_url, n) for n in state.names)
            if not pending and held_version(desired) == resume:
                state.held = desired
                state.holding = None
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
                want = snapshot.removed_placeholder(have)
                if want is None:
                    continue
            if have is not None and have.version == want.version:
                continue
            if state.rejected.get(name) == want.version:
                continue
            wanted.append(want)
        return wanted

    def _response(self, state: TypeState, snapshot: Snapshot) -> PreparedResponse | None:
        if state.type_url in FULL_STATE:
            return self._full_state(state, snapshot)
        to_send = self._wanted(state, snapshot)
        to_send = self._isolate_suspect(state, to_send) or to_send
        if not to_send:
            return None
        held = dict(state.held)
        for resource in to_send:
            held[resource.name] = resource
        return self._encode(state.type_url, to_send, held_version(held))

    @staticmethod
    def _encode(
        type_url: str, to_send: Sequence[PreparedResource], version: str
    ) -> PreparedResponse:
        head = b"".join(
            (
                wire.string_field(_VERSION_INFO, version),
                *(resource.sotw_field for resource in to_send),
                wire.string_field(_TYPE_URL, type_url),
            )
        )
        return PreparedResponse(tuple(to_send), (), version, head)

    def _apply(self, state: TypeState, response: PreparedResponse) -> None:
        if state.type_url in FULL_STATE:
            state.held = {resource.name: resource for resource in response.sent}
            state.holding = None
            return
        for resource in response.sent:
            state.held[resource.name] = resource
        state.holding = None

    def _shared_key(self, state: TypeState) -> ResponseKey | None:
        """What the next ECDS response depends on, when nothing per stream is involved.

        Streams of one node class resolve to the same resources (the snapshot's
        per-class memo), so with the same subscription and the same resources
        held (compared by identity: resources are shared objects), they get the
        same response but for the nonce. A resume version makes the answer
        depend on this stream's history, and full-state types are never shared.
        """
        if state.resume_version or state.type_url in FULL_STATE:
            return None
        # The snapshot keeps it per class, so the class is not part of the key.
        holding = state.holding
        return (
            self.flavour,
            state.type_url,
            state.names,
            state.wildcard,
            frozenset(state.held.items()) if holding is None else holding,
        )
