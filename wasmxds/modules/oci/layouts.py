"""Every way Wasm modules are packaged in OCI images, and how to take the module out.

Tried in this order (Istio's order for the ones it knows, ``pkg/wasm/imagefetcher.go``):

``wasm-artifact``
    Solo's Wasm artifact ("oci" variant): a layer of type
    ``application/vnd.module.wasm.content.layer.v1+wasm`` holding the raw module,
    alone or next to a runtime-config layer (Istio insists on exactly two layers;
    ``oras push`` with ``--manifest-config`` makes one, so one is accepted too).
``cncf-wasm``
    The CNCF TAG-Runtime Wasm artifact: config ``application/vnd.wasm.config.v0+json``
    and one ``application/wasm`` layer. Istio does not read it.
``docker-compat`` / ``oci-compat``
    Solo's "compat" variant: a Docker or OCI image whose last layer (tar+gzip)
    holds a file named ``plugin.wasm`` in any directory (the first one wins).
``maistra``
    Maistra's ServiceMeshExtension image: ``manifest.yaml`` at the root of the
    image filesystem names the module file in ``module:``. Both files may sit
    in any layer; later layers win, as when the image is unpacked.

Anything else fails with :class:`UnknownLayoutError` listing the media types found.
"""

from __future__ import annotations

import asyncio
import enum
import posixpath
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from wasmxds.errors import ModuleTooLargeError, UnknownLayoutError, UnsafeLayerError
from wasmxds.modules.oci.manifest import DOCKER_MANIFEST, Descriptor, ImageManifest
from wasmxds.modules.oci.tarlayer import TAR_TYPES, layer_files, normalize_member

__all__ = [
    "CNCF_WASM_CONFIG",
    "CNCF_WASM_LAYER",
    "WASM_ARTIFACT_CONFIG",
    "WASM_ARTIFACT_LAYER",
    "Layout",
    "extract_module",
]

WASM_ARTIFACT_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_ARTIFACT_CONFIG = "application/vnd.module.wasm.config.v1+json"
CNCF_WASM_CONFIG = "application/vnd.wasm.config.v0+json"
CNCF_WASM_LAYER = "application/wasm"
_PLUGIN_WASM = "plugin.wasm"
_MAISTRA_MANIFEST = "manifest.yaml"
_MAX_MAISTRA_MANIFEST = 64 << 10
# A Maistra image is two or three ADD layers; stop looking through base images.
_MAX_TAR_LAYERS = 8

# Downloads a layer to a file the caller of extract_module owns (and removes).
BlobReader = Callable[[Descriptor], Awaitable[Path]]


class Layout(enum.StrEnum):
    WASM_ARTIFACT = "wasm-artifact"
    CNCF_WASM = "cncf-wasm"
    DOCKER_COMPAT = "docker-compat"
    OCI_COMPAT = "oci-compat"
    MAISTRA = "maistra"


@dataclass(frozen=True, slots=True)
class Extracted:
    """The module: the downloaded layer at ``path`` (a raw Wasm layer, never read into
    memory), or ``data`` taken out of a tar layer."""

    layout: Layout
    path: Path | None = None
    digest: str = ""  # of the file at ``path``, verified while downloading
    data: bytes = b""


async def extract_module(
    manifest: ImageManifest, read_blob: BlobReader, *, max_size: int
) -> Extracted:
    """The module (not yet checked to be Wasm) and the layout it came in."""
    raw = _raw_layer(manifest)
    if raw is not None:
        layout, layer = raw
        return Extracted(layout, path=await read_blob(layer), digest=layer.digest)
    tar_layers = [layer for layer in manifest.layers if layer.media_type in TAR_TYPES]
    if not tar_layers or manifest.layers[-1].media_type not in TAR_TYPES:
        raise _unknown(manifest, "no Wasm layer and no tar layer last")
    last = manifest.layers[-1]
    files = await _files(last, read_blob, max_size, _compat_or_maistra)
    plugin = next((data for name, data in files.items() if _is_plugin_wasm(name)), None)
    if plugin is not None:
        layout = (
            Layout.DOCKER_COMPAT if manifest.media_type == DOCKER_MANIFEST else Layout.OCI_COMPAT
        )
        return Extracted(layout, data=plugin)
    return await _maistra(manifest, tar_layers, files, read_blob, max_size)


