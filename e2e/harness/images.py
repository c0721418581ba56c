"""Build Wasm images in every layout and push them with ``oras`` (oras-py), an independent client.

The images are built here by hand, byte for byte, from the specs (solo.io's
Wasm image spec, the CNCF Wasm OCI artifact, Maistra's extension image), and
pushed through oras-py, so what wasmxds pulls in tests was never touched by
wasmxds's own registry client. Tar layers are deterministic (fixed mtime,
owner and mode), so digests are stable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import oras.container
import oras.provider

__all__ = [
    "Image",
    "OrasPusher",
    "artifact_image",
    "cncf_image",
    "compat_image",
    "index_image",
    "maistra_image",
    "tar_layer",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
CNCF_CONFIG = "application/vnd.wasm.config.v0+json"
CNCF_LAYER = "application/wasm"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """A manifest (or index) and the blobs it needs; ``digest`` is the manifest's sha256 hex."""

    manifest: bytes
    media_type: str
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def _descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{sha256(data)}", "size": len(data), **extra}


def _image(
    media_type: str,
    config: tuple[str, bytes],
    layers: Sequence[tuple[str, bytes]],
    **extra: Any,
) -> Image:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _descriptor(*config),
        "layers": [_descriptor(t, d) for t, d in layers],
        **extra,
    }
    blobs = {sha256(d): d for _, d in (config, *layers)}
    return Image(json.dumps(document, indent=2).encode(), media_type, blobs)


def tar_layer(files: Mapping[str, bytes | tarfile.TarInfo], *, compress: bool = True) -> bytes:
    """A deterministic tar(.gz); a TarInfo value adds that entry as is (links, odd names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in files.items():
            if isinstance(content, tarfile.TarInfo):
                archive.addfile(content)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            archive.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def _image_config(layers: Sequence[bytes]) -> bytes:
    diff_ids = [f"sha256:{sha256(gzip.decompress(layer))}" for layer in layers]
    return json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()


def artifact_image(wasm: bytes, *, runtime_config: bool = True) -> Image:
    """Solo's Wasm artifact; with ``runtime_config`` the two-layer form Istio requires."""
    config = b'{"type":"envoy_proxy","abiVersions":["v0-097b7f2e4cc1fb490cc1943d0d633655ac3c522f"]}'
    layers = [(WASM_LAYER, wasm)]
    if runtime_config:
        layers.append((WASM_CONFIG, config))
    return _image(OCI_MANIFEST, (WASM_CONFIG, config), layers)


def cncf_image(wasm: bytes) -> Image:
    config = json.dumps(
        {
            "created": "2024-01-01T00:00:00Z",
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [f"sha256:{sha256(wasm)}"],
        }
    ).encode()
    return _image(
        OCI_MANIFEST, (CNCF_CONFIG, config), [(CNCF_LAYER, wasm)], artifactType=CNCF_CONFIG
    )


def compat_image(
    wasm: bytes,
    *,
    docker: bool = False,
    path: str = "plugin.wasm",
    extra_files: Mapping[str, bytes] | None = None,
) -> Image:
    layer = tar_layer({**(extra_files or {}), path: wasm})
    if docker:
        return _image(
            DOCKER_MANIFEST, (DOCKER_CONFIG, _image_config([layer])), [(DOCKER_LAYER, layer)]
        )
    return _image(OCI_MANIFEST, (OCI_CONFIG, _image_config([layer])), [(OCI_LAYER, layer)])


def maistra_image(wasm: bytes, *, module: str = "extension.wasm") -> Image:
    """What ``FROM scratch / ADD manifest.yaml / ADD extension.wasm`` builds: two layers."""
    manifest = (
        "schemaVersion: 1\nname: header-filter\ndescription: test\nversion: 1.0.0\n"
        f"phase: PostAuthZ\npriority: 100\nmodule: {module}\n"
    ).encode()
    layers = [tar_layer({"manifest.yaml": manifest}), tar_layer({module: wasm})]
    return _image(
        DOCKER_MANIFEST,
        (DOCKER_CONFIG, _image_config(layers)),
        [(DOCKER_LAYER, layer) for layer in layers],
    )


def index_image(entries: Sequence[tuple[Image, str, str]]) -> Image:
    """An OCI index over already-built images, each with (os, architecture)."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": f"sha256:{image.digest}",
                "size": len(image.manifest),
                "platform": {"os": os_name, "architecture": arch},
            }
            for image, os_name, arch in entries
        ],
    }
    return Image(json.dumps(document).encode(), OCI_INDEX)


class OrasPusher:
    """Pushes :class:`Image` values with oras-py (synchronous: use ``asyncio.to_thread``)."""

    def __init__(
        self,
        host: str,
        *,
        tls_ca: Path | None = None,
        basic: tuple[str, str] | None = None,
        token_auth: bool = False,
    ) -> None:
        backend = "basic" if basic is not None and not token_auth else "token"
        self.registry = oras.provider.Registry(
            hostname=host,
            insecure=tls_ca is None,
            tls_verify=str(tls_ca) if tls_ca is not None else False,
            auth_backend=backend,
        )
        # Never read the developer's docker config.
        self.registry.auth._auth_config = {"auths": {}}
        if basic is not None:
            self.registry.auth.set_basic_auth(*basic)
        self.host = host

    def push(self, repository: str, tag: str, image: Image) -> str:
        container = oras.container.Container(f"{self.host}/{repository}:{tag}")
        with tempfile.TemporaryDirectory() as tmp:
            for digest, data in image.blobs.items():
                path = Path(tmp) / digest
                path.write_bytes(data)
                layer = {
                    "mediaType": "application/octet-stream",
                    "digest": f"sha256:{digest}",
                    "size": len(data),
                }
                response = self.registry.upload_blob(str(path), container, layer)
                if response.status_code not in (200, 201, 202):
                    raise RuntimeError(
                        f"blob upload failed: {response.status_code} {response.text}"
                    )
        url = f"{self.registry.prefix}://{container.manifest_url(tag)}"
        response = self.registry.do_request(
            url, "PUT", headers={"Content-Type": image.media_type}, data=image.manifest
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"manifest upload failed: {response.status_code} {response.text}")
        return image.digest

    def push_index(self, repository: str, tag: str, children: Sequence[Image], index: Image) -> str:
        for child in children:
            self.push(repository, f"child-{child.digest[:32]}", child)
        return self.push(repository, tag, index)

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        container = oras.container.Container(f"{self.host}/{repository}:{reference}")
        accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST]
        result: dict[str, Any] = self.registry.get_manifest(container, accept)
        return result

    def blob(self, repository: str, digest: str) -> bytes:
        container = oras.container.Container(f"{self.host}/{repository}:unused")
        response = self.registry.get_blob(container, f"sha256:{digest}")
        if response.status_code != 200:
            raise RuntimeError(f"blob download failed: {response.status_code}")
        data: bytes = response.content
        return data
