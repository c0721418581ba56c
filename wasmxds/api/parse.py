"""Files and objects to validated :class:`~wasmxds.api.objects.WasmPlugin` values.

A file holds any number of YAML documents (``---``); a ``kind: List`` (what
``kubectl get -o yaml`` prints) is read item by item. Documents that are not
WasmPlugins are skipped quietly, so a directory can hold other manifests too,
unless they look like a WasmPlugin gone wrong: ``kind: WasmPlugin`` with the
wrong apiVersion, an ``extensions.istio.io`` object without a kind, or an
object with neither apiVersion nor kind whose spec has a ``url``.
Maistra's deprecated ServiceMeshExtension (``maistra.io/v1``) is read too: it
is converted (:mod:`wasmxds.maistra.servicemeshextension`) and becomes the
WasmPlugin of the same namespace/name, with a deprecation warning.
``kubernetes.io/dockerconfigjson`` Secrets (image pull secrets) are collected
too (:mod:`wasmxds.api.secrets`), and so are ``Opaque`` ones, which the
``secrets.wasmxds.io/plugin-config`` annotation takes pluginConfig values
from (:mod:`wasmxds.api.configsecrets`); Secrets of other types are skipped.

A file past one of the input limits (:mod:`wasmxds.api.limits`: size,
documents, values and text once aliases are expanded, nesting) is refused
whole, like a file that is not YAML, and so are objects passed to
:func:`parse_object` that pass them.

Every object is checked in three layers, and all problems are reported, not
just the first: the object and its metadata (as the API server would),
the spec's schema (:mod:`wasmxds.api.convert`), and, when the schema is
clean, Istio's semantic rules (:mod:`wasmxds.api.validate`).

:func:`parse_object` is the entry point for data that did not come from a
file (the Kubernetes source); it takes plain decoded JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from wasmxds.api.configsecrets import (
    ConfigSecret,
    ParsedConfigSecret,
    annotation_issues,
    parse_config_secret,
)
from wasmxds.api.convert import (
    FieldPath,
    Issue,
    Locator,
    convert,
    describe,
    prefixed,
    suggest,
)
from wasmxds.api.files import ConfigFileError, read_config_file
from wasmxds.api.json import canonical_json
from wasmxds.api.limits import DEFAULT_LIMITS, Limits, check_value
from wasmxds.api.objects import (
    API_GROUP,
    API_VERSION,
    DEFAULT_NAMESPACE,
    KIND,
    ObjectKey,
    Origin,
    ParsedObject,
    Problem,
    Severity,
    WasmPlugin,
)
from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND as TE_KIND
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.rollout import rollout_issues
from wasmxds.api.scope import scope_issues
from wasmxds.api.secrets import ParsedSecret, PullSecret, parse_secret
from wasmxds.api.trafficextension import convert_extension
from wasmxds.api.validate import (
    dns1123_label_error,
    dns1123_subdomain_error,
    label_value_error,
    qualified_name_error,
    validate_spec,
)
from wasmxds.api.yamlload import YamlSyntaxError, load_documents
from wasmxds.maistra.servicemeshextension import (
    EXTENSION_API_VERSIONS,
    EXTENSION_KIND,
    parse_extension,
)

__all__ = [
    "ParsedFile",
    "ParsedObject",
    "fingerprint",
    "parse_bytes",
    "parse_file",
    "parse_object",
    "parse_text",
    "unreadable",
]

log = structlog.get_logger(__name__)

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")

# ObjectMeta fields a file may carry (kubectl get -o yaml prints most of them),
# with the JSON type each must have.
_METADATA: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "namespace": str,
    "generateName": str,
    "labels": Mapping,
    "annotations": Mapping,
    "resourceVersion": str,
    "generation": int,
    "creationTimestamp": str,
    "deletionTimestamp": str,
    "deletionGracePeriodSeconds": int,
    "uid": str,
    "selfLink": str,
    "finalizers": list,
    "ownerReferences": list,
    "managedFields": list,
}

_MAX_ANNOTATIONS_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """Everything one file contributes.

    ``syntax_ok`` is False when the file could not be read or is not YAML at
    all; then nothing in it can be trusted and the caller keeps the file's last
    good content. ``invalid_keys`` names the objects that were identified but
    failed validation (the caller keeps their last good version).
    ``object_lines`` gives the line of every identified object, valid or not
    (the first definition of each), for cross-file duplicate reports.
    ``secrets`` and ``invalid_secrets`` are the same for image pull secrets
    (``kubernetes.io/dockerconfigjson`` Secrets), ``config_secrets`` and
    ``invalid_config_secrets`` for ``Opaque`` ones; other Secrets are skipped.
    """

    path: str
    plugins: tuple[WasmPlugin, ...]
    problems: tuple[Problem, ...]
    invalid_keys: tuple[ObjectKey, ...]
    syntax_ok: bool
    object_lines: tuple[tuple[ObjectKey, int], ...] = ()
    secrets: tuple[PullSecret, ...] = ()
    invalid_secrets: tuple[ObjectKey, ...] = ()
    config_secrets: tuple[ConfigSecret, ...] = ()
    invalid_config_secrets: tuple[ObjectKey, ...] = ()

    @property
    def has_errors(self) -> bool:
        return any(problem.is_error for problem in self.problems)


def fingerprint(value: Mapping[object, object]) -> str:
    """The sha256 (hex) of an object's canonical JSON, ``status`` left out."""
    content = {key: item for key, item in value.items() if key != "status"}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def parse_file(
    path: Path, *, default_namespace: str = DEFAULT_NAMESPACE, limits: Limits = DEFAULT_LIMITS
) -> ParsedFile:
    """Read and parse one file; unreadable or non-UTF-8 files come back with ``syntax_ok`` False."""
    name = str(path)
    try:
        data = read_config_file(path, limits.max_bytes)
    except ConfigFileError as exc:
        return unreadable(name, 1, exc.reason, exc.severity)
    return parse_bytes(data, name, default_namespace=default_namespace, limits=limits)


