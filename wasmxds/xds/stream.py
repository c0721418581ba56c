"""What SotW and delta streams share: per-type state, verdicts, nonces, NACKs, send order.

One subscription state per type (:class:`TypeStateBase`, as go-control-plane
shares one subscription type between its flavours) and one stream base
(:class:`StreamProtocol`) that owns the protocol steps both flavours take the
same way: creating a type's state within the limits, applying the ACK or NACK
of the response in flight, forgetting what leaves the subscription, holding
back removals a listener still needs, isolating the suspect after a NACK of
several resources, sharing a response within a node class, and sending. The
flavours say only what differs: how a request changes the subscription, what
the client holds, and what the next response is.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from wasmxds.errors import LimitExceeded, ProtocolError
from wasmxds.xds import wire
from wasmxds.xds.resources import PreparedResource, PreparedResponse, ResponseKey, references
from wasmxds.xds.types import ECDS, LISTENER, SEND_ORDER

if TYPE_CHECKING:
    from envoy.service.discovery.v3 import discovery_pb2

    from wasmxds.xds.node import NodeInfo
    from wasmxds.xds.snapshot import Snapshot

__all__ = [
    "DEFAULT_MAX_RESOURCE_NAMES",
    "MAX_TYPES",
    "NOTHING",
    "LimitExceeded",
    "ProtocolError",
    "StreamProtocol",
    "TypeStateBase",
    "Verdict",
    "listener_references",
    "send_rank",
    "versions_hash",
]


# Per stream and type. Envoy asks for one ECDS name per filter that references
# one, so real proxies stay far below; the bound keeps what one stream can make
# the server hold (names, per-name state) proportional to something sane.
DEFAULT_MAX_RESOURCE_NAMES = 1000
# xDS has about a dozen resource types; an ADS stream never needs more.
MAX_TYPES = 32
# DiscoveryResponse.nonce and DeltaDiscoveryResponse.nonce share a field number (5).
_NONCE_TAG = wire.varint(5 << 3 | 2)

NOTHING = PreparedResponse((), (), "", b"")
"""The shared answer "nothing to send": memoized like a response, never sent."""


class Verdict(enum.Enum):
    """What a request turned out to be."""

    INITIAL = "initial"
    ACK = "ack"
    NACK = "nack"
    UPDATE = "update"
    STALE = "stale"


def versions_hash(versions: Mapping[str, str]) -> str:
    """A short, stable digest of name → version pairs (a type's version_info)."""
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(versions):
        digest.update(f"{name}\0{versions[name]}\0".encode())
    return digest.hexdigest()


def send_rank(type_url: str) -> int:
    return SEND_ORDER.index(type_url) if type_url in SEND_ORDER else len(SEND_ORDER)


def listener_references(listeners: Iterable[PreparedResource]) -> frozenset[str]:
    """ECDS names referenced by these prepared listeners (from their tags)."""
    return frozenset().union(*(references(listener) for listener in listeners))


@dataclass(slots=True)
class TypeStateBase:
    """One resource type on one stream: what both flavours track."""

    type_url: str
    wildcard: bool = False
    """Subscribed to every resource of the type: ``*``, or legacy wildcard (an empty
    first request for LDS/CDS, as Envoy sends them)."""
    in_flight: str = ""
    """The nonce of the response awaiting an answer; "" when none is."""
    in_flight_resources: tuple[PreparedResource, ...] = ()
    """The resources that response carries (removals aside)."""
    last_nonce: str = ""
    sent_version: str = ""
    """The type's version in the latest response (SotW ``version_info``, delta
    ``system_version_info``)."""
    acked_version: str = ""
    rejected: dict[str, str] = field(default_factory=dict)
    """Name → version the client rejected on its own: not sent again until it changes."""
    suspects: set[str] = field(default_factory=set)
    """Names in a rejected response of several resources: each goes alone next."""
    last_error: str = ""
    nacks: int = 0
    last_outcome: str = ""
    """"ack" or "nack": how the client answered the latest response it answered."""
    holding: PreparedResponse | None = None
    """Stands for what the client holds, in place of the holding itself, in the key of
    a shared response: the last shared response sent, when everything held came from
    shared responses (streams of one class that took the same ones hold the same).
    None once anything else changed the holding: the key then lists it."""
    settled_on: Snapshot | None = None
    """The snapshot for which nothing is left to send (all of it sent, nothing held
    back), until a request other than a plain ACK changes the state. Lets the ACK
    of every push skip recomputing a response that would be empty."""

    def version_held(self, name: str) -> str | None:
        """The version of ``name`` the client holds (as far as this stream knows)."""
        raise NotImplementedError

    def drop_held(self, name: str) -> None:
        """Forget what the client holds under ``name``: it is no longer known."""
        raise NotImplementedError

    def references(self) -> frozenset[str]:
        """For LDS: the ECDS names the listeners the client holds reference."""
        raise NotImplementedError

    def forget(self, name: str) -> None:
        """Drop everything kept for ``name``: it left the subscription."""
        self.drop_held(name)
        self.rejected.pop(name, None)
        self.suspects.discard(name)


StateT = TypeVar("StateT", bound=TypeStateBase)


class StreamProtocol(Generic[StateT]):
    """What every stream flavour shares: per-type state, nonces, the send loop."""

    # Slots: a stream's objects are read on every push, and fewer of them (no
    # instance dict) is less memory per proxy and less for the collector to walk.
    __slots__ = (
        "_control_plane",
        "_nonce",
        "_send_order",
        "max_names",
        "node",
        "subscription_changes",
        "types",
    )

    flavour = ""
    """"sotw" or "delta" (metric label; keeps the flavours' shared responses apart)."""

    def __init__(
        self,
        node: NodeInfo,
        *,
        control_plane: bytes = b"",
        max_names: int = DEFAULT_MAX_RESOURCE_NAMES,
    ) -> None:
        self.node = node
        self.types: dict[str, StateT] = {}
        self.max_names = max_names
        self.subscription_changes = 0
        """Counts changes of what the stream subscribes to (types, names, wildcards), so
        the server re-indexes the stream only when it moved."""
        self._control_plane = control_plane
        self._nonce = 0
        self._send_order: list[str] = []

    # -- what the flavours define -------------------------------------------

    def _new_state(self, type_url: str) -> StateT:
        raise NotImplementedError

    def _response(self, state: StateT, snapshot: Snapshot) -> PreparedResponse | None:
        """The response due now for ``state``, None when nothing is.

        On the paths :meth:`_shared_key` allows, it must depend on the node
        class, the subscription and what is held only, and change nothing but
        ``settled_on``: other streams of the class reuse it.
        """
        raise NotImplementedError

    def _shared_key(self, state: StateT) -> ResponseKey | None:
        """What the next response depends on, when nothing but the subscription is involved."""
        raise NotImplementedError

    def _apply(self, state: StateT, response: PreparedResponse) -> None:
        """Record that the client holds what ``response`` sends and removes once applied."""
        raise NotImplementedError

    def _reject(self, state: StateT) -> None:
        """The client rejected the response in flight: keep from resending what it refused."""
        rejected = state.in_flight_resources
        if len(rejected) == 1:
            state.rejected[rejected[0].name] = rejected[0].version
        else:
            state.suspects.update(resource.name for resource in rejected)
        for resource in rejected:
            # Envoy may have applied some of them before failing on another;
            # we no longer know what it holds for these names.
            if state.version_held(resource.name) == resource.version:
                state.drop_held(resource.name)

    # -- requests -----------------------------------------------------------

    def _check_names(self, type_url: str, count: int) -> None:
        if count > self.max_names:
            raise LimitExceeded(
                f"the stream asks for {count} resource names of type {type_url}; wasmxds"
                f" serves at most {self.max_names} names of one type on one stream"
                " (its --max-resource-names flag)"
            )

    def _existing(self, type_url: str, *name_counts: int) -> StateT | None:
        """The state of ``type_url`` if the stream has one, once the request is found valid."""
        if not type_url:
            raise ProtocolError("type_url is required on an aggregated (ADS) stream")
        for count in name_counts:
            self._check_names(type_url, count)
        return self.types.get(type_url)

    def _add_type(self, type_url: str) -> StateT:
        if len(self.types) >= MAX_TYPES:
            raise LimitExceeded(
                f"the stream asks for a {len(self.types) + 1}th resource type ({type_url});"
                f" xDS has far fewer, and wasmxds allows at most {MAX_TYPES} on one stream"
            )
        state = self.types[type_url] = self._new_state(type_url)
        self._send_order = sorted(self.types, key=send_rank)
        self.subscription_changes += 1
        return state

    def _answer(
        self,
        state: StateT,
        request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest,
        acked_version: str,
    ) -> Verdict:
        """Apply the ACK, or the NACK (``error_detail``, the spec's preferred signal),
        of the response in flight."""
        if request.HasField("error_detail"):
            state.nacks += 1
            state.last_error = request.error_detail.message
            self._reject(state)
            state.last_outcome = "nack"
            state.in_flight = ""
            state.in_flight_resources = ()
            return Verdict.NACK
        self._acked(state, acked_version)
        return Verdict.ACK

    @staticmethod
    def _acked(state: StateT, acked_version: str) -> None:
        state.acked_version = acked_version
        state.last_outcome = "ack"
        state.in_flight = ""
        state.in_flight_resources = ()

    def accepted_version(self, type_url: str, name: str) -> str | None:
        """The version of ``name`` the client has accepted, as far as this stream knows:
        what it holds, unless that is still awaiting its ACK. None when nothing is."""
        state = self.types.get(type_url)
        if state is None or any(r.name == name for r in state.in_flight_resources):
            return None
        return state.version_held(name)

    def in_flight_versions(self, type_url: str) -> tuple[tuple[str, str], ...]:
        """(name, version) of each resource the response in flight for ``type_url`` carries."""
        state = self.types.get(type_url)
        return (
            () if state is None else tuple((r.name, r.version) for r in state.in_flight_resources)
        )

    def in_flight_names(self, type_url: str) -> list[str]:
        """Resources of the response for ``type_url`` awaiting an answer."""
        state = self.types.get(type_url)
        # Resources sent, not removals: a removal can name anything the client
        # claimed to hold, and these names become metric labels.
        return [] if state is None else [r.name for r in state.in_flight_resources]

    # -- responses ----------------------------------------------------------

    def _removal_blocked(self, type_url: str, name: str) -> bool:
        """Whether a listener the client may still be using references ECDS ``name``.

        The listener must drop the reference before the resource goes; until
        the LDS update is acknowledged the removal waits.
        """
        listeners = self.types.get(LISTENER)
        if type_url != ECDS or listeners is None:
            return False
        return bool(listeners.in_flight) or name in listeners.references()

    def _shareable(self, state: StateT) -> bool:
        """Whether the next response can depend on the class and subscription only.

        NACKed or suspect resources make it depend on this stream's history,
        and in listener mode ECDS removals wait for this stream's LDS ACK.
        """
        return not (state.rejected or state.suspects or LISTENER in self.types)

    @staticmethod
    def _isolate_suspect(
        state: TypeStateBase, resources: Sequence[PreparedResource], others: int = 0
    ) -> list[PreparedResource] | None:
        """After a NACK of several resources, the next response carries one of them alone.

        Returns that single-resource list (and forgets the suspect), or None when
        none of ``resources`` is under suspicion. ``others`` counts what else
        (removals) the response would have carried.
        """
        for resource in resources:
            if resource.name in state.suspects:
                state.suspects.discard(resource.name)
                if len(resources) + others > 1:
                    state.settled_on = None  # the rest goes once this one is answered
                return [resource]
        return None

    def _next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def _send(self, state: StateT, response: PreparedResponse, *, shared: bool = False) -> bytes:
        self._apply(state, response)
        # After _apply, which forgets the old token: every stream that sends this
        # shared response from the same holding ends up holding the same.
        state.holding = response if shared else None
        nonce = self._next_nonce()
        state.in_flight = state.last_nonce = nonce
        state.in_flight_resources = response.sent
        state.sent_version = response.version
        encoded = nonce.encode()
        # A nonce is a counter's digits: its length always fits in one varint byte.
        return b"".join(
            (
                response.head,
                _NONCE_TAG,
                wire.varint(len(encoded)),
                encoded,
                response.tail,
                self._control_plane,
            )
        )

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        """The serialized response to send now for ``type_url``, if any."""
        state = self.types.get(type_url)
        if state is None or state.in_flight or state.settled_on is snapshot:
            return None
        state.settled_on = snapshot
        key = self._shared_key(state) if self._shareable(state) else None
        if key is None:
            response = self._response(state, snapshot)
            return None if response is None else self._send(state, response)
        shared = snapshot.shared_response(self.node, key)
        if shared is None:
            # Computed from the class, the subscription and what is held only
            # (see _shared_key): every stream of the class in that state reuses it.
            shared = self._response(state, snapshot) or NOTHING
            snapshot.share_response(self.node, key, shared)
        return None if shared is NOTHING else self._send(state, shared, shared=True)

    def settled(self, snapshot: Snapshot) -> bool:
        """True when :meth:`responses` would send nothing now for ``snapshot``."""
        for state in self.types.values():
            if not state.in_flight and state.settled_on is not snapshot:
                return False
        return True

    def responses(self, snapshot: Snapshot) -> list[tuple[str, bytes]]:
        """Everything to send now as (type URL, payload), clusters first (make before break)."""
        out = []
        for type_url in self._send_order:
            payload = self.next_response(type_url, snapshot)
            if payload is not None:
                out.append((type_url, payload))
        return out
