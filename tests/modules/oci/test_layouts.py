"""Every image layout yields the module; unknown and unsafe layouts fail with clear errors."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest

from e2e.harness.images import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    _image,
    artifact_image,
    cncf_image,
    compat_image,
    index_image,
    maistra_image,
    tar_layer,
)
from tests.modules.oci.conftest import WASM
from wasmxds.errors import FetchError, ModuleTooLargeError, UnknownLayoutError, UnsafeLayerError
from wasmxds.modules.oci.layouts import Layout, extract_module
from wasmxds.modules.oci.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    choose_manifest,
    parse_manifest,
)

MAX = 1 << 20


async def extract(image: Image, max_size: int = MAX) -> tuple[bytes, Layout]:
    manifest = parse_manifest(image.manifest, image.media_type)
    assert isinstance(manifest, ImageManifest)
    reads: list[str] = []

    with tempfile.TemporaryDirectory() as spool:

        async def read_blob(layer: Descriptor) -> Path:
            reads.append(layer.digest)
            path = Path(spool) / f"{len(reads)}.blob"
            path.write_bytes(image.blobs[layer.digest])
            return path

        extracted = await extract_module(manifest, read_blob, max_size=max_size)
        data = extracted.path.read_bytes() if extracted.path is not None else extracted.data
    return data, extracted.layout


@pytest.mark.parametrize(
    ("image", "layout"),
    [
        pytest.param(artifact_image(WASM), Layout.WASM_ARTIFACT, id="artifact-two-layers"),
        pytest.param(
            artifact_image(WASM, runtime_config=False),
            Layout.WASM_ARTIFACT,
            id="artifact-one-layer",
        ),
        pytest.param(cncf_image(WASM), Layout.CNCF_WASM, id="cncf"),
        pytest.param(compat_image(WASM), Layout.OCI_COMPAT, id="oci-compat"),
        pytest.param(compat_image(WASM, docker=True), Layout.DOCKER_COMPAT, id="docker-compat"),
        pytest.param(
            compat_image(WASM, path="./build/out/plugin.wasm"),
            Layout.OCI_COMPAT,
            id="compat-nested",
        ),
        pytest.param(maistra_image(WASM), Layout.MAISTRA, id="maistra-two-layers"),
        pytest.param(
            maistra_image(WASM, module="filters/ext.wasm"), Layout.MAISTRA, id="maistra-subdir"
        ),
    ],
)
async def test_every_layout_yields_the_module(image: Image, layout: Layout) -> None:
    """The module comes out byte for byte, and the layout is named."""
    assert await extract(image) == (WASM, layout)


async def test_maistra_in_one_layer() -> None:
    """manifest.yaml and the module in the same layer work too."""
    layer = tar_layer({"manifest.yaml": b"schemaVersion: 1\nmodule: m.wasm\n", "m.wasm": WASM})
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, layer)])
    assert await extract(image) == (WASM, Layout.MAISTRA)


async def test_compat_takes_the_first_plugin_wasm() -> None:
    """As in Istio, the first plugin.wasm in the last layer wins."""
    layer = tar_layer({"a/plugin.wasm": WASM, "b/plugin.wasm": WASM + b"x"})
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, layer)])
    assert await extract(image) == (WASM, Layout.OCI_COMPAT)


async def test_unknown_layout_lists_media_types() -> None:
    """A Helm chart (say) fails with every media type found, so the user sees what it is."""
    image = _image(
        OCI_MANIFEST,
        ("application/vnd.cncf.helm.config.v1+json", b"{}"),
        [("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"chart")],
    )
    with pytest.raises(UnknownLayoutError) as caught:
        await extract(image)
    message = str(caught.value)
    assert "application/vnd.cncf.helm.config.v1+json" in message
    assert "application/vnd.cncf.helm.chart.content.v1.tar+gzip" in message
    assert OCI_MANIFEST in message


async def test_tar_layer_without_module_is_unknown() -> None:
    """A compat-looking image without plugin.wasm or manifest.yaml says what is missing."""
    image = compat_image(WASM, path="filter.wasm")
    with pytest.raises(UnknownLayoutError, match=r"no plugin\.wasm .* no manifest\.yaml"):
        await extract(image)


async def test_maistra_module_missing() -> None:
    """manifest.yaml naming a file no layer holds is an error naming that file."""
    layer = tar_layer({"manifest.yaml": b"module: gone.wasm\n"})
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, layer)])
    with pytest.raises(UnknownLayoutError, match=r"gone\.wasm"):
        await extract(image)


def _link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("files", "match"),
    [
        pytest.param({"../../etc/plugin.wasm": WASM}, "escapes the layer", id="traversal"),
        pytest.param(
            {"ok.txt": b"x", "a/../../x": b"y", "plugin.wasm": WASM},
            "escapes",
            id="traversal-elsewhere",
        ),
        pytest.param(
            {"plugin.wasm": _link("plugin.wasm", "/etc/shadow")}, "symbolic link", id="symlink"
        ),
        pytest.param(
            {"real": WASM, "plugin.wasm": _link("plugin.wasm", "real", hard=True)},
            "hard link",
            id="hardlink",
        ),
    ],
)
async def test_unsafe_layers_are_refused(
    files: dict[str, bytes | tarfile.TarInfo], match: str
) -> None:
    """Path traversal anywhere, and links where the module should be, refuse the layer."""
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, tar_layer(files))])
    with pytest.raises(UnsafeLayerError, match=match):
        await extract(image)


async def test_maistra_module_path_cannot_escape() -> None:
    """A manifest.yaml whose module climbs out of the image is refused."""
    layer = tar_layer({"manifest.yaml": b"module: ../../host/evil.wasm\n"})
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, layer)])
    with pytest.raises(UnsafeLayerError, match="escapes"):
        await extract(image)


async def test_decompression_bomb_is_stopped_at_the_cap() -> None:
    """A small gzip layer that inflates past the limit is refused without inflating it all."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        info = tarfile.TarInfo("filler.bin")
        info.size = 64 * MAX
        archive.addfile(info, io.BytesIO(b"\0" * info.size))
    bomb = gzip.compress(raw.getvalue())
    assert len(bomb) < MAX // 4
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, bomb)])
    with pytest.raises(ModuleTooLargeError, match="unpacks to more than"):
        await extract(image)


