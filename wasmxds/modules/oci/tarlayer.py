"""Read files out of an image layer (a tar, usually gzipped) without trusting it.

The layer is read from the file it was downloaded to, as a stream; only the
wanted files are read into memory. A layer is refused as a whole when it

- has an entry whose path climbs out of the layer (``..``): nothing built
  honestly does that, so it marks a hostile or broken image;
- offers a wanted file as a symbolic or hard link (or any non-regular file):
  following it could read another entry, or mean something else on disk;
- unpacks to more than ``max_size`` bytes: the gzip stream is inflated in
  bounded steps and the tar read as a stream, so a small "decompression bomb"
  is stopped at the cap instead of being expanded in memory.

CPU-bound and synchronous; callers run it in a worker thread.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from wasmxds.errors import FetchError, ModuleTooLargeError, UnsafeLayerError

__all__ = ["GZIP_TYPES", "TAR_TYPES", "layer_files", "normalize_member"]

GZIP_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    }
)
TAR_TYPES = GZIP_TYPES | {"application/vnd.oci.image.layer.v1.tar"}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_STEP = 1 << 20


def normalize_member(name: str) -> str | None:
    """``./a/b`` and ``/a/b`` → ``a/b``; None when the path climbs out with ``..``."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def layer_files(
    blob: Path,
    media_type: str,
    *,
    max_size: int,
    label: str,
    wanted: Callable[[str], bool],
) -> dict[str, bytes]:
    """The regular files of the layer whose normalised path ``wanted`` accepts.

    The first entry for a path wins (Istio takes the first ``plugin.wasm``).
    Raises :class:`UnsafeLayerError`, :class:`ModuleTooLargeError`, or a
    :class:`FetchError` when the layer is not a readable tar.
    """
    with open(blob, "rb") as source:
        stream: io.RawIOBase = (
            _BoundedGunzip(source, max_size, label)
            if media_type in GZIP_TYPES
            else _Bounded(source, max_size, label)
        )
        return _read_members(stream, max_size=max_size, label=label, wanted=wanted)


def _read_members(
    stream: io.RawIOBase, *, max_size: int, label: str, wanted: Callable[[str], bool]
) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                name = normalize_member(member.name)
                if name is None:
                    raise UnsafeLayerError(
                        f"{label} has an entry that escapes the layer ({member.name!r});"
                        " refusing the image"
                    )
                if not wanted(name) or name in found:
                    continue
                if member.issym() or member.islnk():
                    kind = "a symbolic link" if member.issym() else "a hard link"
                    raise UnsafeLayerError(
                        f"{label}: {name} is {kind} (to {member.linkname!r}); only a regular"
                        " file is accepted"
                    )
                if not member.isreg():
                    raise UnsafeLayerError(f"{label}: {name} is not a regular file")
                if member.size > max_size:
                    raise ModuleTooLargeError(
                        f"{label}: {name} is {member.size} bytes, over the {max_size}-byte limit"
                    )
                extracted = archive.extractfile(member)
                content = b"" if extracted is None else extracted.read()
                if len(content) != member.size:
                    raise FetchError(f"{label}: {name} is truncated", retryable=False)
                found[name] = content
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise FetchError(f"{label} is not a readable tar archive: {exc}", retryable=False) from exc
    return found


class _Bounded(io.RawIOBase):
    """An uncompressed layer, refused past ``limit`` bytes."""

    def __init__(self, source: io.BufferedReader, limit: int, label: str) -> None:
        if os.fstat(source.fileno()).st_size > limit:
            raise ModuleTooLargeError(f"{label} is over the {limit}-byte limit")
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._source.readinto(buffer)


class _BoundedGunzip(io.RawIOBase):
    """Inflates gzip members lazily, raising once the output passes ``limit``."""

    def __init__(self, source: io.BufferedReader, limit: int, label: str) -> None:
        self._source = source
        self._pending = b""
        self._limit = limit
        self._label = label
        self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)
        self._out = b""
        self._produced = 0
        self._done = False
        self._exhausted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._out and not self._done:
            self._inflate()
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def _read(self) -> bytes:
        chunk = self._source.read(_STEP)
        self._exhausted = not chunk
        return chunk

    def _inflate(self) -> None:
        if self._inflater.eof:
            rest = self._inflater.unused_data
            padded = False
            # Only zeros (tar padding) may follow the last member, however long.
            while not rest.strip(b"\0"):
                padded = padded or bool(rest)
                rest = self._read()
                if not rest:
                    self._done = True
                    return
            # Zeros then more data: not a gzip member, as if read in one piece.
            self._inflater = zlib.decompressobj(wbits=_GZIP_WBITS)  # next gzip member
            self._pending = b"\0" + rest if padded else rest
        if not self._pending:
            self._pending = self._read()
        piece = self._inflater.decompress(self._pending, _STEP)
        self._pending = self._inflater.unconsumed_tail
        self._produced += len(piece)
        if self._produced > self._limit:
            raise ModuleTooLargeError(
                f"{self._label} unpacks to more than the {self._limit}-byte limit (a"
                " decompression bomb, or more than a module in the layer); refusing it"
            )
        if not piece and not self._pending and not self._inflater.eof and self._exhausted:
            raise FetchError(f"{self._label}: the gzip stream is truncated", retryable=False)
        self._out = piece
