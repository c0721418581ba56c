"""The content-addressed module cache on disk.

Modules live at ``<root>/modules/sha256/<hex>.wasm``. That path is what Envoy is
given in ``local`` delivery mode, so files are world-readable (Envoy often runs
as another user) and appear atomically: a proxy never sees a half-written module.
Content addressing makes writes idempotent: the same bytes always land on the
same path, so concurrent writers of one module race harmlessly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from wasmxds.errors import CacheWriteError
from wasmxds.modules.types import Module

__all__ = ["ModuleStore", "is_digest"]

_DIGEST = re.compile(r"[0-9a-f]{64}")
# Envoy reads these files directly and may run as a different user.
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def is_digest(value: str) -> bool:
    """True for a lowercase hex SHA-256 digest, the only form the store uses."""
    return _DIGEST.fullmatch(value) is not None


class ModuleStore:
    """Verified Wasm binaries on disk, named by the SHA-256 of their content."""

    def __init__(self, root: Path) -> None:
        # Absolute, because this path is handed to Envoy, whose working directory differs.
        self._root = root.absolute()
        self._dir = self._root / "modules" / "sha256"

    @property
    def root(self) -> Path:
        return self._root

    def path_for(self, digest: str) -> Path:
        """Where the module with this digest lives (whether or not it exists yet)."""
        if not is_digest(digest):
            raise ValueError(f"not a lowercase hex sha256 digest: {digest!r}")
        return self._dir / f"{digest}.wasm"

    def get(self, digest: str) -> Module | None:
        """The cached module with this digest, or None when it is not on disk."""
        path = self.path_for(digest)
        try:
            size = self._size(path)
        except OSError:
            # Unreadable counts as absent: the module is fetched again and put()
            # then reports what is wrong with the directory.
            return None
        return None if size is None else Module(digest=digest, path=path, size=size)

    def list_modules(self) -> list[tuple[Module, float]]:
        """Every module on disk with its modification time (for the purge)."""
        found: list[tuple[Module, float]] = []
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return found
        for entry in entries:
            digest = entry.name.removesuffix(".wasm")
            if not entry.name.endswith(".wasm") or not is_digest(digest):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found.append((Module(digest, Path(entry.path), stat.st_size), stat.st_mtime))
        return found

    def remove(self, digest: str) -> bool:
        """Delete one module; True when it was there."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def remove_stale_temporaries(self, older_than: float) -> int:
        """Delete ``.tmp-*`` files a crash left behind (mtime before ``older_than``)."""
        removed = 0
        try:
            entries = list(os.scandir(self._dir))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if not entry.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    async def put(self, data: bytes) -> Module:
        """Store ``data`` (hashing and disk I/O run in a worker thread) and describe it."""
        return await asyncio.to_thread(self._put, data)

    async def spool(self) -> Path:
        """The directory a download is written to before :meth:`adopt` renames it into
        place: the store's own, so keeping a download is a rename, and a crash's
        leftovers (``.tmp-*``) are purged like any other temporary."""
        try:
            await asyncio.to_thread(self._make_dirs)
        except OSError as exc:
            raise CacheWriteError(f"cannot create the module cache {self._dir}: {exc}") from exc
        return self._dir

    async def adopt(self, path: Path, digest: str) -> Module:
        """Move the downloaded file at ``path`` (in :meth:`spool`), whose content hashes to
        ``digest``, into the store; the caller no longer owns it."""
        return await asyncio.to_thread(self._adopt, path, digest)

    def _put(self, data: bytes) -> Module:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        try:
            if self._size(path) == len(data):
                return Module(digest=digest, path=path, size=len(data))
            self._make_dirs()
            self._write_atomically(path, data)
        except OSError as exc:
            raise CacheWriteError(f"cannot write module {digest} to {path}: {exc}") from exc
        return Module(digest=digest, path=path, size=len(data))

    def _adopt(self, downloaded: Path, digest: str) -> Module:
        path = self.path_for(digest)
        try:
            try:
                size = downloaded.stat().st_size
                if self._size(path) == size:
                    return Module(digest=digest, path=path, size=size)
                with open(downloaded, "rb+") as out:
                    os.fchmod(out.fileno(), _FILE_MODE)
                    os.fsync(out.fileno())
                os.replace(downloaded, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    downloaded.unlink()
            self._sync_dir()
        except OSError as exc:
            raise CacheWriteError(f"cannot write module {digest} to {path}: {exc}") from exc
        return Module(digest=digest, path=path, size=size)

    @staticmethod
    def _size(path: Path) -> int | None:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None

    def _make_dirs(self) -> None:
        for directory in (self._dir.parent, self._dir):
            try:
                directory.mkdir(mode=_DIR_MODE, parents=True)
            except FileExistsError:
                continue
            # mkdir's mode is filtered by the umask; Envoy must be able to traverse.
            directory.chmod(_DIR_MODE)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self._dir, prefix=".tmp-", suffix=".wasm")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fchmod(out.fileno(), _FILE_MODE)
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        # Make the rename itself durable, so a crash cannot lose a file Envoy was told about.
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
