"""Objects from the API server, validated as files are, with their last valid version.

A :class:`Record` is what the Kubernetes source keeps per object: the version
last seen, its problems, and the last version that validated (kept, and served,
while a newer one does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from wasmxds.api.configsecrets import CONFIG_SECRET_TYPE, ConfigSecret, parse_config_secret
from wasmxds.api.objects import API_VERSION, KIND, ObjectKey, Problem, Severity, WasmPlugin
from wasmxds.api.parse import parse_object
from wasmxds.api.secrets import PullSecret, parse_secret

__all__ = [
    "ObservedObject",
    "Parser",
    "Record",
    "needs_parse",
    "origin_of",
    "parse_config_secret_object",
    "parse_plugin",
    "parse_secret_object",
    "update",
]

Parser = Callable[[ObjectKey, Mapping[str, Any]], tuple[object | None, list[Problem]]]

# Metadata that changes without the object changing (every status write bumps both).
_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields"})


@dataclass(frozen=True, slots=True)
class ObservedObject:
    """A WasmPlugin as the Kubernetes source last saw it.

    ``problems`` are the validation errors of its latest version (empty when
    valid); ``served`` says whether a version of it (maybe an older, valid one)
    is being served; ``status`` is its status as stored on the server.
    """

    key: ObjectKey
    generation: int
    problems: tuple[Problem, ...] = ()
    served: bool = True
    status: Mapping[str, Any] = field(default_factory=dict)


def origin_of(key: ObjectKey) -> str:
    """Where problems of an object from the API server say they come from."""
    return f"kubernetes:{key}"


@dataclass(slots=True)
class Record:
    """One object: the version last seen, and the last valid version of it."""

    resource_version: str
    generation: int
    valid: object | None  # the last valid WasmPlugin, PullSecret or ConfigSecret
    problems: tuple[Problem, ...]
    status: Mapping[str, Any] = field(default_factory=dict)
    invalid: bool = False


def _metadata(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = raw.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _kept(key: ObjectKey, what: str) -> Problem:
    return Problem(
        origin_of(key),
        0,
        f"keeping the last valid version of {key if key.kind else f'{what} {key}'} until the"
        " error above is fixed",
        Severity.WARNING,
    )


def parse_plugin(key: ObjectKey, raw: Mapping[str, Any]) -> tuple[WasmPlugin | None, list[Problem]]:
    metadata = _metadata(raw)
    value = {**raw, "metadata": {k: v for k, v in metadata.items() if k not in _VOLATILE_METADATA}}
    value.setdefault("apiVersion", API_VERSION)
    value.setdefault("kind", KIND)
    parsed = parse_object(value, source=origin_of(key), default_namespace=key.namespace)
    if parsed is None:
        return None, [Problem(origin_of(key), 0, f"not a {API_VERSION} {KIND}")]
    plugin = parsed.plugin
    if plugin is not None:
        version = metadata.get("resourceVersion")
        plugin = dataclasses.replace(plugin, resource_version=str(version or ""))
    return plugin, list(parsed.problems)


def parse_secret_object(
    key: ObjectKey, raw: Mapping[str, Any]
) -> tuple[PullSecret | None, list[Problem]]:
    parsed = parse_secret(
        cast("Mapping[object, object]", raw),
        source=origin_of(key),
        line=0,
        locate=lambda _path: 0,
        default_namespace=key.namespace,
    )
    if parsed is None:  # the field selector keeps other types out; be safe anyway
        return None, []
    return parsed.secret, list(parsed.problems)


def parse_config_secret_object(
    key: ObjectKey, raw: Mapping[str, Any]
) -> tuple[ConfigSecret | None, list[Problem]]:
    """An Opaque Secret a plugin's configuration takes values from (selected by label)."""
    parsed = parse_config_secret(
        cast("Mapping[object, object]", raw),
        source=origin_of(key),
        line=0,
        locate=lambda _path: 0,
        default_namespace=key.namespace,
    )
    if parsed is None:
        # Selected by label, so any type arrives: say why this one cannot be used.
        found = raw.get("type")
        message = (
            f"type: Secret {key} is of type {found!r}; plugin configuration takes values"
            f" from {CONFIG_SECRET_TYPE} Secrets only"
        )
        return None, [Problem(origin_of(key), 0, message)]
    return parsed.secret, list(parsed.problems)


def needs_parse(
    records: Mapping[ObjectKey, Record], key: ObjectKey, raw: Mapping[str, Any] | None
) -> bool:
    """Whether :func:`update` will validate ``raw``: it exists and its version is new."""
    if raw is None:
        return False
    previous = records.get(key)
    return previous is None or previous.resource_version != _version(raw)


def _version(raw: Mapping[str, Any]) -> str:
    return str(_metadata(raw).get("resourceVersion") or "")


def update(
    records: dict[ObjectKey, Record],
    key: ObjectKey,
    raw: Mapping[str, Any] | None,
    parse: Parser | Mapping[ObjectKey, tuple[object | None, list[Problem]]],
    what: str,
) -> None:
    """Bring ``records[key]`` up to date with ``raw`` (None: the object was deleted).

    ``parse`` validates ``raw``, or holds its result already (validated in a
    worker thread, for the keys :func:`needs_parse` names).
    """
    if raw is None:
        records.pop(key, None)
        return
    metadata = _metadata(raw)
    version = _version(raw)
    previous = records.get(key)
    status = raw.get("status")
    status = status if isinstance(status, Mapping) else {}
    generation = metadata.get("generation")
    generation = generation if isinstance(generation, int) else 0
    if previous is not None and previous.resource_version == version:
        return
    valid, problems = parse[key] if isinstance(parse, Mapping) else parse(key, raw)
    problems = list(problems)
    invalid = valid is None
    if valid is None and previous is not None and previous.valid is not None:
        valid = previous.valid
        problems.append(_kept(key, what))
    records[key] = Record(version, generation, valid, tuple(problems), status, invalid)
