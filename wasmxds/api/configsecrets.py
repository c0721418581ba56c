"""pluginConfig values from Secrets: the ``secrets.wasmxds.io/plugin-config`` annotation.

Istio has no field for this (istio#46242), and the same WasmPlugin YAML must
still apply there, so the references live in an annotation Istio ignores::

    metadata:
      annotations:
        secrets.wasmxds.io/plugin-config: |
          auth.api_key=api-keys/primary
          upstream.token=upstream-token/token

Each line sets the pluginConfig value at a dotted path (objects are created
as needed; ``\\.`` is a dot inside a key, ``\\\\`` a backslash) to the text of key
``primary`` of the Secret ``api-keys`` in the plugin's own namespace, never
another. Blank lines and lines starting with ``#`` are skipped. A path must
not already be set in pluginConfig nor cross a value that is not an object:
the Secret's value never silently replaces something written in the plugin.

The values come from ``Opaque`` Secrets (or Secrets without a type) that opt
in with the label ``secrets.wasmxds.io/plugin-config: "true"`` (:data:`LABEL`):
whoever may create a WasmPlugin in a namespace must not thereby read every
Secret of it, so a Secret's owner decides. ``data`` is base64-encoded and
``stringData`` plain text (``stringData`` wins key by key, as the API server
merges it). Each value is at most :data:`MAX_VALUE_BYTES`, and the values one
plugin takes at most :data:`MAX_PLUGIN_BYTES` in all (a value referenced twice
counts twice): a reference multiplies a value, and a megabyte referenced a
hundred times by a few plugins once stalled the server. A :class:`ConfigSecret` never shows
its values: its ``repr`` names the object and where it came from, and every
problem names the field or key, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from wasmxds.api.convert import FieldPath, Issue, Locator
from wasmxds.api.objects import ObjectKey, Origin, Problem
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.secrets import SECRET_FIELDS, is_secret, secret_key
from wasmxds.api.validate import dns1123_subdomain_error

__all__ = [
    "ANNOTATION",
    "CONFIG_SECRET_TYPE",
    "LABEL",
    "LABEL_SELECTOR",
    "MAX_PLUGIN_BYTES",
    "MAX_REFERENCES",
    "MAX_VALUE_BYTES",
    "AnnotationProblem",
    "ConfigSecret",
    "ParsedConfigSecret",
    "SecretRef",
    "SecretValue",
    "annotation_issues",
    "config_secret_refs",
    "parse_annotation",
    "parse_config_secret",
    "path_collisions",
    "with_values",
]

ANNOTATION = "secrets.wasmxds.io/plugin-config"
CONFIG_SECRET_TYPE = "Opaque"
# A Secret's owner lets plugins of its namespace read it with this label set to "true".
LABEL = "secrets.wasmxds.io/plugin-config"
LABEL_SELECTOR = f"{LABEL}=true"
# A plugin's configuration, not a vault: far more references than this is a mistake.
MAX_REFERENCES = 100
# API keys, tokens and certificates fit with room to spare; the per-plugin total bounds
# what one plugin's references can multiply a value into (it is built and hashed per edit).
MAX_VALUE_BYTES = 64 << 10
MAX_PLUGIN_BYTES = 256 << 10
# Kubernetes' rule for the keys of a Secret's data (IsConfigMapKey).
_DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+\Z")
_ANNOTATION_PATH: FieldPath = ("metadata", "annotations", ANNOTATION)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """One annotation line: pluginConfig ``path`` gets key ``key`` of Secret ``secret``."""

    path: tuple[str, ...]
    secret: str
    key: str
    line: int
    """The line within the annotation (1-based)."""

    @property
    def dotted(self) -> str:
        """The path as it is written in the annotation."""
        return ".".join(part.replace("\\", "\\\\").replace(".", "\\.") for part in self.path)

    @property
    def masked(self) -> str:
        """What debug pages show in place of the value."""
        return f"[from secret {self.secret}/{self.key}]"

    def __str__(self) -> str:
        return f"{self.dotted}={self.secret}/{self.key}"


@dataclass(frozen=True, slots=True)
class SecretValue:
    """A reference and the text it resolved to; the text never shows in a ``repr``."""

    ref: SecretRef
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AnnotationProblem:
    line: int
    message: str


def _split(text: str, separator: str) -> list[str] | None:
    """``text`` split at unescaped ``separator``s and unescaped; None on a bad escape."""
    parts, current, chars = [], [], iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in ("\\", ".", "="):
                return None
            current.append(escaped)
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _assignment(text: str) -> tuple[str, str] | None:
    """``path=target`` split at the first ``=`` that is not escaped."""
    escaped = False
    for index, char in enumerate(text):
        if char == "=" and not escaped:
            return text[:index].strip(), text[index + 1 :].strip()
        escaped = char == "\\" and not escaped
    return None


def _target_error(target: str) -> tuple[str, str, str | None]:
    """(secret, key, why the target is not ``<secret>/<key>``, or None)."""
    parts = target.split("/")
    if len(parts) == 3:
        return (
            "",
            "",
            (
                f"{target!r} names a namespace: a plugin reads Secrets of its own namespace only;"
                " write <secret>/<key>"
            ),
        )
    if len(parts) != 2 or not all(parts):
        return "", "", f"{target!r} is not <secret>/<key>"
    secret, key = parts
    if reason := dns1123_subdomain_error(secret):
        return "", "", f"{secret!r} is not a valid Secret name: {reason}"
    if len(key) > 253 or not _DATA_KEY.match(key):
        return (
            "",
            "",
            (
                f"{key!r} is not a valid Secret key (letters, digits, '-', '_' and '.';"
                " at most 253 characters)"
            ),
        )
    return secret, key, None


def parse_annotation(text: str) -> tuple[tuple[SecretRef, ...], tuple[AnnotationProblem, ...]]:
    """Every reference in the annotation's ``text``, and every problem with it."""
    refs: list[SecretRef] = []
    problems: list[AnnotationProblem] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assignment = _assignment(line)
        if assignment is None:
            problems.append(
                AnnotationProblem(number, "expected <path>=<secret>/<key> (no '=' found)")
            )
            continue
        written, target = assignment
        path = _split(written, ".")
        if path is None:
            problems.append(
                AnnotationProblem(number, r"only \. \= and \\ may be escaped in a path")
            )
            continue
        if not written or not all(path):
            problems.append(
                AnnotationProblem(number, f"{written!r} is not a dotted pluginConfig path")
            )
            continue
        secret, key, error = _target_error(target)
        if error is not None:
            problems.append(AnnotationProblem(number, error))
            continue
        key_path = tuple(path)
        if key_path in seen:
            problems.append(
                AnnotationProblem(number, f"path {written} is already set on line {seen[key_path]}")
            )
            continue
        seen[key_path] = number
        refs.append(SecretRef(key_path, secret, key, number))
    if len(refs) > MAX_REFERENCES:
        problems.append(
            AnnotationProblem(1, f"at most {MAX_REFERENCES} references (got {len(refs)})")
        )
        return tuple(refs), tuple(problems)
    for ref in refs:
        for other in refs:
            if other is not ref and other.path[: len(ref.path)] == ref.path:
                problems.append(
                    AnnotationProblem(
                        other.line,
                        f"path {other.dotted} is inside {ref.dotted}, which line {ref.line}"
                        " sets to a string",
                    )
                )
    return tuple(refs), tuple(sorted(problems, key=lambda p: p.line))


