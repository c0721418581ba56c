"""Following a tree of config files: initial scan, then watchfiles events.

Each changed path is re-examined on disk rather than trusting the event kind,
so editors that save through a temporary file and a rename, deletes, and new
subdirectories all come out right. Kubernetes ConfigMap volumes swap a hidden
``..data`` symlink; any event under a ``..``-prefixed entry rescans everything.
Unchanged bytes are not reported (a touch is not a change).

The owner gets ``on_file(path, data)`` for every new or changed config file and
``on_file(path, None)`` when one disappears; it returns whether its state changed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import structlog
import watchfiles

from wasmxds.api.files import is_config_file, iter_config_files

__all__ = ["FileTree"]

log = structlog.get_logger(__name__)

FileHandler = Callable[[Path, bytes | None], bool]


def _is_swap_marker(path: Path) -> bool:
    return any(part.startswith("..") and part not in ("..", ".") for part in path.parts)


def _watch_filter(change: watchfiles.Change, path: str) -> bool:
    candidate = Path(path)
    return _is_swap_marker(candidate) or not candidate.name.startswith(".")


def _walk(root: Path) -> list[Path]:
    return list(iter_config_files(root))


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


class FileTree:
    """The config files under ``directories``, reported to ``on_file`` as they change."""

    def __init__(self, directories: Sequence[Path], on_file: FileHandler) -> None:
        self.directories = tuple(Path(d).absolute() for d in directories)
        self._on_file = on_file
        self._digests: dict[Path, str] = {}

    @property
    def files(self) -> Iterable[Path]:
        return self._digests.keys()

    async def follow(self, on_batch: Callable[[], Awaitable[None] | None]) -> None:
        """Scan everything (calling ``on_batch`` once), then follow changes until cancelled.

        ``on_batch`` runs after every batch of events that changed something.
        """
        for directory in self.directories:
            if not directory.is_dir():
                log.warning("source.directory_missing", path=str(directory))
        await self.rescan()
        await self._notify(on_batch)
        # watchfiles waits 1.6 s by default to group events; our debouncer does
        # that job, so let watchfiles report almost at once.
        async for changes in watchfiles.awatch(
            *self.directories,
            watch_filter=_watch_filter,
            debounce=50,
            step=10,
            recursive=True,
        ):
            if await self._apply({Path(p) for _, p in changes}):
                await self._notify(on_batch)

    @staticmethod
    async def _notify(on_batch: Callable[[], Awaitable[None] | None]) -> None:
        result = on_batch()
        if result is not None:
            await result

    async def rescan(self) -> bool:
        """Re-read every config file; True when anything changed."""
        present: list[Path] = []
        for directory in self.directories:
            present.extend(await asyncio.to_thread(_walk, directory))
        changed = False
        for path in self._digests.keys() - set(present):
            changed |= self._forget(path)
        for path in present:
            changed |= await self._reload(path)
        return changed

    async def _apply(self, paths: set[Path]) -> bool:
        if any(_is_swap_marker(p) for p in paths):
            return await self.rescan()
        changed = False
        for path in sorted(paths):
            if path.is_dir():
                for file in await asyncio.to_thread(_walk, path):
                    changed |= await self._reload(file)
            elif path.is_file():
                if is_config_file(path):
                    changed |= await self._reload(path)
            else:
                for known in [k for k in self._digests if k == path or path in k.parents]:
                    changed |= self._forget(known)
        return changed

    def _forget(self, path: Path) -> bool:
        if self._digests.pop(path, None) is None:
            return False
        return self._on_file(path, None)

    async def _reload(self, path: Path) -> bool:
        data = await asyncio.to_thread(_read, path)
        if data is None:
            return self._forget(path)
        digest = hashlib.sha256(data).hexdigest()
        if self._digests.get(path) == digest:
            return False
        self._digests[path] = digest
        return self._on_file(path, data)
