"""OCI and Docker manifests and indexes: parsing, validation, and choosing from an index.

Only the fields wasmxds needs are read, and each is checked for shape, so a
malformed manifest fails with a message naming the field instead of a
``KeyError`` deep inside the fetcher. Its size and nesting are bounded too: a
hostile registry's manifest nested thousands of levels deep is refused with a
sentence saying so, not an unexpected ``RecursionError``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wasmxds.errors import FetchError, UnknownLayoutError

__all__ = [
    "ACCEPT",
    "DOCKER_INDEX",
    "DOCKER_MANIFEST",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_DEPTH",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "ImageIndex",
    "ImageManifest",
    "choose_manifest",
    "parse_manifest",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_INDEXES = frozenset({OCI_INDEX, DOCKER_INDEX})
# What the manifests endpoint is asked for; registries pick the first they have.
ACCEPT = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_INDEX)
_DIGEST_PREFIX = "sha256:"
_HEX = frozenset("0123456789abcdef")
# Platforms in the order an index entry is preferred: a Wasm platform first (what
# Wasm tooling labels modules with), then what Istio's go-containerregistry picks.
_PLATFORM_PREFERENCE = (("wasip1", "wasm"), ("wasi", "wasm"), ("linux", "amd64"))
# The OCI distribution spec's size a registry must accept; the client stops reading there too.
MAX_MANIFEST_BYTES = 4 << 20
# A manifest nests 4 levels (manifest, layers, descriptor, annotations); allow plenty more.
MAX_MANIFEST_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A pointer to content: ``digest`` is the sha256 hex (no prefix)."""

    media_type: str
    digest: str
    size: int
    platform: tuple[str, str] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return f"sha256:{self.digest[:12]}"


@dataclass(frozen=True, slots=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    def media_types(self) -> str:
        """Every media type in the manifest, for "unknown layout" messages."""
        layers = ", ".join(layer.media_type for layer in self.layers) or "none"
        return f"manifest {self.media_type}, config {self.config.media_type}, layers [{layers}]"


@dataclass(frozen=True, slots=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]


def parse_manifest(data: bytes, content_type: str) -> ImageManifest | ImageIndex:
    """Parse a manifest or an index; the ``mediaType`` field wins over Content-Type."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise FetchError(
            f"the manifest is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest"
            " may be; the reference does not name an image manifest or index",
            retryable=False,
        )
    try:
        document = json.loads(data)
    except ValueError:
        raise FetchError("the manifest is not valid JSON", retryable=False) from None
    except RecursionError:
        # json's C decoder stops itself at the interpreter's recursion limit.
        raise _too_deep() from None
    if _deeper_than(document, MAX_MANIFEST_DEPTH):
        raise _too_deep()
    if not isinstance(document, dict):
        raise FetchError("the manifest is not a JSON object", retryable=False)
    declared = document.get("mediaType")
    media_type = declared if isinstance(declared, str) and declared else content_type
    media_type = media_type.split(";", 1)[0].strip()
    if media_type in _INDEXES or (not media_type and "manifests" in document):
        return ImageIndex(
            media_type or OCI_INDEX,
            tuple(
                _descriptor(item, f"manifests[{i}]")
                for i, item in enumerate(_list(document, "manifests"))
            ),
        )
    if media_type in _MANIFESTS or (not media_type and "layers" in document):
        config = document.get("config")
        return ImageManifest(
            media_type or OCI_MANIFEST,
            _descriptor(config, "config"),
            tuple(
                _descriptor(item, f"layers[{i}]")
                for i, item in enumerate(_list(document, "layers"))
            ),
        )
    raise UnknownLayoutError(
        f"the registry returned a manifest of type {media_type or 'unknown'!r}; expected one of"
        f" {', '.join(ACCEPT)}"
    )


def _too_deep() -> FetchError:
    return FetchError(
        f"the manifest nests JSON more than {MAX_MANIFEST_DEPTH} levels deep (an image manifest"
        " needs 4); the registry did not return an image manifest or index for this reference",
        retryable=False,
    )


def _deeper_than(document: object, limit: int) -> bool:
    """Whether JSON data nests more than ``limit`` levels; iterative, and stops early."""
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)
    return False


def choose_manifest(index: ImageIndex) -> Descriptor:
    """The entry to use: a Wasm platform, else linux/amd64, else the first image manifest.

    Entries that are not image manifests (nested indexes, attestations with the
    ``unknown/unknown`` platform) are never chosen.
    """
    usable = [
        entry
        for entry in index.manifests
        if entry.media_type in _MANIFESTS and entry.platform != ("unknown", "unknown")
    ]
    for wanted in _PLATFORM_PREFERENCE:
        for entry in usable:
            if entry.platform == wanted:
                return entry
    if usable:
        return usable[0]
    kinds = ", ".join(
        f"{e.media_type} {'/'.join(e.platform or ('?', '?'))}" for e in index.manifests
    )
    raise UnknownLayoutError(
        f"the image index lists no usable image manifest (found: {kinds or 'nothing'})"
    )


def _list(document: Mapping[str, object], name: str) -> Sequence[object]:
    value = document.get(name, [])
    if not isinstance(value, list):
        raise FetchError(f"manifest field {name!r} must be a list", retryable=False)
    return value


def _descriptor(value: object, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise FetchError(f"manifest field {where} must be a descriptor object", retryable=False)
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str):
        raise FetchError(f"manifest field {where}.mediaType is missing", retryable=False)
    if not isinstance(digest, str) or not _is_sha256(digest):
        raise FetchError(
            f"manifest field {where}.digest must be sha256: and 64 hex characters",
            retryable=False,
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FetchError(
            f"manifest field {where}.size must be a non-negative integer", retryable=False
        )
    platform = None
    found = value.get("platform")
    if isinstance(found, dict):
        os_name, arch = found.get("os"), found.get("architecture")
        if isinstance(os_name, str) and isinstance(arch, str):
            platform = (os_name, arch)
    annotations_value = value.get("annotations")
    annotations = (
        {str(k): str(v) for k, v in annotations_value.items()}
        if isinstance(annotations_value, dict)
        else {}
    )
    return Descriptor(media_type, digest[len(_DIGEST_PREFIX) :], size, platform, annotations)


def _is_sha256(digest: str) -> bool:
    hex_part = digest[len(_DIGEST_PREFIX) :]
    return digest.startswith(_DIGEST_PREFIX) and len(hex_part) == 64 and set(hex_part) <= _HEX
