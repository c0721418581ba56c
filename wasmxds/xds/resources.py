"""Resources as they go on the wire: serialized and hashed once, shared by every stream."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, message

from wasmxds.xds import wire

__all__ = ["PreparedResource", "prepare"]

# Field numbers in envoy.service.discovery.v3 (discovery.proto).
_SOTW_RESOURCES = 2  # DiscoveryResponse.resources (repeated Any)
_DELTA_RESOURCES = 2  # DeltaDiscoveryResponse.resources (repeated Resource)
_RESOURCE_NAME = 3  # Resource.name
_RESOURCE_VERSION = 1  # Resource.version
_RESOURCE_BODY = 2  # Resource.resource (Any)


@dataclass(frozen=True, slots=True, eq=False)
class PreparedResource:
    """One named resource at one version.

    ``version`` is a content hash, so it is stable across restarts and equal
    content always has the same version. ``sotw_field`` and ``delta_field`` are
    the resource already encoded as the repeated field of a SotW and a delta
    response. ``tag`` is free-form metadata the snapshot attaches (what kind of
    filter this is, whether it is a stand-in) for the stream state and debug views.
    """

    name: str
    type_url: str
    version: str
    message: message.Message
    sotw_field: bytes
    delta_field: bytes
    tag: object = None

    def body(self) -> any_pb2.Any:
        packed = any_pb2.Any()
        packed.Pack(self.message)
        return packed


def prepare(name: str, msg: message.Message, *, tag: object = None) -> PreparedResource:
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


def decode_sotw(payload: bytes) -> discovery_pb2.DiscoveryResponse:
    """Parse an assembled response (tests and debugging)."""
    return discovery_pb2.DiscoveryResponse.FromString(payload)
