"""The spec of Istio 1.30's ``TrafficExtension`` → the internal WasmPlugin model.

A TrafficExtension (istio/api ``extensions/v1alpha1/traffic_extension.proto``)
is a WasmPlugin whose Wasm fields moved under ``spec.wasm``, plus a Lua
variant (``spec.lua.inlineCode``). Its ``wasm`` part is folded into a
``WasmPlugin`` spec, so fetching, verification, stand-ins, last good and
placement are exactly a WasmPlugin's; the shared schema checks and Istio's
rules (:mod:`wasmxds.api.convert`, :mod:`wasmxds.api.validate`) run on it, and
their problems are reported at the TrafficExtension's own paths
(``spec.wasm.url``). A Lua extension keeps only the placement fields in its
spec and carries its code beside it.

The CRD's rules on top of the proto's: exactly one of ``wasm`` and ``lua``
(CEL), at most one of ``selector`` and ``targetRefs`` (CEL, shared with
WasmPlugin), ``inlineCode`` 1 to 65536 characters. Where istiod drops rather
than rejects (an empty ``url``, an empty or over-64 KiB Lua body — the webhook
counts bytes —, neither ``wasm`` nor ``lua``), the CRD or the webhook refuses
the object first; wasmxds refuses it too, so the last good version stays
served and the problem is reported, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from wasmxds.api.convert import FieldPath, Issue, Locator, convert, describe, suggest
from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND, ObjectKey, Problem, Severity, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.validate import validate_spec

__all__ = ["MAX_LUA_BYTES", "ExtensionSpec", "convert_extension", "supersede"]

MAX_LUA_BYTES = 65536
"""istiod's limit (bytes, the webhook) and the CRD's (characters, ``maxLength``)."""

_WASM_FIELDS = (
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "failStrategy",
    "vmConfig",
    "type",
)
_PLACEMENT_FIELDS = ("selector", "targetRefs", "phase", "priority", "match")
_SPEC_FIELDS = (*_PLACEMENT_FIELDS, "wasm", "lua")
_LUA_FIELDS = ("inlineCode",)
# ExecutionPhase's names in YAML (the CRD's enum); WasmPlugin spells the first one
# UNSPECIFIED_PHASE.
_PHASES = {
    "UNSPECIFIED": "UNSPECIFIED_PHASE",
    "AUTHN": "AUTHN",
    "AUTHZ": "AUTHZ",
    "STATS": "STATS",
}


@dataclass(frozen=True, slots=True)
class ExtensionSpec:
    """What a TrafficExtension spec became; ``spec`` is None when any error was found."""

    spec: wasm_pb2.WasmPlugin | None
    lua: str | None
    issues: tuple[Issue, ...]


def _to_extension_path(path: FieldPath) -> FieldPath:
    """A WasmPlugin field path → where the same field sits in a TrafficExtension."""
    if len(path) >= 2 and path[0] == "spec" and path[1] in _WASM_FIELDS:
        return ("spec", "wasm", *path[1:])
    return path


class _Check:
    def __init__(self, locate: Locator) -> None:
        self.locate = locate
        self.issues: list[Issue] = []

    def error(self, path: FieldPath, message: str) -> None:
        self.issues.append(Issue(path, self.locate(path), message))

    def unknown(
        self, mapping: Mapping[object, object], base: FieldPath, known: tuple[str, ...]
    ) -> None:
        for key in mapping:
            path = (*base, str(key))
            if key in known:
                continue
            if base == ("spec",) and key in _WASM_FIELDS:
                self.error(path, "unknown field; in a TrafficExtension it belongs under spec.wasm")
            elif base == ("spec", "wasm") and key in _PLACEMENT_FIELDS:
                self.error(path, "unknown field; it belongs directly under spec, not spec.wasm")
            else:
                self.error(path, f"unknown field; {suggest(str(key), known)}")

    def phase(self, value: object) -> object:
        """The phase in WasmPlugin's spelling; anything else is reported and left out."""
        if value is None:
            return None
        if isinstance(value, str) and value in _PHASES:
            return _PHASES[value]
        self.error(
            ("spec", "phase"),
            f"invalid value {describe(value)}; valid options: UNSPECIFIED, AUTHN, AUTHZ, STATS",
        )
        return None

    def lua(self, value: object) -> str | None:
        base: FieldPath = ("spec", "lua")
        if not isinstance(value, Mapping):
            self.error(base, f"expected a mapping with inlineCode, got {describe(value)}")
            return None
        self.unknown(value, base, _LUA_FIELDS)
        code = value.get("inlineCode")
        path = (*base, "inlineCode")
        if code is None:
            self.error(path, "required: the Lua code (envoy_on_request and/or envoy_on_response)")
            return None
        if not isinstance(code, str):
            self.error(path, f"expected a string, got {describe(code)}")
            return None
        if not code.strip():
            self.error(
                path, "must not be empty (the CRD requires it; istiod would drop the extension)"
            )
            return None
        if len(code) > MAX_LUA_BYTES:
            self.error(
                path,
                f"must be at most {MAX_LUA_BYTES} characters (the CRD's maxLength), got"
                f" {len(code)}; use a Wasm module for larger filters",
            )
            return None
        size = len(code.encode())
        if size > MAX_LUA_BYTES:
            self.error(
                path,
                f"must be at most {MAX_LUA_BYTES} bytes as UTF-8 (Istio's webhook; istiod would"
                f" drop the extension), got {size}",
            )
            return None
        return code