def parse_bytes(
    data: bytes,
    path: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedFile:
    """Parse the content of the file named ``path``; it must be UTF-8 (a BOM is allowed)."""
    if len(data) > limits.max_bytes:
        return unreadable(path, 1, limits.too_big())
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return unreadable(path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})")
    return parse_text(text, path, default_namespace=default_namespace, limits=limits)


def parse_text(
    text: str,
    path: str,
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedFile:
    """Parse the YAML (or JSON) ``text`` of the file named ``path``."""
    try:
        documents = load_documents(text, limits)
    except YamlSyntaxError as exc:
        return unreadable(path, exc.line, exc.message)
    collector = _FileCollector(path, default_namespace)
    for document in documents:
        collector.add(document.value, document.lines, document.issues, ())
    return collector.result()


def parse_object(
    value: object,
    *,
    source: str,
    line: int = 0,
    locate: Locator | None = None,
    default_namespace: str = DEFAULT_NAMESPACE,
    issues: Iterable[Issue] = (),
    source_limits: Limits | None = DEFAULT_LIMITS,
) -> ParsedObject | None:
    """Validate one object given as plain data; None when it is not a WasmPlugin at all.

    ``source`` names where it came from in problems (a file path, or
    ``kubernetes:ns/name``) and ``line`` where it starts. ``locate`` gives the
    line of a field path (default: ``line`` for every field). ``issues`` are
    problems already found while reading the object (YAML that JSON cannot
    express); they make the object invalid like any other error.
    ``source_limits`` bounds the object's size (:mod:`wasmxds.api.limits`);
    an object past them is an error whatever its kind. None skips the check,
    for objects from a file, which was bounded as a whole while it was read.
    """
    where: Locator = locate if locate is not None else (lambda _path: line)
    if not isinstance(value, Mapping):
        return None
    found = list(issues)
    # Data from a file is bounded as it is read; data from elsewhere is bounded
    # here, before any of it is looked at (a huge object is refused whatever its kind).
    if source_limits is not None and (reason := check_value(value, "the object", source_limits)):
        found.append(Issue((), where(()), reason))
        key = _key_only(value, default_namespace)
        return ParsedObject(None, key, tuple(issue.to_problem(source) for issue in found))
    verdict = _identify(value)
    if verdict is _Verdict.SKIP:
        return None
    if isinstance(verdict, tuple):
        path, message = verdict
        found.append(Issue(path, where(path), message))
        key = _key_only(value, default_namespace)
        return ParsedObject(None, key, tuple(issue.to_problem(source) for issue in found))
    if verdict is _Verdict.EXTENSION:
        return parse_extension(
            value,
            check=parse_object,
            source=source,
            line=line,
            locate=where,
            default_namespace=default_namespace,
            issues=found,
        )
    kind = TE_KIND if verdict is _Verdict.TRAFFIC_EXTENSION else ""
    return _Object(value, where, found, default_namespace, kind).build(source, line)


def unreadable(
    path: str, line: int, message: str, severity: Severity = Severity.ERROR
) -> ParsedFile:
    """What a file that cannot be read or parsed at all contributes: one problem."""
    return ParsedFile(path, (), (Problem(path, line, message, severity),), (), syntax_ok=False)


class _Verdict(enum.Enum):
    SKIP = "not a WasmPlugin"
    CHECK = "a WasmPlugin"
    EXTENSION = "a ServiceMeshExtension, served as a WasmPlugin"
    TRAFFIC_EXTENSION = "a TrafficExtension, served as a WasmPlugin or a Lua filter"


def _identify(value: Mapping[object, object]) -> _Verdict | tuple[FieldPath, str]:
    """Decide whether ``value`` is ours to check.

    Returns a verdict, or a (path, message) pair for an object that is meant
    to be a WasmPlugin but cannot be read as one.
    """
    api_version, kind = value.get("apiVersion"), value.get("kind")
    if kind == KIND:
        if api_version == API_VERSION:
            return _Verdict.CHECK
        if api_version is None:
            return ("apiVersion",), f"required: apiVersion {API_VERSION} for kind {KIND}"
        return (
            ("apiVersion",),
            f"unsupported apiVersion {describe(api_version)} for kind {KIND};"
            f" the supported one is {API_VERSION}",
        )
    if kind == TE_KIND:
        if api_version == API_VERSION:
            return _Verdict.TRAFFIC_EXTENSION
        return (
            ("apiVersion",),
            f"unsupported apiVersion {describe(api_version)} for kind {TE_KIND};"
            f" the supported one is {API_VERSION}",
        )
    if isinstance(kind, str) and kind.casefold() == TE_KIND.casefold():
        hint = f'did you mean "{TE_KIND}"? (kinds are case-sensitive)'
        return ("kind",), f'unknown kind "{kind}"; {hint}'
    if kind == EXTENSION_KIND:
        if api_version in EXTENSION_API_VERSIONS:
            return _Verdict.EXTENSION
        supported = " and ".join(EXTENSION_API_VERSIONS)
        return (
            ("apiVersion",),
            f"unsupported apiVersion {describe(api_version)} for kind {EXTENSION_KIND};"
            f" the supported ones are {supported}",
        )
    if isinstance(kind, str) and kind.casefold() == KIND.casefold():
        hint = f'did you mean "{KIND}"? (kinds are case-sensitive)'
        return ("kind",), f'unknown kind "{kind}"; {hint}'
    ours = isinstance(api_version, str) and api_version.startswith(API_GROUP + "/")
    if ours and not isinstance(kind, str):
        return ("kind",), f"required: kind {KIND}" if kind is None else "must be a string"
    spec = value.get("spec")
    if api_version is None and kind is None and isinstance(spec, Mapping) and "url" in spec:
        return (), f"apiVersion and kind are required (apiVersion: {API_VERSION}, kind: {KIND})"
    return _Verdict.SKIP


def _key_only(value: Mapping[object, object], default_namespace: str) -> ObjectKey | None:
    metadata = value.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace") or default_namespace
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    if dns1123_subdomain_error(name) or dns1123_label_error(namespace):
        return None
    return ObjectKey(namespace, name, TE_KIND if value.get("kind") == TE_KIND else "")


class _Object:
    """The checks of one WasmPlugin object and what they produce."""

    def __init__(
        self,
        value: Mapping[object, object],
        locate: Locator,
        issues: list[Issue],
        default_namespace: str,
        kind: str = "",
    ) -> None:
        self.kind = kind
        self.lua: str | None = None
        self.value = value
        self.locate = locate
        self.issues = issues
        self.default_namespace = default_namespace
        self.labels: dict[str, str] = {}
        self.annotations: dict[str, str] = {}

    def error(self, path: FieldPath, message: str) -> None:
        self.issues.append(Issue(path, self.locate(path), message))

    def build(self, source: str, line: int) -> ParsedObject:
        for key in self.value:
            if key not in _TOP_LEVEL:
                path: FieldPath = (key,) if isinstance(key, str) else ()
                self.error(path, f"unknown field; {suggest(str(key), _TOP_LEVEL)}")
        key = self.metadata(self.value.get("metadata"))
        spec = self.spec(self.value.get("spec"))
        digest = ""
        try:
            digest = fingerprint(self.value)
        except (TypeError, ValueError) as exc:  # only from odd in-memory data
            self.error((), f"cannot be rendered as JSON: {exc}")
        problems = tuple(issue.to_problem(source) for issue in self.issues)
        if spec is None or any(issue.is_error for issue in self.issues):
            return ParsedObject(None, key, problems)
        assert key is not None  # a missing or bad name is an error
        metadata = self.value.get("metadata")
        assert isinstance(metadata, Mapping)
        plugin = WasmPlugin(
            key=key,
            lua=self.lua,
            spec=spec,
            labels=self.labels,
            annotations=self.annotations,
            resource_version=str(metadata.get("resourceVersion") or ""),
            generation=_as_int(metadata.get("generation")),
            creation_timestamp=str(metadata.get("creationTimestamp") or ""),
            origin=Origin(source, line),
            fingerprint=digest,
        )
        return ParsedObject(plugin, key, problems)

    def spec(self, value: object) -> wasm_pb2.WasmPlugin | None:
        if self.kind == TE_KIND:
            extension = convert_extension(value, self.locate)
            self.issues.extend(extension.issues)
            if extension.spec is None:
                return None
            self.lua = extension.lua
            self.issues.extend(annotation_issues(self.annotations, extension.spec, self.locate))
            self.issues.extend(rollout_issues(self.annotations, self.locate))
            http = extension.spec.type != wasm_pb2.NETWORK
            lua = extension.lua is not None
            self.issues.extend(scope_issues(self.annotations, self.locate, http=http, lua=lua))
            return extension.spec
        if value is None:
            self.error(("spec",), "required: the WasmPlugin spec")
            return None
        conversion = convert(value, wasm_pb2.WasmPlugin, path=("spec",), locate=self.locate)
        self.issues.extend(conversion.issues)
        if not conversion.ok:
            return None
        self.issues.extend(
            validate_spec(conversion.message, present=conversion.present, locate=self.locate)
        )
        self.issues.extend(annotation_issues(self.annotations, conversion.message, self.locate))
        self.issues.extend(rollout_issues(self.annotations, self.locate))
        http = conversion.message.type != wasm_pb2.NETWORK
        self.issues.extend(scope_issues(self.annotations, self.locate, http=http))
        return conversion.message

    def metadata(self, metadata: object) -> ObjectKey | None:
        base: FieldPath = ("metadata",)
        if metadata is None:
            self.error(base, "required: metadata.name names the plugin")
            return None
        if not isinstance(metadata, Mapping):
            self.error(base, f"expected a mapping, got {describe(metadata)}")
            return None
        for field, item in metadata.items():
            path = (*base, str(field))
            expected = _METADATA.get(str(field)) if isinstance(field, str) else None
            if expected is None:
                self.error(path, f"unknown field; {suggest(str(field), _METADATA)}")
            elif item is not None and not _is_type(item, expected):
                self.error(path, f"expected {_type_name(expected)}, got {describe(item)}")
        name = self.name(metadata)
        namespace = self.namespace(metadata)
        self.labels = self.string_map(metadata.get("labels"), (*base, "labels"), label_values=True)
        self.annotations = self.string_map(metadata.get("annotations"), (*base, "annotations"))
        if name is None or namespace is None:
            return None
        return ObjectKey(namespace, name, self.kind)

    def name(self, metadata: Mapping[object, object]) -> str | None:
        path: FieldPath = ("metadata", "name")
        name = metadata.get("name")
        if name is None:
            if metadata.get("generateName") is not None:
                self.error(
                    path,
                    "required (generateName is not supported: there is no API server to"
                    " generate a name)",
                )
            else:
                self.error(path, "required: the plugin's name")
            return None
        if not isinstance(name, str):
            return None  # reported by the type check
        reason = dns1123_subdomain_error(name)
        if reason:
            self.error(path, f"{name!r} is not a valid object name: {reason}")
            return None
        return name

    def namespace(self, metadata: Mapping[object, object]) -> str | None:
        namespace = metadata.get("namespace")
        if namespace is None or namespace == "":
            return self.default_namespace
        if not isinstance(namespace, str):
            return None
        reason = dns1123_label_error(namespace)
        if reason:
            self.error(
                ("metadata", "namespace"), f"{namespace!r} is not a valid namespace: {reason}"
            )
            return None
        return namespace

    def string_map(
        self, value: object, path: FieldPath, *, label_values: bool = False
    ) -> dict[str, str]:
        result: dict[str, str] = {}
        if not isinstance(value, Mapping):
            return result  # absent, or reported by the type check
        size = 0
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {describe(key)}")
                continue
            item_path = (*path, key)
            reason = qualified_name_error(key)
            if reason:
                self.error(item_path, f"invalid key: {reason}")
            if not isinstance(item, str):
                hint = " (put the value in quotes)" if isinstance(item, bool | int | float) else ""
                self.error(item_path, f"expected a string, got {describe(item)}{hint}")
                continue
            if label_values and (reason := label_value_error(item)):
                self.error(item_path, f"invalid label value: {reason}")
            size += len(key.encode()) + len(item.encode())
            result[key] = item
        if size > _MAX_ANNOTATIONS_BYTES:
            self.error(
                path, f"must be no more than {_MAX_ANNOTATIONS_BYTES} bytes in total (got {size})"
            )
        return result


def _as_int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _is_type(value: object, expected: type | tuple[type, ...]) -> bool:
    if expected is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    return isinstance(value, expected)


_TYPE_NAMES: dict[object, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    Mapping: "a mapping",
}


def _type_name(expected: type | tuple[type, ...]) -> str:
    return _TYPE_NAMES.get(expected, str(expected))


class _FileCollector:
    """Gathers the objects of one file, enforcing one definition per namespace/name."""

    def __init__(self, path: str, default_namespace: str) -> None:
        self.path = path
        self.default_namespace = default_namespace
        self.plugins: list[WasmPlugin] = []
        self.problems: list[Problem] = []
        self.invalid: list[ObjectKey] = []
        self.first_line: dict[ObjectKey, int] = {}
        self.secrets: list[PullSecret] = []
        self.invalid_secrets: list[ObjectKey] = []
        self.first_secret_line: dict[ObjectKey, int] = {}
        self.config_secrets: list[ConfigSecret] = []
        self.invalid_config_secrets: list[ObjectKey] = []

    def add(
        self, value: object, locate: Locator, issues: Sequence[Issue], prefix: FieldPath
    ) -> None:
        if value is None:
            return
        if isinstance(value, Mapping) and _is_list(value):
            items = value["items"]
            assert isinstance(items, list)
            for index, item in enumerate(items):
                self.add(item, locate, issues, (*prefix, "items", index))
            return
        depth = len(prefix)
        own_issues = [
            dataclasses.replace(issue, path=issue.path[depth:])
            for issue in issues
            if issue.path[:depth] == prefix
        ]
        where = prefixed(locate, prefix)
        line = where(())
        parsed = parse_object(
            value,
            source=self.path,
            line=line,
            locate=where,
            default_namespace=self.default_namespace,
            issues=own_issues,
            source_limits=None,
        )
        if parsed is None and isinstance(value, Mapping) and self.add_secret(value, where, line):
            return
        if parsed is None:
            api_version, kind = (
                (value.get("apiVersion"), value.get("kind"))
                if isinstance(value, Mapping)
                else (None, None)
            )
            log.debug(
                "skipped an object that is not a WasmPlugin",
                path=self.path,
                line=line,
                api_version=api_version,
                kind=kind,
            )
            return
        self.problems.extend(parsed.problems)
        key = parsed.key
        if key is not None and key in self.first_line:
            self.problems.append(
                Problem(
                    self.path,
                    line,
                    f"duplicate {key.described}: already defined on line"
                    f" {self.first_line[key]}; this definition is ignored",
                )
            )
            return
        if key is not None:
            self.first_line[key] = line
        if parsed.plugin is not None:
            self.plugins.append(parsed.plugin)
        elif key is not None:
            self.invalid.append(key)

    def add_secret(self, value: Mapping[object, object], where: Locator, line: int) -> bool:
        """Collect an image pull secret or an Opaque Secret; False when ``value`` is neither."""
        parsed = parse_secret(
            value,
            source=self.path,
            line=line,
            locate=where,
            default_namespace=self.default_namespace,
        )
        opaque = None
        if parsed is None:
            opaque = parse_config_secret(
                value,
                source=self.path,
                line=line,
                locate=where,
                default_namespace=self.default_namespace,
            )
        first = parsed if parsed is not None else opaque
        if first is None:
            return False
        if not self.first_secret(first, line):
            return True
        if opaque is not None:
            if opaque.secret is not None:
                self.config_secrets.append(opaque.secret)
            elif opaque.key is not None:
                self.invalid_config_secrets.append(opaque.key)
            return True
        assert parsed is not None
        if parsed.secret is not None:
            self.secrets.append(parsed.secret)
        elif parsed.key is not None:
            self.invalid_secrets.append(parsed.key)
        return True

    def first_secret(self, parsed: ParsedSecret | ParsedConfigSecret, line: int) -> bool:
        """Note the Secret's problems; False when it is a duplicate (reported, ignored)."""
        self.problems.extend(parsed.problems)
        key = parsed.key
        if key is not None and key in self.first_secret_line:
            self.problems.append(
                Problem(
                    self.path,
                    line,
                    f"duplicate Secret {key}: already defined on line"
                    f" {self.first_secret_line[key]}; this definition is ignored",
                )
            )
            return False
        if key is not None:
            self.first_secret_line[key] = line
        return True

    def result(self) -> ParsedFile:
        return ParsedFile(
            self.path,
            tuple(self.plugins),
            tuple(sorted(self.problems, key=lambda p: p.line)),
            tuple(self.invalid),
            syntax_ok=True,
            object_lines=tuple(self.first_line.items()),
            secrets=tuple(self.secrets),
            invalid_secrets=tuple(self.invalid_secrets),
            config_secrets=tuple(self.config_secrets),
            invalid_config_secrets=tuple(self.invalid_config_secrets),
        )


def _is_list(value: Mapping[object, object]) -> bool:
    """``kind: List`` from kubectl, or a typed list (``WasmPluginList``) from the API."""
    kind = value.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and isinstance(value.get("items"), list)
