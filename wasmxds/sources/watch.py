"""Following a tree of config files: initial scan, then watchfiles events.

Each changed path is re-examined on disk rather than trusting the event kind,
so editors that save through a temporary file and a rename, deletes, and new
subdirectories all come out right. Kubernetes ConfigMap volumes swap a hidden
``..data`` symlink; any event under a ``..``-prefixed entry rescans everything.
Unchanged bytes are not reported (a touch is not a change).

The owner gets ``await on_file(path, data)`` for every new or changed config
file, ``on_file(path, error)`` (a :class:`~wasmxds.api.files.ConfigFileError`)
for one that cannot be read (a symlink loop, no permission), and
``on_file(path, None)`` when one disappears; it returns whether its state
changed. Files are read in a worker thread, at most ``max_bytes + 1`` bytes
of each, and the handler is awaited so it can parse off the event loop too.

A hostile file must not hold up the others. Changed files wait in one queue
that a few workers take from, while the watch keeps adding to it: a file
whose last reading was quick goes first, then files not read before (in
path order), then files that were slow or could not be read. One worker
takes only quick files, so a good file's edit is handled within about one
quick file's time however many slow ones are queued. A path is handled by
one worker at a time, in the order its changes came. The owner hears of a
batch (``on_batch``) when the queue empties, and at least every
``_NOTIFY_EVERY`` seconds while it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import structlog
import watchfiles

from wasmxds.api.files import (
    ConfigFileError,
    is_hidden,
    is_listed,
    iter_config_files,
    read_config_file,
)
from wasmxds.api.limits import DEFAULT_LIMITS

__all__ = ["FileHandler", "FileTree"]

log = structlog.get_logger(__name__)

# Parsing holds the GIL, so more workers only share the CPU more thinly; a
# few keep one slow file from blocking the rest.
_WORKERS = 3
# A reading that took longer than this sends the file to the back next time.
_SLOW = 0.1
_NOTIFY_EVERY = 1.0

FileHandler = Callable[[Path, bytes | ConfigFileError | None], Awaitable[bool]]


def _is_swap_marker(path: Path) -> bool:
    return any(part.startswith("..") and part not in ("..", ".") for part in path.parts)


def _watch_filter(_change: watchfiles.Change, path: str) -> bool:
    candidate = Path(path)
    return _is_swap_marker(candidate) or not candidate.name.startswith(".")


def _walk(root: Path) -> list[Path]:
    return list(iter_config_files(root))


def _read(path: Path, max_bytes: int) -> tuple[bytes, str] | ConfigFileError | None:
    """The file's bytes and their digest, why it cannot be read, or None when it is gone."""
    try:
        data = read_config_file(path, max_bytes)
    except ConfigFileError as exc:
        # A file that went between the event and the read is a delete, not a problem.
        gone = exc.missing or (path.is_dir() and not path.is_symlink())
        return None if gone else exc
    return data, hashlib.sha256(data).hexdigest()