def convert_extension(value: object, locate: Locator) -> ExtensionSpec:
    """Check a TrafficExtension's ``spec`` and fold it into a WasmPlugin spec."""
    check = _Check(locate)
    if value is None:
        check.error(("spec",), "required: the TrafficExtension spec (with wasm or lua)")
        return ExtensionSpec(None, None, tuple(check.issues))
    if not isinstance(value, Mapping):
        check.error(("spec",), f"expected a mapping, got {describe(value)}")
        return ExtensionSpec(None, None, tuple(check.issues))
    check.unknown(value, ("spec",), _SPEC_FIELDS)
    wasm, lua = value.get("wasm"), value.get("lua")
    if wasm is not None and lua is not None:
        check.error(("spec",), "exactly one of wasm or lua must be set (the CRD's rule), not both")
    elif wasm is None and lua is None:
        check.error(
            ("spec",),
            "exactly one of wasm or lua must be set (the CRD's rule; istiod would drop an"
            " extension with neither)",
        )
    merged: dict[object, object] = {
        key: value[key] for key in _PLACEMENT_FIELDS if key in value and key != "phase"
    }
    phase = check.phase(value.get("phase"))
    if phase is not None:
        merged["phase"] = phase
    code: str | None = None
    if isinstance(wasm, Mapping):
        check.unknown(wasm, ("spec", "wasm"), _WASM_FIELDS)
        merged.update((key, item) for key, item in wasm.items() if key in _WASM_FIELDS)
    elif wasm is not None:
        check.error(("spec", "wasm"), f"expected a mapping with url, got {describe(wasm)}")
    if lua is not None and wasm is None:
        code = check.lua(lua)

    def where(path: FieldPath) -> int:
        return locate(_to_extension_path(path))

    conversion = convert(merged, wasm_pb2.WasmPlugin, path=("spec",), locate=where)
    found = list(conversion.issues)
    if conversion.ok:
        found.extend(
            issue
            for issue in validate_spec(conversion.message, present=conversion.present, locate=where)
            # A Lua extension has no URL: the Wasm-only rule does not apply.
            if not (wasm is None and issue.rule == "url-required")
        )
    issues = [*check.issues]
    issues.extend(dataclasses.replace(i, path=_to_extension_path(i.path)) for i in found)
    if not conversion.ok or any(issue.is_error for issue in issues):
        return ExtensionSpec(None, None, tuple(issues))
    return ExtensionSpec(conversion.message, code, tuple(issues))


def supersede(
    plugins: Mapping[ObjectKey, WasmPlugin],
) -> tuple[dict[ObjectKey, WasmPlugin], dict[ObjectKey, Problem]]:
    """Drop each WasmPlugin that a TrafficExtension of the same namespace/name supersedes.

    Both kinds are served as ``<ns>.<name>`` (DESIGN contract), so the two cannot
    both be. Istio 1.30 keeps the TrafficExtension's name and renames the
    WasmPlugin; wasmxds cannot rename (a WasmPlugin's name is contract too, and
    ``~`` is taken by per-scope overrides), so the WasmPlugin is not served.
    Returns the plugins to serve and, per dropped WasmPlugin, a warning at its
    origin.
    """
    extensions = {
        (key.namespace, key.name): plugin
        for key, plugin in plugins.items()
        if key.kind == TRAFFIC_EXTENSION_KIND
    }
    kept: dict[ObjectKey, WasmPlugin] = {}
    dropped: dict[ObjectKey, Problem] = {}
    for key, plugin in plugins.items():
        extension = None if key.kind else extensions.get((key.namespace, key.name))
        if extension is None:
            kept[key] = plugin
            continue
        message = (
            f"{key.described} is not served: {extension.key.described} (at {extension.origin})"
            f" has the same resource name {key.resource_name} and supersedes it, as in"
            " Istio 1.30 (which serves both by renaming the WasmPlugin); rename one of them"
            " or delete the WasmPlugin"
        )
        dropped[key] = Problem(
            plugin.origin.path, plugin.origin.line, message, severity=Severity.WARNING
        )
    return kept, dropped
