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

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wasmxds.xds import wire
from wasmxds.xds.resources import (
    EcdsTag,
    PreparedResource,
    PreparedResponse,
    ResponseKey,
    references,
)
from wasmxds.xds.stream import StreamProtocol, TypeStateBase, Verdict, versions_hash
from wasmxds.xds.types import ECDS, LISTENER, WILDCARD

if TYPE_CHECKING:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.xds.snapshot import Snapshot

__all__ = ["DeltaStream", "DeltaTypeState"]

# DeltaDiscoveryResponse field numbers (envoy/service/discovery/v3/discovery.proto).
_SYSTEM_VERSION = 1
_TYPE_URL = 4
_REMOVED = 6
_ABSENT = ""  # "the client knows this name does not exist"


def _is_noop(resource: PreparedResource) -> bool:
    return isinstance(resource.tag, EcdsTag) and resource.tag.noop


@dataclass(slots=True)
class DeltaTypeState(TypeStateBase):
    """One resource type on one delta stream."""

    names: set[str] = field(default_factory=set)
    sent: dict[str, str] = field(default_factory=dict)
    """Name → version the client holds once sent responses apply; ``""`` = told absent."""
    listener_refs: dict[str, frozenset[str]] = field(default_factory=dict)
    """For LDS: the ECDS names each held listener references."""

    def version_held(self, name: str) -> str | None:
        return self.sent.get(name) or None

    def drop_held(self, name: str) -> None:
        self.sent.pop(name, None)
        self.holding = None

    def references(self) -> frozenset[str]:
        return frozenset().union(*self.listener_refs.values())


class DeltaStream(StreamProtocol[DeltaTypeState]):
    """Protocol state of one delta stream (ADS carries several types on it)."""

    __slots__ = ()

    flavour = "delta"

    def _new_state(self, type_url: str) -> DeltaTypeState:
        return DeltaTypeState(type_url)

    def handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Verdict:
        """Apply one request; subscriptions always, ACK/NACK only for the nonce in flight."""
        state = self._existing(
            request.type_url,
            len(request.resource_names_subscribe),
            len(request.initial_resource_versions),
        )
        first = state is None
        verdict = Verdict.UPDATE
        if state is None:
            state = self._add_type(request.type_url)
            state.sent.update(request.initial_resource_versions)
            state.holding = None
            state.wildcard = request.type_url in WILDCARD and not request.resource_names_subscribe
            verdict = Verdict.INITIAL
        elif state.in_flight and request.response_nonce == state.in_flight:
            verdict = self._answer(state, request, state.sent_version)
        elif request.response_nonce and request.response_nonce != state.last_nonce:
            verdict = Verdict.STALE  # still apply its subscription changes (spec)
        for name in request.resource_names_subscribe:
            if name == "*":
                state.wildcard = True
                continue
            state.names.add(sys.intern(name))  # shared by the proxies that ask for it
            if not first:
                # The client asks again: it must get the resource even if we think it has it.
                state.sent.pop(name, None)
                state.holding = None
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
                continue
            state.names.discard(name)
            state.forget(name)
        # Subscriptions accumulate over requests: the bound is on the total.
        self._check_names(request.type_url, len(state.names))
        if request.resource_names_subscribe or request.resource_names_unsubscribe:
            self.subscription_changes += 1
            state.settled_on = None
        elif verdict is not Verdict.ACK:
            state.settled_on = None
        return verdict

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

    def _response(self, state: DeltaTypeState, snapshot: Snapshot) -> PreparedResponse | None:
        updates, removals = self._changes(state, snapshot)
        suspect = self._isolate_suspect(state, updates, len(removals))
        if suspect is not None:
            updates, removals = suspect, []
        if not updates and not removals:
            return None
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
        return PreparedResponse(tuple(updates), tuple(removals), system_version, head, tail)

    def _apply(self, state: DeltaTypeState, response: PreparedResponse) -> None:
        listeners = state.type_url == LISTENER
        for resource in response.sent:
            state.sent[resource.name] = resource.version
            if listeners:
                state.listener_refs[resource.name] = references(resource)
        for name in response.removed:
            state.sent[name] = _ABSENT
            state.listener_refs.pop(name, None)
        state.holding = None

    def _shared_key(self, state: DeltaTypeState) -> ResponseKey | None:
        """What the next ECDS response depends on, when nothing per stream is involved.

        Streams of one node class resolve to the same resources, so with the
        same subscription and the same versions held they get the same changes
        but for the nonce.
        """
        if state.type_url != ECDS:
            return None
        # The snapshot keeps it per class, so the class is not part of the key.
        holding = state.holding
        return (
            self.flavour,
            state.type_url,
            frozenset(state.names),
            state.wildcard,
            frozenset(state.sent.items()) if holding is None else holding,
        )
