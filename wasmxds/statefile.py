"""Small state files in the cache directory, replaced whole and readable by the owner only.

The module index and the last good plugins are both rewritten on change; a
crash mid-write must leave the previous file, never half of the new one, and
both may name private things (module URLs, plugin configuration with tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog

__all__ = ["StateFile", "write_private"]

log = structlog.get_logger(__name__)

T = TypeVar("T")


def write_private(path: Path, data: bytes, *, prefix: str) -> None:
    """Replace ``path`` with ``data`` atomically (temporary file, fsync, rename), mode 0600.

    The temporary file is ``<prefix>*.tmp`` in the same directory, so the rename
    never crosses file systems; it is removed when anything goes wrong.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), 0o600)
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class StateFile(Generic[T]):
    """One such file, kept by an owner that marks it ``dirty`` when its content changes.

    ``flush`` writes at most once at a time: ``snapshot`` takes the content on the
    event loop (cheap), ``encode`` turns it into bytes in a worker thread with the
    write. A failed write is logged as ``failed_event`` and retried at the next
    flush; a write cancelled half way is redone by the next (shutdown) flush.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        prefix: str,
        failed_event: str,
        snapshot: Callable[[], T],
        encode: Callable[[T], bytes],
    ) -> None:
        self.path = path
        self.dirty = False
        self._prefix = prefix
        self._failed_event = failed_event
        self._snapshot = snapshot
        self._encode = encode
        self._lock = asyncio.Lock()

    async def flush(self) -> None:
        """Write the file if it is dirty; encoding and disk I/O run in a worker thread."""
        if self.path is None or not self.dirty:
            return
        async with self._lock:
            if not self.dirty:
                return
            content = self._snapshot()
            self.dirty = False
            try:
                await asyncio.to_thread(self._write, self.path, content)
            except OSError as exc:
                self.dirty = True
                log.warning(self._failed_event, path=str(self.path), error=str(exc))
            except BaseException:
                self.dirty = True  # cancelled mid-write: the shutdown flush writes it again
                raise

    def flush_sync(self) -> None:
        """Write now, from synchronous code (one-shot commands)."""
        if self.path is None or not self.dirty:
            return
        self._write(self.path, self._snapshot())
        self.dirty = False

    def _write(self, path: Path, content: T) -> None:
        write_private(path, self._encode(content), prefix=self._prefix)
