"""Peel gzip and tar layers off a downloaded module, as Istio's ``unboxIfPossible`` does.

Modules served over http(s) are often published as ``plugin.wasm.gz``,
``plugin.tar`` or ``plugin.tar.gz``. Istio repeatedly gunzips, or takes the first
tar entry, until the bytes are Wasm, and returns the original bytes when a layer
cannot be opened (the caller then reports "not Wasm"). We keep those semantics
with two differences: we take the first *regular file* of a tar (Istio takes the
first entry, so a leading directory entry defeats it), and size limits fail
loudly with :class:`ModuleTooLargeError` instead of silently truncating.

Everything here is CPU-bound and synchronous; callers run it off the event loop.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path

from wasmxds.errors import ModuleTooLargeError

__all__ = ["DEFAULT_MAX_ROUNDS", "WASM_MAGIC", "is_wasm", "read_header", "unbox"]

WASM_MAGIC = b"\0asm"
# The magic plus the 4-byte version: Istio's isValidWasmBinary wants at least this much.
WASM_HEADER_LEN = 8
_GZIP_MAGIC = b"\x1f\x8b"
_USTAR_MAGIC = b"ustar"
_USTAR_MAGIC_OFFSET = 257
# A real module needs two or three layers (tar inside gzip, maybe gzip inside tar);
# the bound stops a crafted self-reproducing gzip ("quine") from looping forever.
DEFAULT_MAX_ROUNDS = 8
# zlib: gzip container only, with header and trailer checks.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# Inflate in bounded slices so the cap is enforced while inflating, not after a
# bomb has been expanded in memory.
_INFLATE_STEP = 1 << 20


def is_wasm(data: bytes) -> bool:
    """True when ``data`` looks like a WebAssembly binary (magic and version present)."""
    return len(data) >= WASM_HEADER_LEN and data.startswith(WASM_MAGIC)


def read_header(path: Path) -> bytes:
    """The first bytes of the file at ``path``: enough for :func:`is_wasm`."""
    with open(path, "rb") as module:
        return module.read(WASM_HEADER_LEN)


def unbox(data: bytes, *, max_size: int, max_rounds: int = DEFAULT_MAX_ROUNDS) -> bytes:
    """Return the Wasm module inside ``data``, or ``data`` itself when it cannot be unboxed.

    Raises :class:`ModuleTooLargeError` when a layer would unpack to more than
    ``max_size`` bytes. Corrupt or unknown layers are not errors here: the
    original bytes come back and the caller's Wasm check reports them.
    """
    current = data
    for _ in range(max_rounds):
        if is_wasm(current):
            return current
        if current.startswith(_GZIP_MAGIC):
            inner = _gunzip(current, max_size)
        elif _is_ustar(current):
            inner = _first_tar_file(current, max_size)
        else:
            return data
        if inner is None:
            return data
        current = inner
    return current if is_wasm(current) else data


def _is_ustar(data: bytes) -> bool:
    end = _USTAR_MAGIC_OFFSET + len(_USTAR_MAGIC)
    return len(data) > end and data[_USTAR_MAGIC_OFFSET:end] == _USTAR_MAGIC


def _gunzip(data: bytes, max_size: int) -> bytes | None:
    """Inflate every gzip member of ``data`` (Go's reader is multistream too)."""
    out = bytearray()
    remaining = data
    try:
        while True:
            inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
            pending = remaining
            while not inflater.eof:
                # Never ask for more than one byte past the cap (enough to know it was
                # exceeded), and at most a slice at a time to avoid holding two copies.
                limit = min(max_size - len(out) + 1, _INFLATE_STEP)
                piece = inflater.decompress(pending, limit)
                out += piece
                if len(out) > max_size:
                    raise ModuleTooLargeError(
                        f"gzip layer unpacks to more than the {max_size}-byte limit"
                    )
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    return None  # input ended before the gzip trailer: truncated
            remaining = inflater.unused_data
            if not remaining.strip(b"\0"):
                return bytes(out)
            if not remaining.startswith(_GZIP_MAGIC):
                return None  # trailing garbage after the last member
    except zlib.error:
        return None


def _first_tar_file(data: bytes, max_size: int) -> bytes | None:
    """The content of the first regular file in an uncompressed tar archive."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                if not member.isreg():
                    continue
                if member.size > max_size:
                    raise ModuleTooLargeError(
                        f"tar entry {member.name!r} is {member.size} bytes,"
                        f" over the {max_size}-byte limit"
                    )
                extracted = archive.extractfile(member)
                if extracted is None:
                    return None
                content = extracted.read()
                return content if len(content) == member.size else None
    except (tarfile.TarError, EOFError, OSError):
        return None
    return None