def _raw_layer(manifest: ImageManifest) -> tuple[Layout, Descriptor] | None:
    for layout, media_type in (
        (Layout.WASM_ARTIFACT, WASM_ARTIFACT_LAYER),
        (Layout.CNCF_WASM, CNCF_WASM_LAYER),
    ):
        layers = [layer for layer in manifest.layers if layer.media_type == media_type]
        if len(layers) > 1:
            raise _unknown(manifest, f"{len(layers)} layers of type {media_type}; expected one")
        if layers:
            return layout, layers[0]
    if manifest.config.media_type == CNCF_WASM_CONFIG:
        raise _unknown(manifest, f"a {CNCF_WASM_CONFIG} config without an {CNCF_WASM_LAYER} layer")
    return None


def _is_plugin_wasm(name: str) -> bool:
    return posixpath.basename(name) == _PLUGIN_WASM


def _compat_or_maistra(name: str) -> bool:
    return _is_plugin_wasm(name) or _maistra_files(name)


async def _files(
    layer: Descriptor,
    read_blob: BlobReader,
    max_size: int,
    wanted: Callable[[str], bool],
) -> dict[str, bytes]:
    blob = await read_blob(layer)
    label = f"layer {layer.short}"
    return await asyncio.to_thread(
        layer_files, blob, layer.media_type, max_size=max_size, label=label, wanted=wanted
    )


async def _maistra(
    manifest: ImageManifest,
    tar_layers: list[Descriptor],
    last_files: dict[str, bytes],
    read_blob: BlobReader,
    max_size: int,
) -> Extracted:
    """Find ``manifest.yaml`` and then its ``module:`` file, newest layer first.

    Each layer is read once, keeping ``manifest.yaml`` and every ``.wasm`` file
    (the module's name is not known until the manifest is found, and the two
    are usually added in separate layers).
    """
    union = dict(last_files)
    module_path = _module_path(union[_MAISTRA_MANIFEST]) if _MAISTRA_MANIFEST in union else None
    for layer in list(reversed(tar_layers))[1:_MAX_TAR_LAYERS]:
        if module_path is not None and module_path in union:
            break
        wanted = _maistra_files if module_path is None else _exactly(module_path)
        for name, data in (await _files(layer, read_blob, max_size, wanted)).items():
            union.setdefault(name, data)  # newer layers shadow older ones
        if module_path is None and _MAISTRA_MANIFEST in union:
            module_path = _module_path(union[_MAISTRA_MANIFEST])
    if module_path is None:
        raise _unknown(
            manifest, f"no {_PLUGIN_WASM} in the last layer and no {_MAISTRA_MANIFEST} at the root"
        )
    if module_path not in union:
        raise UnknownLayoutError(
            f"{_MAISTRA_MANIFEST} names module {module_path!r}, which no layer of the image holds"
        )
    return Extracted(Layout.MAISTRA, data=union[module_path])


def _maistra_files(name: str) -> bool:
    return name == _MAISTRA_MANIFEST or name.endswith(".wasm")


def _exactly(path: str) -> Callable[[str], bool]:
    return lambda name: name == path


def _module_path(descriptor: bytes) -> str:
    if len(descriptor) > _MAX_MAISTRA_MANIFEST:
        raise ModuleTooLargeError(f"{_MAISTRA_MANIFEST} is over {_MAX_MAISTRA_MANIFEST} bytes")
    try:
        document = yaml.safe_load(descriptor)
    except yaml.YAMLError:
        raise UnknownLayoutError(f"{_MAISTRA_MANIFEST} at the image root is not YAML") from None
    module = document.get("module") if isinstance(document, dict) else None
    if not isinstance(module, str) or not module.strip():
        raise UnknownLayoutError(
            f"{_MAISTRA_MANIFEST} at the image root has no 'module:' naming the .wasm file"
        )
    path = normalize_member(module.strip())
    if not path:
        raise UnsafeLayerError(
            f"{_MAISTRA_MANIFEST} names module {module!r}, which escapes the image filesystem"
        )
    return path


def _unknown(manifest: ImageManifest, why: str) -> UnknownLayoutError:
    return UnknownLayoutError(
        f"no Wasm module in any known layout ({why}); found {manifest.media_types()}; known:"
        f" {WASM_ARTIFACT_LAYER} layer, {CNCF_WASM_LAYER} layer, or a tar layer with"
        f" {_PLUGIN_WASM} or {_MAISTRA_MANIFEST}"
    )
