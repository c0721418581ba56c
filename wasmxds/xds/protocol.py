"""What SotW and delta streams share: verdicts, errors, versions, send order."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping

from wasmxds.xds.resources import PreparedResource
from wasmxds.xds.types import SEND_ORDER

__all__ = [
    "ProtocolError",
    "Verdict",
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