class FileTree:
    """The config files under ``directories``, reported to ``on_file`` as they change."""

    def __init__(
        self,
        directories: Sequence[Path],
        on_file: FileHandler,
        *,
        max_bytes: int = DEFAULT_LIMITS.max_bytes,
        workers: int = _WORKERS,
    ) -> None:
        self.directories = tuple(Path(d).absolute() for d in directories)
        self._on_file = on_file
        self._max_bytes = max_bytes
        self._workers = max(2, workers)
        self._digests: dict[Path, str] = {}
        # How long each path's last reading took (unreadable counts as slow).
        self._cost: dict[Path, float] = {}
        self._queue: dict[Path, int] = {}  # path -> order it was queued in
        self._order = 0
        self._first: dict[Path, int] = {}  # path -> order it was first queued in
        self._busy: set[Path] = set()
        self._work = asyncio.Condition()
        self._changed = False
        self._dirty = asyncio.Event()

    @property
    def files(self) -> Iterable[Path]:
        return self._digests.keys()

    def arrival(self, path: Path) -> int:
        """Where ``path`` came in: scan order at start, then the order of first events.

        Owners order files by it (the first definition of a name wins), as
        files are read in parallel and finish in any order.
        """
        return self._first.get(path, self._order)

    async def follow(self, on_batch: Callable[[], Awaitable[None] | None]) -> None:
        """Scan everything (calling ``on_batch`` once), then follow changes until cancelled.

        ``on_batch`` runs after every batch of events that changed something.
        """
        for directory in self.directories:
            if not directory.is_dir():
                log.warning("source.directory_missing", path=str(directory))
        async with asyncio.TaskGroup() as group:
            for index in range(self._workers):
                group.create_task(self._worker(quick_only=index == 0))
            await self.rescan()
            self._dirty.clear()
            await self._notify(on_batch)
            group.create_task(self._notifier(on_batch))
            # watchfiles waits 1.6 s by default to group events; our debouncer does
            # that job, so let watchfiles report almost at once.
            async for changes in watchfiles.awatch(
                *self.directories,
                watch_filter=_watch_filter,
                debounce=50,
                step=10,
                recursive=True,
            ):
                await self._apply({Path(p) for _, p in changes})

    @staticmethod
    async def _notify(on_batch: Callable[[], Awaitable[None] | None]) -> None:
        result = on_batch()
        if result is not None:
            await result

    async def _notifier(self, on_batch: Callable[[], Awaitable[None] | None]) -> None:
        while True:
            await self._dirty.wait()
            # Let a burst of edits land together, but never wait long for the
            # queue to empty: hostile files could keep it full.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_NOTIFY_EVERY):
                    await self._idle()
            self._dirty.clear()
            await self._notify(on_batch)

    async def rescan(self) -> bool:
        """Re-read every config file (the workers must be running); True when anything changed."""
        await self._scan()
        await self._idle()
        changed, self._changed = self._changed, False
        return changed

    async def _scan(self) -> None:
        """Queue every config file, and every known one that is gone."""
        present: list[Path] = []
        for directory in self.directories:
            present.extend(await asyncio.to_thread(_walk, directory))
        await self._enqueue([*sorted(self._digests.keys() - set(present)), *present])

    async def _apply(self, paths: set[Path]) -> None:
        if any(_is_swap_marker(p) for p in paths):
            await self._scan()
            return
        queued: list[Path] = []
        for path in sorted(paths):
            if self._in_hidden_directory(path):
                continue
            if path.is_dir() and not path.is_symlink():
                if path in self._digests:  # a file replaced by a directory is gone
                    queued.append(path)
                queued.extend(await asyncio.to_thread(_walk, path))
            elif is_listed(path):
                queued.append(path)
            else:
                # Gone, or no longer a config file: a worker finds out and forgets it.
                queued.extend(k for k in self._digests if k == path or path in k.parents)
        await self._enqueue(queued)

    def _in_hidden_directory(self, path: Path) -> bool:
        """Whether ``path`` is, or is inside, a hidden directory below a watched root.

        A scan never enters those (``.git`` and the like); events from them must
        not bring their files in either. Hidden directories above the root count
        for nothing: a config directory may live under ``~/.config``.
        """
        for root in self.directories:
            if path.is_relative_to(root):
                return any(is_hidden(part) for part in path.relative_to(root).parts)
        return False

    async def _enqueue(self, paths: Iterable[Path]) -> None:
        async with self._work:
            for path in paths:
                if path not in self._queue:
                    self._queue[path] = self._order
                    self._first.setdefault(path, self._order)
                    self._order += 1
            self._work.notify_all()

    def _rank(self, path: Path) -> tuple[int, int]:
        cost = self._cost.get(path)
        kind = 1 if cost is None else 0 if cost <= _SLOW else 2
        return kind, self._queue[path]

    def _next(self, quick_only: bool) -> Path | None:
        """The queued path to read next, or None when there is none for this worker."""
        ready = [p for p in self._queue if p not in self._busy]
        if quick_only:
            ready = [p for p in ready if self._cost.get(p, math.inf) <= _SLOW]
        return min(ready, key=self._rank, default=None)

    async def _idle(self) -> None:
        async with self._work:
            await self._work.wait_for(lambda: not self._queue and not self._busy)

    async def _worker(self, *, quick_only: bool) -> None:
        while True:
            async with self._work:
                await self._work.wait_for(lambda: self._next(quick_only) is not None)
                path = self._next(quick_only)
                assert path is not None
                del self._queue[path]
                self._busy.add(path)
            try:
                changed = await self._reload(path)
            finally:
                async with self._work:
                    self._busy.discard(path)
                    self._work.notify_all()
            if changed:
                self._changed = True
                self._dirty.set()

    async def _forget(self, path: Path) -> bool:
        self._cost.pop(path, None)
        self._first.pop(path, None)
        if self._digests.pop(path, None) is None:
            return False
        return await self._on_file(path, None)

    async def _reload(self, path: Path) -> bool:
        found = await asyncio.to_thread(_read, path, self._max_bytes)
        if found is None:
            return await self._forget(path)
        data: bytes | ConfigFileError
        if isinstance(found, ConfigFileError):
            data, digest = found, "unreadable: " + found.reason
        else:
            data, digest = found
        if self._digests.get(path) == digest:
            return False
        self._digests[path] = digest
        started = time.monotonic()
        try:
            return await self._on_file(path, data)
        finally:
            unreadable = isinstance(data, ConfigFileError)
            self._cost[path] = math.inf if unreadable else time.monotonic() - started
