"""Package a Wasm module as an OCI image and push it (``wasmxds push``), without Docker.

Two layouts, both readable by Istio and by wasmxds:

``artifact``
    Solo's Wasm artifact in the two-layer form Istio requires: the module as an
    ``application/vnd.module.wasm.content.layer.v1+wasm`` layer plus a
    runtime-config layer, config ``application/vnd.module.wasm.config.v1+json``.
``compat``
    An OCI image with one tar+gzip layer holding ``plugin.wasm`` (what the
    TSB example's ``docker build`` and ``meshctl wasm build`` produced); any
    container tool can copy or mirror it.

Images are reproducible: the same module always gives the same manifest
digest (fixed tar metadata, gzip without a timestamp, no creation time).
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any

from wasmxds.modules.oci.client import Repository
from wasmxds.modules.oci.layouts import WASM_ARTIFACT_CONFIG, WASM_ARTIFACT_LAYER
from wasmxds.modules.oci.manifest import OCI_MANIFEST

__all__ = ["PushLayout", "PushedImage", "build_image", "push_image"]

_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_TITLE = "org.opencontainers.image.title"
# The runtime config Solo's tooling writes for Envoy filters.
_RUNTIME_CONFIG = b'{"type":"envoy_proxy","abiVersions":[],"config":{}}'


class PushLayout(enum.StrEnum):
    ARTIFACT = "artifact"
    COMPAT = "compat"


@dataclass(frozen=True, slots=True)
class PushedImage:
    """An image ready to push: the manifest bytes and every blob it references."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}


def build_image(wasm: bytes, layout: PushLayout, *, name: str = "plugin.wasm") -> PushedImage:
    if layout is PushLayout.ARTIFACT:
        config = _RUNTIME_CONFIG
        layers = [
            _descriptor(WASM_ARTIFACT_LAYER, wasm, annotations={_TITLE: name}),
            _descriptor(WASM_ARTIFACT_CONFIG, config, annotations={_TITLE: "runtime-config.json"}),
        ]
        blobs = [wasm, config]
        config_descriptor = _descriptor(WASM_ARTIFACT_CONFIG, config)
    else:
        tar = _plugin_tar(wasm)
        layer = gzip.compress(tar, mtime=0)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"],
                },
            },
            separators=(",", ":"),
        ).encode()
        layers = [_descriptor(_OCI_LAYER, layer)]
        blobs = [layer, config]
        config_descriptor = _descriptor(_OCI_CONFIG, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_descriptor,
        "layers": layers,
    }
    data = json.dumps(manifest, indent=2).encode()
    return PushedImage(data, OCI_MANIFEST, {hashlib.sha256(b).hexdigest(): b for b in blobs})


def _plugin_tar(wasm: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("plugin.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o644, 0
        archive.addfile(info, io.BytesIO(wasm))
    return out.getvalue()


async def push_image(repo: Repository, tag: str, image: PushedImage) -> str:
    """Upload the blobs (skipping ones the registry has), then the manifest; its digest."""
    for data in image.blobs.values():
        await repo.upload_blob(data)
    return await repo.put_manifest(tag, image.media_type, image.manifest)