def config_secret_refs(annotations: Mapping[str, str]) -> tuple[SecretRef, ...]:
    """The references of a validated plugin's annotations (none without the annotation)."""
    text = annotations.get(ANNOTATION)
    if text is None:
        return ()
    refs, _ = parse_annotation(text)
    return refs


def _kind(value: struct_pb2.Value) -> str:
    return {
        "string_value": "a string",
        "number_value": "a number",
        "bool_value": "a boolean",
        "null_value": "null",
        "list_value": "a list",
        "struct_value": "an object",
    }.get(value.WhichOneof("kind") or "", "a value")


def path_collisions(
    refs: Iterable[SecretRef], config: struct_pb2.Struct
) -> list[tuple[SecretRef, str]]:
    """The references whose path pluginConfig already sets, or crosses a non-object in."""
    found = []
    for ref in refs:
        here = config
        for depth, part in enumerate(ref.path):
            if part not in here.fields:
                break
            value = here.fields[part]
            prefix = SecretRef(ref.path[: depth + 1], ref.secret, ref.key, ref.line).dotted
            if depth == len(ref.path) - 1:
                found.append((ref, f"pluginConfig already sets {prefix} ({_kind(value)})"))
                break
            if value.WhichOneof("kind") != "struct_value":
                found.append((ref, f"pluginConfig.{prefix} is {_kind(value)}, not an object"))
                break
            here = value.struct_value
    return found


def with_values(
    config: struct_pb2.Struct, values: Sequence[tuple[tuple[str, ...], str]]
) -> struct_pb2.Struct:
    """A copy of ``config`` with each (path, text) set, objects created as needed.

    The paths were checked (:func:`path_collisions`) when the plugin was validated.
    """
    merged = struct_pb2.Struct()
    merged.CopyFrom(config)
    for path, text in values:
        here = merged
        for part in path[:-1]:
            here = here.fields[part].struct_value
        here.fields[path[-1]].string_value = text
    return merged


