"""WasmPlugin YAML from watched directories.

Per file, the source remembers the last good version of every object:

- a file that stops parsing as YAML keeps serving everything it last defined;
- an object that fails validation keeps its last good version (other objects
  in the same file update normally);
- the same namespace/name in two files is an error that keeps the definition
  that was loaded first.

Image pull secrets (``kubernetes.io/dockerconfigjson`` Secrets) and the
``Opaque`` Secrets plugin configuration takes values from, in the same files,
follow the same rules, kept apart from plugins (a Secret and a WasmPlugin may
share a namespace/name).

Following the files (editors' rename dance, deletes, new subdirectories,
ConfigMap symlink swaps) is :class:`wasmxds.sources.watch.FileTree`'s job.
Files are parsed in a worker thread, never on the event loop: a hostile file
costs at most the input limits' worth of work (:mod:`wasmxds.api.limits`),
and admin and xDS answer meanwhile. A file that cannot be read (a symlink
loop) or passes a limit is reported and keeps its last good content.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from wasmxds.api.configsecrets import ConfigSecret
from wasmxds.api.files import ConfigFileError
from wasmxds.api.objects import ObjectKey, Problem, Severity, WasmPlugin
from wasmxds.api.parse import parse_bytes, unreadable
from wasmxds.api.secrets import PullSecret
from wasmxds.sources.state import SourceState
from wasmxds.sources.watch import FileTree

__all__ = ["DirectorySource"]

log = structlog.get_logger(__name__)


_Kept = TypeVar("_Kept", WasmPlugin, PullSecret, ConfigSecret)


@dataclass(slots=True)
class _FileRecord:
    seq: int
    plugins: dict[ObjectKey, WasmPlugin] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    secrets: dict[ObjectKey, PullSecret] = field(default_factory=dict)
    config_secrets: dict[ObjectKey, ConfigSecret] = field(default_factory=dict)


def _keep_last_good(
    current: dict[ObjectKey, _Kept],
    previous: dict[ObjectKey, _Kept],
    invalid: Iterable[ObjectKey],
    path: Path,
    what: str,
) -> list[Problem]:
    """Objects that failed validation keep their previous version (noted as a warning)."""
    notes = []
    for key in invalid:
        kept = previous.get(key)
        if kept is not None and key not in current:
            current[key] = kept
            notes.append(_kept_note(path, kept.origin.line, f"{what}{key}"))
    return notes


def _first_wins(
    merged: dict[ObjectKey, _Kept], found: dict[ObjectKey, _Kept], path: Path, kind: str
) -> list[Problem]:
    """Add ``found`` to ``merged``; a namespace/name already there stays, and is reported."""
    problems = []
    for key, item in found.items():
        first = merged.setdefault(key, item)
        if first is not item:
            problems.append(
                Problem(
                    str(path),
                    item.origin.line,
                    f"{key if key.kind else f'{kind} {key}'} is already defined at"
                    f" {first.origin}; keeping that definition",
                )
            )
    return problems


def _kept_note(path: Path, line: int, what: str) -> Problem:
    return Problem(
        str(path),
        line,
        f"keeping the last valid version of {what} until the error above is fixed",
        Severity.WARNING,
    )


class DirectorySource:
    """Watches ``directories`` recursively and keeps a validated :class:`SourceState`."""

    def __init__(
        self,
        directories: Sequence[Path],
        *,
        default_namespace: str = "default",
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._tree = FileTree(directories, self._on_file)
        self.directories = self._tree.directories
        self._default_namespace = default_namespace
        self._on_change = on_change
        self._files: dict[Path, _FileRecord] = {}
        self._state = SourceState()
        self.loaded = asyncio.Event()

    @property
    def state(self) -> SourceState:
        return self._state

    async def run(self) -> None:
        """Load everything, then follow changes until cancelled."""
        await self._tree.follow(self._changed)

    async def _on_file(self, path: Path, data: bytes | ConfigFileError | None) -> bool:
        if data is None:
            record = self._files.pop(path, None)
            if record is not None:
                log.info("source.file_removed", path=str(path), plugins=len(record.plugins))
            return record is not None
        if isinstance(data, ConfigFileError):
            parsed = unreadable(str(path), 1, data.reason, data.severity)
        else:
            parsed = await asyncio.to_thread(
                parse_bytes, data, str(path), default_namespace=self._default_namespace
            )
        record = self._files.get(path)
        if record is None:
            record = self._files[path] = _FileRecord(seq=self._tree.arrival(path))
        problems = list(parsed.problems)
        if not parsed.syntax_ok:
            if record.plugins or record.secrets or record.config_secrets:
                line = next((p.line for p in parsed.problems if p.is_error), 1)
                kept = len(record.plugins) + len(record.secrets) + len(record.config_secrets)
                problems.append(_kept_note(path, line, f"this file's {kept} object(s)"))
        else:
            plugins = {plugin.key: plugin for plugin in parsed.plugins}
            problems += _keep_last_good(plugins, record.plugins, parsed.invalid_keys, path, "")
            record.plugins = plugins
            secrets = {secret.key: secret for secret in parsed.secrets}
            problems += _keep_last_good(
                secrets, record.secrets, parsed.invalid_secrets, path, "Secret "
            )
            record.secrets = secrets
            config_secrets = {secret.key: secret for secret in parsed.config_secrets}
            problems += _keep_last_good(
                config_secrets,
                record.config_secrets,
                parsed.invalid_config_secrets,
                path,
                "Secret ",
            )
            record.config_secrets = config_secrets
        record.problems = tuple(problems)
        self._log_problems(record.problems)
        log.info(
            "source.file_loaded",
            path=str(path),
            plugins=len(record.plugins),
            secrets=len(record.secrets) + len(record.config_secrets),
            problems=len(problems),
        )
        return True

    @staticmethod
    def _log_problems(problems: Iterable[Problem]) -> None:
        for problem in problems:
            emit = log.error if problem.is_error else log.warning
            emit("source.problem", path=problem.path, line=problem.line, message=problem.message)

    def _changed(self) -> None:
        self._state = self._merge()
        self.loaded.set()
        self._on_change()

    def _merge(self) -> SourceState:
        plugins: dict[ObjectKey, WasmPlugin] = {}
        secrets: dict[ObjectKey, PullSecret] = {}
        config_secrets: dict[ObjectKey, ConfigSecret] = {}
        problems: list[Problem] = []
        for path, record in sorted(self._files.items(), key=lambda item: item[1].seq):
            problems.extend(record.problems)
            duplicates = _first_wins(plugins, record.plugins, path, "WasmPlugin")
            duplicates += _first_wins(secrets, record.secrets, path, "Secret")
            duplicates += _first_wins(config_secrets, record.config_secrets, path, "Secret")
            self._log_problems(duplicates)
            problems.extend(duplicates)
        return SourceState(
            plugins=plugins,
            problems=tuple(problems),
            secrets=secrets,
            config_secrets=config_secrets,
        )
