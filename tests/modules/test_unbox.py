"""Unboxing gzip/tar layers around Wasm modules, with size caps that fail loudly."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from tests.modules.conftest import WASM
from wasmxds.errors import ModuleTooLargeError
from wasmxds.modules.unbox import is_wasm, unbox

MODULE = WASM + b"\x00" * 24  # a header plus some payload, so layers are distinguishable
LIMIT = 1 << 20


def make_tar(*entries: tuple[str, bytes | None]) -> bytes:
    """A ustar archive; an entry with ``None`` content is a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_is_wasm_needs_magic_and_version() -> None:
    """is_wasm accepts the 8-byte header and rejects the bare magic or other bytes."""
    assert is_wasm(WASM)
    assert not is_wasm(b"\0asm")
    assert not is_wasm(b"<html>\n</html>")


def test_plain_module_is_returned_unchanged() -> None:
    """A module that is already Wasm comes back as is."""
    assert unbox(MODULE, max_size=LIMIT) == MODULE


@pytest.mark.parametrize(
    "boxed",
    [
        pytest.param(gzip.compress(MODULE), id="gzip"),
        pytest.param(gzip.compress(gzip.compress(MODULE)), id="double-gzip"),
        pytest.param(make_tar(("plugin.wasm", MODULE)), id="tar"),
        pytest.param(gzip.compress(make_tar(("plugin.wasm", MODULE))), id="tar.gz"),
        pytest.param(make_tar(("plugin.wasm.gz", gzip.compress(MODULE))), id="tar-of-gzip"),
        pytest.param(gzip.compress(MODULE[:10]) + gzip.compress(MODULE[10:]), id="multi-member"),
    ],
)
def test_layers_are_peeled_until_wasm(boxed: bytes) -> None:
    """gzip, tar and their combinations unbox to the module inside."""
    assert unbox(boxed, max_size=LIMIT) == MODULE


def test_tar_takes_first_regular_file_skipping_directories() -> None:
    """A leading directory entry does not hide the module (Istio would fail here)."""
    boxed = make_tar(("dist/", None), ("dist/plugin.wasm", MODULE), ("README", b"docs"))
    assert unbox(boxed, max_size=LIMIT) == MODULE


def test_gzip_bomb_is_refused() -> None:
    """Inflation stops at the cap and raises instead of expanding a bomb in memory."""
    bomb = gzip.compress(b"\0" * (16 * LIMIT))
    assert len(bomb) < LIMIT
    with pytest.raises(ModuleTooLargeError, match="gzip layer"):
        unbox(bomb, max_size=LIMIT)


def test_tar_entry_over_the_cap_is_refused() -> None:
    """A tar member larger than the cap raises rather than being truncated."""
    boxed = make_tar(("plugin.wasm", MODULE + b"\0" * 2048))
    with pytest.raises(ModuleTooLargeError, match=r"plugin\.wasm"):
        unbox(boxed, max_size=1024)


def test_module_exactly_at_the_cap_is_accepted() -> None:
    """The cap is inclusive: a module of exactly max_size bytes unboxes."""
    assert unbox(gzip.compress(MODULE), max_size=len(MODULE)) == MODULE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x1f\x8b\x08\x00garbage-not-deflate", id="corrupt-gzip"),
        pytest.param(gzip.compress(MODULE)[:-6], id="truncated-gzip"),
        pytest.param(gzip.compress(MODULE) + b"trailing", id="gzip-trailing-garbage"),
        pytest.param(b"<html>not found</html>", id="html"),
        pytest.param(gzip.compress(b"just text, no module"), id="gzip-of-text"),
        pytest.param(make_tar(("docs/", None)), id="tar-without-files"),
    ],
)
def test_unboxing_failures_return_the_original_bytes(data: bytes) -> None:
    """Anything that cannot be unboxed to Wasm comes back untouched for the caller to reject."""
    assert unbox(data, max_size=LIMIT) == data


def test_unboxing_rounds_are_bounded() -> None:
    """Nesting deeper than max_rounds gives up and returns the original bytes."""
    boxed = MODULE
    for _ in range(5):
        boxed = gzip.compress(boxed)
    assert unbox(boxed, max_size=LIMIT, max_rounds=5) == MODULE
    assert unbox(boxed, max_size=LIMIT, max_rounds=4) == boxed
