"""Per-host and per-route scoping: the ``scope.wasmxds.io/...`` annotations.

Istio ignores annotations it does not know, so the same WasmPlugin YAML still
applies there (where the plugin then runs on every route). One grammar::

    scope.wasmxds.io/[override.<label>.]<dimension>: <value>

    metadata:
      annotations:
        scope.wasmxds.io/hosts: "api.example.com,*.internal"   # virtual hosts (by domain)
        scope.wasmxds.io/routes: "checkout,cart"               # route names
        scope.wasmxds.io/path-prefixes: "/api/,/v2/"           # route match prefix/path
        scope.wasmxds.io/override.strict.routes: "checkout"    # a per-scope override ...
        scope.wasmxds.io/override.strict.config: '{"limit": 5}'  # ... and its pluginConfig patch

``hosts``, ``routes`` and ``path-prefixes`` are comma-separated lists. A route
is in scope when every dimension given matches it (any item of a list will
do); a plugin with none of them runs everywhere, as in Istio. An override
``<label>`` selects routes inside the plugin's scope with the same dimensions,
and its ``config`` (a JSON object) is merged into ``pluginConfig`` with JSON
Merge Patch (RFC 7386: keys replace, ``null`` deletes, objects merge). The
first override by label order that selects a route wins there.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wasmxds.api.convert import FieldPath, Issue, Locator

__all__ = [
    "PREFIX",
    "UNSCOPED",
    "PluginScope",
    "ScopeOverride",
    "Selector",
    "merge_patch",
    "plugin_scope",
    "scope_issues",
]

PREFIX = "scope.wasmxds.io/"
_DIMENSIONS = ("hosts", "routes", "path-prefixes")
# A label becomes part of an ECDS resource name and an annotation key segment.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_MAX_OVERRIDES = 16
_HOST = re.compile(r"^[A-Za-z0-9.*-]+(:(\d+|\*))?$")
# Matching costs routes x domains x items per plugin, so lists are bounded: 64 is
# far more than a hand-written scope needs. 253 is DNS's name limit.
_MAX_ITEMS = 64
_MAX_CHARS = {"hosts": 253, "routes": 256, "path-prefixes": 1024}


@dataclass(frozen=True, slots=True)
class Selector:
    """Which routes: every non-empty dimension must match (any of its items)."""

    hosts: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    # Compiled once per plugin: matching runs per route x domain on every translation.
    _exact_hosts: frozenset[str] = field(init=False, repr=False, compare=False)
    _glob_hosts: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = frozenset(p.lower() for p in self.hosts if "*" not in p)
        globs = tuple(re.compile(fnmatch.translate(p.lower())) for p in self.hosts if "*" in p)
        object.__setattr__(self, "_exact_hosts", exact)
        object.__setattr__(self, "_glob_hosts", globs)

    @property
    def everywhere(self) -> bool:
        return not (self.hosts or self.routes or self.path_prefixes)

    def host_matches(self, domains: tuple[str, ...]) -> bool:
        """A virtual host matches when any of its domains matches any pattern (glob, any case)."""
        if not self.hosts:
            return True
        for domain in domains:
            lowered = domain.lower()
            if lowered in self._exact_hosts or any(g.match(lowered) for g in self._glob_hosts):
                return True
        return False

    def route_matches(self, name: str, path: str | None) -> bool:
        """``path``: the route's literal prefix or path match (None for regex and other kinds)."""
        if self.routes and name not in self.routes:
            return False
        if self.path_prefixes:
            return path is not None and any(path.startswith(p) for p in self.path_prefixes)
        return True


@dataclass(frozen=True, slots=True)
class ScopeOverride:
    label: str
    selector: Selector
    # Out of the repr: listener placement hashes the repr, and a patch only changes the
    # override's ECDS resource, never a listener.
    patch: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class PluginScope:
    """Where a plugin runs (``selector``) and its per-scope configurations (label order)."""

    selector: Selector = Selector()
    overrides: tuple[ScopeOverride, ...] = ()

    @property
    def scoped(self) -> bool:
        return not self.selector.everywhere or bool(self.overrides)


UNSCOPED = PluginScope()


