"""Resources as they go on the wire: serialized and hashed once, shared by every stream."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

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
    "secret_versions_exist",
    "shown_version",
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
    display: message.Message | None = None
    """What debug pages show instead of ``message``: the same resource with every value
    that came from a Secret masked. None when the resource holds no such value."""


Tag = EcdsTag | ListenerTag | None

# Versions are content hashes, values from Secrets included, and must stay so on the
# wire (replicas must agree, and a Secret edit must change them). Shown as they are, a
# reader of a debug page who knows the rest of a resource (the masked dump shows it)
# tests guesses of a short value offline. So debug pages show an HMAC of such a
# version under a key that lives and dies with the process: stable within it (a
# change still shows), meaningless outside it. Versions are remembered as strings
# because delta streams hold versions only; the bound is far above any fleet's
# distinct versions between restarts, and forgetting one only ever shows an HMAC.
_DISPLAY_KEY = secrets.token_bytes(32)
_SECRET_VERSIONS: dict[str, None] = {}
_MAX_SECRET_VERSIONS = 1 << 16


def _carries_secret_values(tag: Tag) -> bool:
    return isinstance(tag, EcdsTag) and tag.display is not None


def _remember(version: str) -> None:
    _SECRET_VERSIONS[version] = None
    if len(_SECRET_VERSIONS) > _MAX_SECRET_VERSIONS:
        del _SECRET_VERSIONS[next(iter(_SECRET_VERSIONS))]


def secret_versions_exist() -> bool:
    """Whether this process prepared a resource with values from Secrets: then every
    version derived from resource versions (a type's, a snapshot's) is shown masked."""
    return bool(_SECRET_VERSIONS)


def shown_version(version: str, *, secret: bool = False) -> str:
    """``version`` as debug pages and the CLI show it: an HMAC (``h:`` prefix) when it
    is, or derives from, the version of a resource with values from Secrets."""
    if not (secret or version in _SECRET_VERSIONS):
        return version
    return "h:" + hmac.new(_DISPLAY_KEY, version.encode(), hashlib.sha256).hexdigest()[:16]


# weakref_slot: a snapshot's listener dedup table holds them weakly.
@dataclass(frozen=True, slots=True, eq=False, weakref_slot=True)
class PreparedResource:
    """One named resource at one version.

    ``version`` is a content hash, so it is stable across restarts and equal
    content always has the same version; debug pages show it through
    :func:`shown_version` (it may be an oracle for values from Secrets).
    ``sotw_field`` and ``delta_field`` are the resource already encoded as the
    repeated field of a SotW and a delta response. ``tag`` is what the streams
    need to know besides the bytes (see :class:`EcdsTag`, :class:`ListenerTag`).
    """

    name: str
    type_url: str
    version: str
    # The content stays out of reprs: it may hold pluginConfig values from Secrets.
    message: message.Message = field(repr=False)
    sotw_field: bytes = field(repr=False)
    delta_field: bytes = field(repr=False)
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
    if _carries_secret_values(tag):
        _remember(version)
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
    # What the stream holds: its content, or the shared response that stands for it.
    frozenset[tuple[str, PreparedResource]] | frozenset[tuple[str, str]] | PreparedResponse,
]
"""What a response shared within a node class depends on: flavour, type URL, names
subscribed, wildcard, and what the stream holds (name → resource for SotW, name →
version for delta). A plain tuple: it is built and hashed per stream on every push."""
