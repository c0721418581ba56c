"""The cache's memory across restarts: which URL was which module, and when each was used.

``<cache>/index.json`` records

- **refs**: a request's (URL, sha256, pull secret, signature requirement) → the
  module digest it last resolved to, with the manifest digest and layout for
  OCI. Keys are a hash of the URL, so signed query strings and userinfo never
  reach the disk; a redacted URL is kept beside each entry for people reading
  the file. The pull secret is named (namespace/name), never its content, and
  the requirement is a list of public-key fingerprints;
- **manifests**: OCI manifest (or index) digest → module digest, layout, and the
  repositories (``host/repository``) it was pulled from with its layers.
  Manifests are content-addressed, so this never goes stale, and it lets a pull
  skip the layer download when only a tag moved to a known image. Only in a
  repository it was pulled from: a manifest is not a secret (anyone who knows
  the module's digest and size can write one), so a registry that merely
  answers with the right manifest bytes has not shown it holds the module
  (entries written before this was recorded name no repository: their next use
  downloads the layers once);
- **modules**: module digest → size and last use (wall-clock seconds);
- **pulls**: module digest → who pulled it: the credentials' origin (a pull
  secret's namespace/name, or ``server`` for the server's own docker config)
  and the signature requirement it was verified under. A request with the same
  origin and requirement may use the module without asking the registry again;
  any other is re-authorised (:mod:`wasmxds.modules.access`);
- **checks**: module digest → the pre-flight check's verdict (what the module
  implements of the proxy-wasm ABI, or why Envoy could not run it), with the
  rules version that gave it, so a restart does not check every module again.

With it a restarted server serves every module it knew while the registry is
down: ``IfNotPresent`` requests resolve from the index, and ``Always`` falls
back to the indexed module as a stale-but-ready outcome.

Writes are atomic (temporary file, fsync, rename). A missing file is an
empty index; a corrupted one is logged and ignored (the modules stay on disk
and are re-indexed as they are fetched), never a crash. The index is only
touched from the event loop; :meth:`ModuleIndex.flush` does the disk I/O in a
worker thread.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from wasmxds.modules.store import is_digest
from wasmxds.modules.types import PREFLIGHT_RULES, ModuleAbi, Verdict, redact_url
from wasmxds.statefile import StateFile

__all__ = ["INDEX_FILE", "ModuleIndex", "RefRecord"]

log = structlog.get_logger(__name__)

INDEX_FILE = "index.json"
_VERSION = 1
# Last use is recorded at most this often per module: precision far below the
# expiry (hours) is worthless, and every change is a rewrite of the file.
_TOUCH_GRANULARITY = 60.0
# Who pulled one module: a few namespaces' secrets at most in practice; bounded anyway.
_MAX_PULLERS = 64
# Repositories one manifest was pulled from (mirrors, promotions): a few; bounded anyway.
_MAX_SOURCES = 64


@dataclass(slots=True)
class RefRecord:
    """What one request resolved to last time."""

    digest: str
    manifest: str = ""
    layout: str = ""
    fetched_at: float = 0.0
    url: str = ""


@dataclass(slots=True)
class _ModuleRecord:
    size: int
    last_used: float


def ref_key(url: str, sha256: str, secret: str = "", requirement: str = "") -> str:
    # Without a requirement the key is what it was before requirements existed.
    tail = f"\n{requirement}" if requirement else ""
    text = f"{url}\n{sha256.strip().lower()}\n{secret}{tail}"
    return hashlib.sha256(text.encode()).hexdigest()


class ModuleIndex:
    """The persistent index; ``path=None`` keeps it in memory only (tests, one-shot pulls)."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._refs: dict[str, RefRecord] = {}
        self._manifests: dict[str, tuple[str, str]] = {}
        # Manifest digest → the host/repository names it was pulled from, layers and all.
        self._sources: dict[str, set[str]] = {}
        self._modules: dict[str, _ModuleRecord] = {}
        self._pulls: dict[str, set[str]] = {}
        self._checks: dict[str, Verdict] = {}
        # Not secret, but it names every module URL the operator uses: owner only.
        # Encoding thousands of entries takes a while: done with the write, off the loop.
        self._file = StateFile(
            path,
            prefix=".index-",
            failed_event="modules.index_write_failed",
            snapshot=self.document,
            encode=_encode,
        )

    @property
    def path(self) -> Path | None:
        return self._file.path

    # ------------------------------------------------------------- loading

    @classmethod
    def load(cls, path: Path, *, clock: Callable[[], float] = time.time) -> ModuleIndex:
        """Read ``path``; a missing or unreadable index starts empty (with a warning if corrupt)."""
        index = cls(path, clock=clock)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return index
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("modules.index_unreadable", path=str(path), error=str(exc))
            return index
        try:
            document = json.loads(text)
            index._read(document)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "modules.index_corrupt",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}"[:200],
                action="ignored; modules are re-indexed as they are fetched",
            )
            index = cls(path, clock=clock)
            index._file.dirty = True  # replace the bad file at the next flush
        return index

    def _read(self, document: Any) -> None:
        if document.get("version") != _VERSION:
            raise ValueError(f"unknown index version {document.get('version')!r}")
        skipped = 0
        for key, value in document["modules"].items():
            if is_digest(key) and isinstance(value, dict):
                self._modules[key] = _ModuleRecord(int(value["size"]), float(value["last_used"]))
            else:
                skipped += 1
        for key, value in document["manifests"].items():
            module = value.get("module") if isinstance(value, dict) else None
            layout = value.get("layout", "") if isinstance(value, dict) else None
            if is_digest(key) and isinstance(module, str) and is_digest(module):
                self._manifests[key] = (module, str(layout))
                # Absent from indexes written before it was recorded: pulled in full once more.
                sources = value.get("pulled_from", [])
                if isinstance(sources, list) and sources:
                    self._sources[key] = {str(item) for item in sources[:_MAX_SOURCES]}
            else:
                skipped += 1
        for key, value in document["refs"].items():
            try:
                record = RefRecord(**value) if isinstance(value, dict) else None
            except TypeError:  # unknown or missing fields
                record = None
            if record is not None and is_digest(record.digest):
                self._refs[key] = record
            else:
                skipped += 1
        # Absent from indexes written before access checks: their modules are re-authorised.
        for key, value in document.get("pulls", {}).items():
            if is_digest(key) and isinstance(value, list):
                self._pulls[key] = {str(item) for item in value[:_MAX_PULLERS]}
            else:
                skipped += 1
        # Absent from indexes written before pre-flight checks: those modules are checked.
        for key, value in document.get("checks", {}).items():
            verdict = _verdict(value)
            if is_digest(key) and verdict is not None:
                self._checks[key] = verdict
            else:
                skipped += 1
        if skipped:
            log.warning("modules.index_entries_skipped", path=str(self.path), count=skipped)
            self._file.dirty = True

    # ------------------------------------------------------------- queries

    def ref(
        self, url: str, sha256: str, secret: str = "", requirement: str = ""
    ) -> RefRecord | None:
        return self._refs.get(ref_key(url, sha256, secret, requirement))

    def pulled_by(self, module_digest: str, puller: str) -> bool:
        """Whether ``puller`` (credentials origin and requirement) pulled this module."""
        return puller in self._pulls.get(module_digest, ())

    def verdict(self, module_digest: str) -> Verdict | None:
        """The pre-flight verdict for this module under today's rules, if it was checked."""
        verdict = self._checks.get(module_digest)
        return verdict if verdict is not None and verdict.rules == PREFLIGHT_RULES else None

    def manifests_of(self, module_digest: str, source: str, limit: int = 4) -> tuple[str, ...]:
        """Up to ``limit`` manifest (or index) digests known to hold the module that were
        pulled from ``source`` (``host/repository``); never those of other repositories."""
        found = [
            key
            for key, (module, _) in self._manifests.items()
            if module == module_digest and source in self._sources.get(key, ())
        ]
        return tuple(sorted(found)[:limit])

    def pulled_from(self, manifest_digest: str, source: str) -> bool:
        """Whether this manifest (and its layers) was pulled from ``source`` (``host/repo``)."""
        return source in self._sources.get(manifest_digest, ())

    def manifest_module(self, manifest_digest: str) -> str | None:
        found = self._manifests.get(manifest_digest)
        return None if found is None else found[0]

    def manifest_layout(self, manifest_digest: str) -> str:
        found = self._manifests.get(manifest_digest)
        return "" if found is None else found[1]

    def last_used(self, digest: str) -> float | None:
        record = self._modules.get(digest)
        return None if record is None else record.last_used

    def known_modules(self) -> dict[str, float]:
        """Module digest → last use, for the purge."""
        return {digest: record.last_used for digest, record in self._modules.items()}

    def __len__(self) -> int:
        return len(self._refs)

    def totals(self) -> tuple[int, int]:
        """How many modules the index knows, and their total size in bytes."""
        return len(self._modules), sum(record.size for record in self._modules.values())

    # ------------------------------------------------------------- updates

    def record(
        self,
        url: str,
        sha256: str,
        digest: str,
        size: int,
        *,
        secret: str = "",
        manifest: str = "",
        layout: str = "",
        requirement: str = "",
        puller: str = "",
    ) -> None:
        """``url`` (with ``sha256``, ``secret`` and ``requirement``) resolved to module
        ``digest`` just now, pulled by ``puller`` (see :meth:`pulled_by`)."""
        now = self._clock()
        if puller:
            pullers = self._pulls.setdefault(digest, set())
            if puller not in pullers and len(pullers) < _MAX_PULLERS:
                pullers.add(puller)
        self._refs[ref_key(url, sha256, secret, requirement)] = RefRecord(
            digest=digest, manifest=manifest, layout=layout, fetched_at=now, url=redact_url(url)
        )
        self._modules[digest] = _ModuleRecord(size, now)
        self._file.dirty = True

    def record_manifest(
        self,
        manifest_digest: str,
        module_digest: str,
        size: int,
        layout: str = "",
        *,
        source: str = "",
    ) -> None:
        """``manifest_digest`` holds module ``module_digest``; with ``source``
        (``host/repository``): its layers were just downloaded from there."""
        if self._manifests.get(manifest_digest) != (module_digest, layout):
            self._manifests[manifest_digest] = (module_digest, layout)
            self._file.dirty = True
        if source:
            sources = self._sources.setdefault(manifest_digest, set())
            if source not in sources and len(sources) < _MAX_SOURCES:
                sources.add(source)
                self._file.dirty = True
        if module_digest not in self._modules:
            self._modules[module_digest] = _ModuleRecord(size, self._clock())
            self._file.dirty = True

    def record_verdict(self, digest: str, size: int, verdict: Verdict) -> None:
        """Remember the pre-flight check's verdict for module ``digest``."""
        if self._checks.get(digest) != verdict:
            self._checks[digest] = verdict
            self._file.dirty = True
        if digest not in self._modules:
            # Known to the purge even if no ref ever points at it (a refused module).
            self._modules[digest] = _ModuleRecord(size, self._clock())
            self._file.dirty = True

    def touch(self, digests: Iterable[tuple[str, int]]) -> None:
        """Record that these (digest, size) modules are in use now."""
        now = self._clock()
        for digest, size in digests:
            record = self._modules.get(digest)
            if record is None:
                self._modules[digest] = _ModuleRecord(size, now)
                self._file.dirty = True
            elif now - record.last_used >= _TOUCH_GRANULARITY:
                record.last_used = now
                self._file.dirty = True

    def forget(self, digest: str) -> None:
        """Drop a module that left the disk, and every ref and manifest pointing at it."""
        self._modules.pop(digest, None)
        self._pulls.pop(digest, None)
        self._checks.pop(digest, None)
        for key in [k for k, ref in self._refs.items() if ref.digest == digest]:
            del self._refs[key]
        for key in [k for k, (module, _) in self._manifests.items() if module == digest]:
            del self._manifests[key]
            self._sources.pop(key, None)
        self._file.dirty = True

    # ------------------------------------------------------------- saving

    def document(self) -> dict[str, Any]:
        """A snapshot of the index as plain data (cheap; taken on the event loop)."""
        return {
            "version": _VERSION,
            # RefRecords are replaced, never mutated: sharing them with the writer is safe.
            "refs": dict(self._refs),
            "manifests": {
                key: {"module": module, "layout": layout}
                | ({"pulled_from": sorted(self._sources[key])} if key in self._sources else {})
                for key, (module, layout) in self._manifests.items()
            },
            "modules": {
                key: {"size": record.size, "last_used": record.last_used}
                for key, record in self._modules.items()
            },
            "pulls": {key: sorted(pullers) for key, pullers in self._pulls.items()},
            "checks": {key: _verdict_document(v) for key, v in self._checks.items()},
        }

    def dumps(self) -> bytes:
        return _encode(self.document())

    async def flush(self) -> None:
        """Write the index if it changed; disk I/O runs in a worker thread."""
        await self._file.flush()

    def flush_sync(self) -> None:
        """Write now, from synchronous code (one-shot commands)."""
        self._file.flush_sync()


def _encode(document: dict[str, Any]) -> bytes:
    plain = {**document, "refs": {key: asdict(ref) for key, ref in document["refs"].items()}}
    return json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()


def _verdict_document(verdict: Verdict) -> dict[str, Any]:
    document: dict[str, Any] = {"rules": verdict.rules}
    if verdict.abi is None:
        document["problem"] = verdict.problem
    else:
        document |= {"abi": verdict.abi.version, "callbacks": list(verdict.abi.callbacks)}
    return document


def _verdict(value: Any) -> Verdict | None:
    """A persisted verdict, or None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("rules"), int):
        return None
    if isinstance(value.get("problem"), str) and value["problem"]:
        return Verdict(None, value["problem"], rules=value["rules"])
    callbacks = value.get("callbacks")
    if not isinstance(value.get("abi"), str) or not isinstance(callbacks, list):
        return None
    abi = ModuleAbi(value["abi"], tuple(str(name) for name in callbacks))
    return Verdict(abi, rules=value["rules"])