def _items(text: str, dimension: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    if len(parts) > _MAX_ITEMS:
        raise ValueError(
            f"at most {_MAX_ITEMS} {dimension} per annotation (got {len(parts)}): "
            "use '*' patterns or fewer items"
        )
    if not text.strip() or any(not part for part in parts):
        raise ValueError(f"{text!r} is not a comma-separated list of {dimension} (no empty items)")
    for part in parts:
        if len(part) > _MAX_CHARS[dimension]:
            raise ValueError(
                f"{part[:40]!r}... is too long: at most {_MAX_CHARS[dimension]} characters "
                f"per item of {dimension} (got {len(part)})"
            )
        if dimension == "hosts" and (not _HOST.match(part) or part.count("*") > 1):
            raise ValueError(
                f"{part!r} is not a host: use a domain, optionally with one '*' "
                "(api.example.com, *.internal)"
            )
        if dimension == "path-prefixes" and not part.startswith("/"):
            raise ValueError(f"{part!r} is not a path prefix: it must start with '/'")
    return parts


def _patch(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object: it is merged into pluginConfig (RFC 7386)")
    return value


def _parse(annotations: Mapping[str, str]) -> tuple[PluginScope, list[tuple[str, str]]]:
    """The scope and the problems as (annotation, message)."""
    problems: list[tuple[str, str]] = []
    top: dict[str, tuple[str, ...]] = {}
    groups: dict[str, dict[str, tuple[str, ...]]] = {}
    patches: dict[str, dict[str, Any]] = {}
    broken: set[str] = set()  # labels with a malformed annotation: reported once, not again
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        rest, text = key[len(PREFIX) :], annotations[key]
        label = ""
        try:
            if rest in _DIMENSIONS:
                top[rest] = _items(text, rest)
                continue
            head, _, tail = rest.partition(".")
            label, _, dimension = tail.rpartition(".")
            if head != "override" or not label:
                raise ValueError(
                    f"unknown annotation; expected {PREFIX}hosts, routes, path-prefixes or "
                    f"{PREFIX}override.<label>.(hosts|routes|path-prefixes|config)"
                )
            if not _LABEL.match(label):
                raise ValueError(
                    f"override label {label!r}: lower-case letters, digits and '-', at most 32"
                )
            if dimension == "config":
                patches[label] = _patch(text)
            elif dimension in _DIMENSIONS:
                groups.setdefault(label, {})[dimension] = _items(text, dimension)
            else:
                raise ValueError(
                    f"unknown override field {dimension!r}; one of config, {', '.join(_DIMENSIONS)}"
                )
        except ValueError as exc:
            problems.append((key, str(exc)))
            broken.add(label)
    overrides = []
    for label in sorted((groups.keys() | patches.keys()) - broken):
        where = f"{PREFIX}override.{label}"
        if label not in patches:
            problems.append((f"{where}.routes", f"override {label!r} has no {where}.config"))
            continue
        if label not in groups:
            problems.append(
                (
                    f"{where}.config",
                    f"override {label!r} selects no routes: add {where}.hosts, "
                    ".routes or .path-prefixes",
                )
            )
            continue
        overrides.append(ScopeOverride(label, _selector(groups[label]), patches[label]))
    if len(overrides) > _MAX_OVERRIDES:
        problems.append((f"{PREFIX}override", f"at most {_MAX_OVERRIDES} overrides per plugin"))
    return PluginScope(_selector(top), tuple(overrides)), problems


def _selector(values: Mapping[str, tuple[str, ...]]) -> Selector:
    return Selector(
        hosts=values.get("hosts", ()),
        routes=values.get("routes", ()),
        path_prefixes=values.get("path-prefixes", ()),
    )


def plugin_scope(annotations: Mapping[str, str]) -> PluginScope:
    """The plugin's scope; malformed annotations count as absent (validation refuses such a
    plugin before it gets here)."""
    scope, _ = _parse(annotations)
    return scope


def scope_issues(
    annotations: Mapping[str, str], locate: Locator, *, http: bool, lua: bool = False
) -> list[Issue]:
    """Validation problems of the scope annotations, at the annotation's line. ``lua``: the
    plugin is a Lua TrafficExtension, which has no pluginConfig for an override to patch."""
    scope, problems = _parse(annotations)
    if not http and (scope.scoped or problems):
        key = next(k for k in sorted(annotations) if k.startswith(PREFIX))
        problems = [(key, "scope annotations apply to HTTP plugins only (type is NETWORK)")]
    elif lua:
        for override in scope.overrides:
            where = f"{PREFIX}override.{override.label}"
            problems.append(
                (
                    f"{where}.config",
                    "overrides change pluginConfig, which a Lua TrafficExtension does not "
                    f"have; remove {where}.* ({PREFIX}hosts, routes and path-prefixes do "
                    "apply to Lua)",
                )
            )
    issues = []
    for annotation, message in problems:
        path: FieldPath = ("metadata", "annotations", annotation)
        issues.append(Issue(path, locate(path), message))
    return issues


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch of ``patch`` onto ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
