"""What SotW and delta streams share: verdicts, errors, versions, send order."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.types import SEND_ORDER

if TYPE_CHECKING:
    from wasmxds.translate.node import NodeInfo
    from wasmxds.xds.snapshot import Snapshot

__all__ = [
    "ProtocolError",
    "StreamProtocol",
    "Verdict",
    "isolate_suspect",
    "listener_references",
    "send_rank",
    "versions_hash",
]


class ProtocolError(Exception):
    """The client broke the protocol; the stream should end with INVALID_ARGUMENT."""


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
    names: set[str] = set()
    for listener in listeners:
        names.update(getattr(listener.tag, "references", ()))
    return frozenset(names)


def isolate_suspect(
    resources: list[PreparedResource], suspects: set[str]
) -> list[PreparedResource] | None:
    """After a NACK of several resources, the next response carries one of them alone.

    Returns that single-resource list (and forgets the suspect), or None when
    none of ``resources`` is under suspicion.
    """
    for resource in resources:
        if resource.name in suspects:
            suspects.discard(resource.name)
            return [resource]
    return None


class _TypeState(Protocol):
    type_url: str
    in_flight: str
    settled_on: object


StateT = TypeVar("StateT", bound=_TypeState)


class StreamProtocol(Generic[StateT]):
    """What every stream flavour shares: per-type state, nonces, the send loop."""

    def __init__(self, node: NodeInfo, *, control_plane: bytes = b"") -> None:
        self.node = node
        self.types: dict[str, StateT] = {}
        self._control_plane = control_plane
        self._nonce = 0

    def _next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    def next_response(self, type_url: str, snapshot: Snapshot) -> bytes | None:
        raise NotImplementedError

    def settled(self, snapshot: Snapshot) -> bool:
        """True when :meth:`responses` would send nothing now for ``snapshot``."""
        return all(s.in_flight or s.settled_on is snapshot for s in self.types.values())

    def responses(self, snapshot: Snapshot) -> list[tuple[str, bytes]]:
        """Everything to send now as (type URL, payload), clusters first (make before break)."""
        out = []
        for type_url in sorted(self.types, key=send_rank):
            payload = self.next_response(type_url, snapshot)
            if payload is not None:
                out.append((type_url, payload))
        return out
