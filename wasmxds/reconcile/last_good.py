"""Each plugin's last good version, kept across restarts: ``<cache>/last-good.json``.

Per ECDS resource name the file holds the WasmPlugin object that was last
served with its real filter (everything translation reads: key, spec as
serialized proto bytes, metadata) and the digest of its module. With it a
restarted server, or a replica started after a bad edit, serves exactly what
the other replicas serve while the edited plugin's module fails, instead of
the fail-strategy stand-in.

The reconcile stage decides the content (only current plugins, plus deleted
ones within a grace); this module only reads and writes it. Writes are atomic
(temporary file, fsync, rename) and run in a worker thread; a missing file is
empty; an unreadable or corrupt one is logged and ignored, never fatal (proxies
then get what a first start gives them).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import DecodeError

from wasmxds.api.objects import ObjectKey, Origin, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.store import is_digest
from wasmxds.modules.types import redact_url
from wasmxds.statefile import StateFile

__all__ = ["LAST_GOOD_FILE", "LastGoodFile", "SavedGood"]

log = structlog.get_logger(__name__)

LAST_GOOD_FILE = "last-good.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class SavedGood:
    """A plugin version that was served with its real filter, and its module's digest."""

    plugin: WasmPlugin
    digest: str

    @property
    def identity(self) -> tuple[str, str]:
        # The fingerprint covers metadata and spec: equal identities write equal entries.
        return self.plugin.fingerprint, self.digest


def _encode_entry(saved: SavedGood) -> dict[str, Any]:
    plugin = saved.plugin
    return {
        "namespace": plugin.key.namespace,
        "name": plugin.key.name,
        "kind": plugin.key.kind,
        "spec": base64.b64encode(plugin.spec.SerializeToString(deterministic=True)).decode(),
        "labels": dict(plugin.labels),
        "annotations": dict(plugin.annotations),
        "resource_version": plugin.resource_version,
        "generation": plugin.generation,
        "creation_timestamp": plugin.creation_timestamp,
        "origin": {"path": plugin.origin.path, "line": plugin.origin.line},
        "fingerprint": plugin.fingerprint,
        "module": saved.digest,
        # For people reading the file only; never read back.
        "url": redact_url(plugin.spec.url),
    }


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected a map of strings")
    return dict(value)


def _decode_entry(name: str, value: Any) -> SavedGood:
    if not isinstance(value, dict):
        raise ValueError("entry is not an object")
    key = ObjectKey(str(value["namespace"]), str(value["name"]), str(value.get("kind", "")))
    if key.resource_name != name:
        raise ValueError(f"entry for {key} filed under {name!r}")
    digest = str(value["module"])
    if not is_digest(digest):
        raise ValueError(f"module {digest!r} is not a sha256 digest")
    spec = wasm_pb2.WasmPlugin()
    spec.ParseFromString(base64.b64decode(str(value["spec"]), validate=True))
    origin = value["origin"]
    plugin = WasmPlugin(
        key=key,
        spec=spec,
        labels=_str_map(value["labels"]),
        annotations=_str_map(value["annotations"]),
        resource_version=str(value["resource_version"]),
        generation=int(value["generation"]),
        creation_timestamp=str(value["creation_timestamp"]),
        origin=Origin(str(origin["path"]), int(origin["line"])),
        fingerprint=str(value["fingerprint"]),
    )
    return SavedGood(plugin, digest)


class LastGoodFile:
    """The persisted last good versions; ``path=None`` keeps nothing on disk (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self._entries: dict[str, SavedGood] = {}
        # Plugin configuration may carry tokens: owner only (StateFile's mode).
        self._file = StateFile(
            path,
            prefix=".last-good-",
            failed_event="reconcile.last_good_write_failed",
            # SavedGood is immutable: sharing it with the writer is safe.
            snapshot=lambda: dict(self._entries),
            encode=_encode_document,
        )

    @property
    def path(self) -> Path | None:
        return self._file.path

    @classmethod
    def load(cls, path: Path) -> LastGoodFile:
        """Read ``path``; missing is empty, unreadable or corrupt is logged and ignored."""
        saved = cls(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return saved
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "reconcile.last_good_unreadable",
                path=str(path),
                error=str(exc),
                action="ignored; plugins without a current good module get their stand-in",
            )
            return saved
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("version") != _VERSION:
                raise ValueError(f"unknown last-good file version {document.get('version')!r}")
            plugins = document["plugins"]
            if not isinstance(plugins, dict):
                raise ValueError("plugins is not an object")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "reconcile.last_good_corrupt",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}"[:200],
                action="ignored; rewritten at the next reconcile",
            )
            saved._file.dirty = True
            return saved
        for name, value in plugins.items():
            try:
                saved._entries[name] = _decode_entry(name, value)
            except (ValueError, TypeError, KeyError, DecodeError, binascii.Error) as exc:
                saved._file.dirty = True
                log.warning(
                    "reconcile.last_good_entry_skipped",
                    path=str(path),
                    resource=str(name)[:200],
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )
        return saved

    @property
    def entries(self) -> Mapping[str, SavedGood]:
        return self._entries

    def replace(self, entries: Mapping[str, SavedGood]) -> None:
        """Make ``entries`` the content; the file is rewritten at the next flush if it changed."""
        old = {name: saved.identity for name, saved in self._entries.items()}
        new = {name: saved.identity for name, saved in entries.items()}
        if old != new:
            self._file.dirty = True
        self._entries = dict(entries)

    def document(self) -> dict[str, Any]:
        return _document(self._entries)

    async def flush(self) -> None:
        """Write the file if it changed; encoding and disk I/O run in a worker thread."""
        await self._file.flush()


def _document(entries: Mapping[str, SavedGood]) -> dict[str, Any]:
    return {
        "version": _VERSION,
        "plugins": {name: _encode_entry(saved) for name, saved in entries.items()},
    }


def _encode_document(entries: Mapping[str, SavedGood]) -> bytes:
    return json.dumps(_document(entries), sort_keys=True, indent=1).encode()