def annotation_issues(
    annotations: Mapping[str, str], spec: wasm_pb2.WasmPlugin, locate: Locator
) -> list[Issue]:
    """Validation problems of the annotation, each at its own line where it is known.

    A block scalar (``|``) puts annotation line N on the key's line + N; a
    one-line value sits on the key's line.
    """
    text = annotations.get(ANNOTATION)
    if text is None:
        return []
    base = locate(_ANNOTATION_PATH)
    block = "\n" in text

    def issue(line: int, message: str) -> Issue:
        where = base + line if block and base else base
        return Issue(_ANNOTATION_PATH, where, f"line {line}: {message}")

    refs, problems = parse_annotation(text)
    issues = [issue(p.line, p.message) for p in problems]
    if not refs and not problems:
        issues.append(issue(1, "no references; expected lines of <path>=<secret>/<key>"))
    config = spec.plugin_config if spec.HasField("plugin_config") else struct_pb2.Struct()
    for ref, message in path_collisions(refs, config):
        issues.append(issue(ref.line, f"{ref}: {message}; remove one of the two"))
    return issues


# -- Opaque Secrets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class ConfigSecret:
    """An Opaque Secret's keys and values; ``fingerprint`` changes exactly when they do
    (for change detection only; never shown). ``labelled``: it carries :data:`LABEL`
    set to "true", so plugins may take values from it."""

    key: ObjectKey
    origin: Origin
    data: Mapping[str, bytes] = field(repr=False)
    fingerprint: str = field(repr=False)
    labelled: bool = False

    def __repr__(self) -> str:
        return (
            f"ConfigSecret({self.key}, {self.origin}, keys={sorted(self.data)},"
            f" labelled={self.labelled})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ParsedConfigSecret:
    """One Opaque Secret after validation; ``secret`` is None when any error was found."""

    secret: ConfigSecret | None
    key: ObjectKey | None
    problems: tuple[Problem, ...]


def parse_config_secret(
    value: Mapping[object, object],
    *,
    source: str,
    line: int,
    locate: Locator,
    default_namespace: str,
) -> ParsedConfigSecret | None:
    """Validate a ``kind: Secret`` of type ``Opaque`` (or none); None for other Secrets."""
    if not is_secret(value) or value.get("type") not in (None, CONFIG_SECRET_TYPE):
        return None
    issues: list[Issue] = []

    def error(path: FieldPath, message: str) -> None:
        issues.append(Issue(path, locate(path), message))

    for name in value:
        if name not in SECRET_FIELDS:
            error((str(name),), "unknown field for a Secret")
    key = secret_key(value.get("metadata"), default_namespace, error)
    data = _data(value, error)
    problems = tuple(issue.to_problem(source) for issue in issues)
    if key is None or data is None or issues:
        return ParsedConfigSecret(None, key, problems)
    labelled = _labelled(value.get("metadata"))
    digest = hashlib.sha256(b"labelled:" if labelled else b"")
    for name in sorted(data):
        digest.update(f"{len(name)}:{name}:{len(data[name])}:".encode() + data[name])
    secret = ConfigSecret(key, Origin(source, line), data, digest.hexdigest(), labelled)
    return ParsedConfigSecret(secret, key, problems)


def _labelled(metadata: object) -> bool:
    """Whether the Secret's owner opted in (:data:`LABEL` set to "true")."""
    labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(LABEL) == "true"


def _data(
    value: Mapping[object, object], error: Callable[[FieldPath, str], None]
) -> dict[str, bytes] | None:
    """Every key's bytes: ``data`` decoded, then ``stringData`` over it."""
    merged: dict[str, bytes] = {}
    ok = True
    for section in ("data", "stringData"):
        items = value.get(section)
        if items is None:
            continue
        if not isinstance(items, Mapping):
            error((section,), "must be a mapping of keys to values")
            ok = False
            continue
        for name, item in items.items():
            path: FieldPath = (section, str(name))
            if not isinstance(name, str) or len(name) > 253 or not _DATA_KEY.match(name):
                error(path, "not a valid key (letters, digits, '-', '_' and '.')")
                ok = False
            elif not isinstance(item, str):
                error(path, "must be a string" + (" (base64)" if section == "data" else ""))
                ok = False
            elif section == "stringData":
                merged[name] = item.encode()
            else:
                try:
                    merged[name] = base64.b64decode("".join(item.split()), validate=True)
                except (binascii.Error, ValueError):
                    error(path, "not valid base64")
                    ok = False
    return merged if ok else None
