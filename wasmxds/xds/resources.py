"""Resources as they go on the wire: serialized and hashed once, shared by every stream."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf import message

from wasmxds.xds import wire

__all__ = [
    "EcdsTag",
    "ListenerTag",
    "PreparedResource",
    "PreparedResponse",
    "ResponseKey",
    "Tag",
    "prepare",
    "references",
]

# Field numbers in envoy.service.discovery.v3 (discovery.proto).
_SOTW_RESOURCES = 2  # DiscoveryResponse.resources (repeated Any)
_DELTA_RESOURCES = 2  # DeltaDiscoveryResponse.resources (repeated Resource)
_RESOURCE_NAME = 3  # Resource.name
_RESOURCE_VERSION = 1  # Resource.version
_RESOURCE_BODY = 2  # Resource.resource (Any)


@dataclass(frozen=True, slots=True)
class ListenerTag:
    """The ECDS names a prepared listener references (their removal waits for it)."""

    references: frozenset[str]


@dataclass(frozen=True, slots=True, eq=False)
class EcdsTag:
    """What the streams must know of a prepared ECDS resource besides its bytes."""

    noop: bool
    """The allow-all filter a proxy the plugin does not apply to gets: delta removes instead."""
    placeholder: PreparedResource | None = None
    """What replaces this resource on a SotW stream once its plugin is gone (SotW
    cannot remove): the no-op of the same filter chain. None for the no-op itself."""


Tag = EcdsTag | ListenerTag | None


# weakref_slot: a snapshot's listener dedup table holds them weakly.
@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class PreparedResource:
    """One named resource at one version.

    ``version`` is a content hash, so it is stable across restarts and equal
    content always has the same version. ``sotw_field`` and ``delta_field`` are
    the resource already encoded as the repeated field of a SotW and a delta
    response. ``tag`` is what the streams need to know besides the bytes (see
    :class:`EcdsTag`, :class:`ListenerTag`).
    """

    name: str
    type_url: str
    version: str
    message: message.Message
    sotw_field: bytes
    delta_field: bytes
    tag: Tag = None


def references(resource: PreparedResource) -> frozenset[str]:
    """The ECDS names ``resource`` references: a listener's, from its tag; none otherwise."""
    return resource.tag.references if isinstance(resource.tag, ListenerTag) else frozenset()


def prepare(name: str, msg: message.Message, *, tag: Tag = None) -> PreparedResource:
    """Serialize ``msg`` deterministically, hash it and pre-encode both response forms."""
    value = msg.SerializeToString(deterministic=True)
    type_url = "type.googleapis.com/" + msg.DESCRIPTOR.full_name
    any_bytes = wire.string_field(1, type_url) + wire.length_delimited(2, value)
    version = hashlib.sha256(any_bytes).hexdigest()[:16]
    resource = (
        wire.string_field(_RESOURCE_NAME, name)
        + wire.string_field(_RESOURCE_VERSION, version)
        + wire.length_delimited(_RESOURCE_BODY, any_bytes)
    )
    return PreparedResource(
        name=name,
        type_url=type_url,
        version=version,
        message=msg,
        sotw_field=wire.length_delimited(_SOTW_RESOURCES, any_bytes),
        delta_field=wire.length_delimited(_DELTA_RESOURCES, resource),
        tag=tag,
    )


@dataclass(frozen=True, slots=True, eq=False)
class PreparedResponse:
    """A response to send, minus its nonce; shared by every stream of a class in one state."""

    sent: tuple[PreparedResource, ...]
    removed: tuple[str, ...]
    """Names it removes (delta only)."""
    version: str
    """The type's version (SotW ``version_info``, delta ``system_version_info``) once applied."""
    head: bytes
    """The fields before the nonce: version, resources, type URL."""
    tail: bytes = b""
    """The fields between the nonce and the control plane: removals."""


ResponseKey = tuple[
    str,
    str,
    frozenset[str],
    bool,
    frozenset[tuple[str, PreparedResource]] | frozenset[tuple[str, str]],
]
"""What a response shared within a node class depends on: flavour, type URL, names
subscribed, wildcard, and what the stream holds (name → resource for SotW, name →
version for delta). A plain tuple: it is built and hashed per stream on every push."""