async def test_oversized_artifact_layer_is_refused_by_the_client_limit() -> None:
    """A tar member larger than the cap is refused even when the stream itself fits."""
    layer = tar_layer({"plugin.wasm": WASM})
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, layer)])
    with pytest.raises(ModuleTooLargeError):
        await extract(image, max_size=len(WASM) // 2)


async def test_corrupt_tar_is_a_clear_error() -> None:
    """A layer that is not gzip+tar fails as unreadable, not with a traceback."""
    image = _image(OCI_MANIFEST, (OCI_CONFIG, b"{}"), [(OCI_LAYER, gzip.compress(b"not a tar"))])
    with pytest.raises(FetchError, match="not a readable tar"):
        await extract(image)


def test_index_prefers_wasm_then_linux_amd64() -> None:
    """From an index: a Wasm platform first, then linux/amd64, never an attestation."""
    a, b, c = compat_image(WASM), cncf_image(WASM), artifact_image(WASM)
    index = parse_manifest(
        index_image([(a, "linux", "arm64"), (c, "linux", "amd64"), (b, "wasip1", "wasm")]).manifest,
        "",
    )
    assert isinstance(index, ImageIndex)
    assert choose_manifest(index).digest == b.digest
    index = parse_manifest(
        index_image([(a, "unknown", "unknown"), (c, "linux", "amd64")]).manifest, ""
    )
    assert isinstance(index, ImageIndex)
    assert choose_manifest(index).digest == c.digest


def test_index_without_images_is_unknown() -> None:
    """An index of only attestations names what it found."""
    index = parse_manifest(index_image([(compat_image(WASM), "unknown", "unknown")]).manifest, "")
    assert isinstance(index, ImageIndex)
    with pytest.raises(UnknownLayoutError, match="no usable image manifest"):
        choose_manifest(index)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        (
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []},
            "config.mediaType",
        ),
        (
            {
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "x", "digest": "sha256:zz", "size": 1},
                "layers": [],
            },
            "config.digest",
        ),
        (
            {"mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
            "v1\\+prettyjws",
        ),
    ],
)
def test_malformed_manifests_name_the_field(document: dict[str, object], match: str) -> None:
    """Manifest shape errors say which field is wrong."""
    with pytest.raises((FetchError, UnknownLayoutError), match=match):
        parse_manifest(json.dumps(document).encode(), "")
