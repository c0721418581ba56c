"""Listener and Cluster templates from ``--listeners`` directories (listener mode).

Same guarantees as the WasmPlugin directory source: a file that stops parsing,
or a template that stops validating, keeps its last good version while the
error is reported; a listener or cluster name defined twice keeps the first.
Files are parsed in a worker thread, within the input limits
(:mod:`wasmxds.api.limits`), never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from wasmxds.api.files import ConfigFileError
from wasmxds.api.objects import Problem, Severity
from wasmxds.api.templates import (
    ClusterTemplate,
    ListenerTemplate,
    NodeSelector,
    ParsedTemplates,
    Templates,
    parse_templates,
)
from wasmxds.sources.state import TemplateState
from wasmxds.sources.watch import FileTree

__all__ = ["TemplateSource"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _FileRecord:
    seq: int
    listeners: tuple[ListenerTemplate, ...] = ()
    clusters: tuple[ClusterTemplate, ...] = ()
    problems: tuple[Problem, ...] = ()


class TemplateSource:
    """Watches template directories and keeps a validated :class:`Templates` set."""

    def __init__(self, directories: Sequence[Path], *, on_change: Callable[[], None]) -> None:
        self._tree = FileTree(directories, self._on_file)
        self._on_change = on_change
        self._files: dict[Path, _FileRecord] = {}
        self._state = TemplateState()
        self.loaded = False

    @property
    def state(self) -> TemplateState:
        return self._state

    async def run(self) -> None:
        await self._tree.follow(self._changed)

    async def _on_file(self, path: Path, data: bytes | ConfigFileError | None) -> bool:
        if data is None:
            return self._files.pop(path, None) is not None
        if isinstance(data, ConfigFileError):
            problem = Problem(str(path), 1, data.reason, data.severity)
            parsed = ParsedTemplates(str(path), problems=(problem,), syntax_ok=False)
        else:
            parsed = await asyncio.to_thread(parse_templates, data, str(path))
        record = self._files.get(path)
        if record is None:
            record = self._files[path] = _FileRecord(seq=self._tree.arrival(path))
        problems = list(parsed.problems)
        has_errors = any(p.is_error for p in problems)
        if has_errors and (record.listeners or record.clusters):
            # Templates are whole Envoy objects; a half-updated file could pair a
            # new listener with an old cluster, so the file's last good set stays.
            problems.append(
                Problem(
                    str(path),
                    next((p.line for p in problems if p.is_error), 1),
                    "keeping this file's last valid templates until the errors above are fixed",
                    Severity.WARNING,
                )
            )
        else:
            record.listeners, record.clusters = parsed.listeners, parsed.clusters
        record.problems = tuple(problems)
        for problem in problems:
            emit = log.error if problem.is_error else log.warning
            emit("templates.problem", path=problem.path, line=problem.line, message=problem.message)
        return True

    def _changed(self) -> None:
        listeners: list[ListenerTemplate] = []
        clusters: list[ClusterTemplate] = []
        problems: list[Problem] = []
        seen: dict[str, tuple[NodeSelector, str]] = {}
        for path, record in sorted(self._files.items(), key=lambda item: item[1].seq):
            problems.extend(record.problems)
            for template in record.listeners:
                if _claim(seen, f"listener {template.listener.name!r}", template, path, problems):
                    listeners.append(template)
            for cluster in record.clusters:
                if _claim(seen, f"cluster {cluster.cluster.name!r}", cluster, path, problems):
                    clusters.append(cluster)
        self._state = TemplateState(Templates(tuple(listeners), tuple(clusters)), tuple(problems))
        self.loaded = True
        log.info("templates.loaded", listeners=len(listeners), clusters=len(clusters))
        self._on_change()


def _claim(
    seen: dict[str, tuple[NodeSelector, str]],
    what: str,
    template: ListenerTemplate | ClusterTemplate,
    path: Path,
    problems: list[Problem],
) -> bool:
    """Whether ``template`` joins the set; a name clash is reported.

    Two templates may share a name when they target different proxies; a proxy
    selected by both gets the earlier one. The same name for the same proxies
    can never take effect, so that is an error.
    """
    first = seen.get(what)
    if first is None:
        seen[what] = (template.nodes, str(template.origin))
        return True
    nodes, origin = first
    same_targets = nodes == template.nodes
    message = f"{what} is already defined at {origin}; " + (
        "this one can never apply" if same_targets else "proxies selected by both get that one"
    )
    severity = Severity.ERROR if same_targets else Severity.WARNING
    problems.append(Problem(str(path), template.origin.line, message, severity))
    log.warning("templates.duplicate", path=str(path), name=what, first=origin)
    return not same_targets
