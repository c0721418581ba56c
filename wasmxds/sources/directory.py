"""WasmPlugin YAML from watched directories.

Per file, the source remembers the last good version of every object:

- a file that stops parsing as YAML keeps serving everything it last defined;
- an object that fails validation keeps its last good version (other objects
  in the same file update normally);
- the same namespace/name in two files is an error that keeps the definition
  that was loaded first.

Image pull secrets (``kubernetes.io/dockerconfigjson`` Secrets) in the same
files follow the same rules, kept apart from plugins (a Secret and a
WasmPlugin may share a namespace/name).

Changes arrive from watchfiles in batches. Each changed path is re-examined on
disk rather than trusting the event kind, so editors that save through a
temporary file and a rename, deletes, and new subdirectories all come out
right. Kubernetes ConfigMap volumes swap a hidden ``..data`` symlink; any event
under a ``..``-prefixed entry triggers a rescan of everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import watchfiles

from wasmxds.api.files import is_config_file, iter_config_files
from wasmxds.api.objects import ObjectKey, Problem, Severity, WasmPlugin
from wasmxds.api.parse import parse_bytes
from wasmxds.api.secrets import PullSecret
from wasmxds.sources.state import SourceState

__all__ = ["DirectorySource"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _FileRecord:
    seq: int
    digest: str = ""
    plugins: dict[ObjectKey, WasmPlugin] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    secrets: dict[ObjectKey, PullSecret] = field(default_factory=dict)


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


class DirectorySource:
    """Watches ``directories`` recursively and keeps a validated :class:`SourceState`."""

    def __init__(
        self,
        directories: Sequence[Path],
        *,
        default_namespace: str = "default",
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.directories = tuple(Path(d).absolute() for d in directories)
        self._default_namespace = default_namespace
        self._on_change = on_change
        self._files: dict[Path, _FileRecord] = {}
        self._seq = itertools.count()
        self._state = SourceState()
        self.loaded = asyncio.Event()

    @property
    def state(self) -> SourceState:
        return self._state

    async def run(self) -> None:
        """Load everything, then follow changes until cancelled."""
        for directory in self.directories:
            if not directory.is_dir():
                log.warning("source.directory_missing", path=str(directory))
        if await self.rescan() or not self.loaded.is_set():
            self._changed()
        self.loaded.set()
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
                self._changed()

    async def rescan(self) -> bool:
        """Re-read every config file under the watched directories; True when anything changed."""
        present: list[Path] = []
        for directory in self.directories:
            present.extend(await asyncio.to_thread(_walk, directory))
        changed = False
        for path in self._files.keys() - set(present):
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
                for known in [k for k in self._files if k == path or path in k.parents]:
                    changed |= self._forget(known)
        return changed

    def _forget(self, path: Path) -> bool:
        record = self._files.pop(path, None)
        if record is None:
            return False
        log.info("source.file_removed", path=str(path), plugins=len(record.plugins))
        return True

    async def _reload(self, path: Path) -> bool:
        data = await asyncio.to_thread(_read, path)
        if data is None:
            return self._forget(path)
        digest = hashlib.sha256(data).hexdigest()
        record = self._files.get(path)
        if record is not None and record.digest == digest:
            return False
        if record is None:
            record = self._files[path] = _FileRecord(seq=next(self._seq))
        record.digest = digest
        parsed = parse_bytes(data, str(path), default_namespace=self._default_namespace)
        problems = list(parsed.problems)
        if not parsed.syntax_ok:
            if record.plugins or record.secrets:
                kept = len(record.plugins) + len(record.secrets)
                problems.append(self._kept_note(path, kept, "this file"))
        else:
            plugins = {plugin.key: plugin for plugin in parsed.plugins}
            for key in parsed.invalid_keys:
                previous = record.plugins.get(key)
                if previous is not None and key not in plugins:
                    plugins[key] = previous
                    problems.append(self._kept_note(path, previous.origin.line, str(key)))
            record.plugins = plugins
            secrets = {secret.key: secret for secret in parsed.secrets}
            for key in parsed.invalid_secrets:
                kept_secret = record.secrets.get(key)
                if kept_secret is not None and key not in secrets:
                    secrets[key] = kept_secret
                    problems.append(self._kept_note(path, kept_secret.origin.line, f"Secret {key}"))
            record.secrets = secrets
        record.problems = tuple(problems)
        self._log_problems(record.problems)
        log.info(
            "source.file_loaded",
            path=str(path),
            plugins=len(record.plugins),
            secrets=len(record.secrets),
            problems=len(problems),
        )
        return True

    @staticmethod
    def _kept_note(path: Path, line: int, what: str) -> Problem:
        return Problem(
            str(path),
            line,
            f"keeping the last valid version of {what} until the error above is fixed",
            Severity.WARNING,
        )

    @staticmethod
    def _log_problems(problems: Iterable[Problem]) -> None:
        for problem in problems:
            emit = log.error if problem.is_error else log.warning
            emit("source.problem", path=problem.path, line=problem.line, message=problem.message)

    def _changed(self) -> None:
        self._state = self._merge()
        self._on_change()

    def _merge(self) -> SourceState:
        plugins: dict[ObjectKey, WasmPlugin] = {}
        secrets: dict[ObjectKey, PullSecret] = {}
        problems: list[Problem] = []
        for path, record in sorted(self._files.items(), key=lambda item: item[1].seq):
            problems.extend(record.problems)
            for key, plugin in record.plugins.items():
                first = plugins.get(key)
                if first is None:
                    plugins[key] = plugin
                    continue
                duplicate = Problem(
                    str(path),
                    plugin.origin.line,
                    f"WasmPlugin {key} is already defined at {first.origin}; "
                    "keeping that definition",
                )
                problems.append(duplicate)
                self._log_problems([duplicate])
            for key, secret in record.secrets.items():
                first_secret = secrets.get(key)
                if first_secret is None:
                    secrets[key] = secret
                    continue
                duplicate = Problem(
                    str(path),
                    secret.origin.line,
                    f"Secret {key} is already defined at {first_secret.origin}; "
                    "keeping that definition",
                )
                problems.append(duplicate)
                self._log_problems([duplicate])
        return SourceState(plugins=plugins, problems=tuple(problems), secrets=secrets)
