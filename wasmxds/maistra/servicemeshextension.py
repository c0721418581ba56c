"""Maistra's ServiceMeshExtension (``maistra.io/v1``) as an Istio WasmPlugin.

OpenShift Service Mesh deprecated ServiceMeshExtension in 2.2 and removed it
in 2.3; Red Hat's migration guide maps it onto WasmPlugin field by field. One
converter serves both ``wasmxds migrate`` (which prints the WasmPlugin) and the
directory source (which serves old manifests as WasmPlugins, with a
deprecation warning).

================================  ==========================================
ServiceMeshExtension              WasmPlugin
================================  ==========================================
``metadata``                      ``metadata``: name, namespace, labels and
                                  annotations; fields the API server sets
                                  (uid, resourceVersion, managedFields...)
                                  and kubectl's last-applied annotation are
                                  dropped; ``status`` is dropped
``spec.workloadSelector.labels``  ``spec.selector.matchLabels``
``spec.image``                    ``spec.url``: ``oci://`` + the image as
                                  written (tag or ``@sha256:`` digest kept)
``spec.imagePullPolicy``          ``spec.imagePullPolicy`` (``Never`` has no
                                  equivalent: IfNotPresent, with a warning)
``spec.imagePullSecrets[0].name`` ``spec.imagePullSecret`` (WasmPlugin takes
                                  one; the others are dropped with a warning)
``spec.phase``                    ``spec.phase``, see :data:`PHASES`
``spec.priority``                 ``spec.priority`` (same meaning: higher runs
                                  first within a phase)
``spec.config``                   ``spec.pluginConfig``
================================  ==========================================

Both API versions Maistra served are read: ``maistra.io/v1`` (Maistra 2.1 and
later, the storage version; ``config`` is an object) and
``maistra.io/v1alpha1`` (Maistra 2.0; ``config`` is a string). A string
``config`` is converted the way Maistra's own v1alpha1→v1 conversion does it:
text holding a JSON object (or, beyond Maistra, a YAML mapping) becomes that
object, with a warning; any other text is an error, because Maistra handed
such text to the module verbatim and a WasmPlugin can only hand it the JSON
of an object.

The result is then checked exactly as a WasmPlugin written by hand would be
(:func:`wasmxds.api.parse.parse_object`), so every Istio rule applies; its
problems are reported against the ServiceMeshExtension's own fields and lines
(``spec.image``, not ``spec.url``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import NamedTuple, Protocol

from wasmxds.api.convert import FieldPath, Issue, Locator, describe, format_path, suggest
from wasmxds.api.moduleurl import has_scheme, with_scheme
from wasmxds.api.objects import API_VERSION, KIND, ObjectKey, ParsedObject, Problem, Severity
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.yamlload import YamlSyntaxError, load_documents

__all__ = [
    "EXTENSION_API_VERSIONS",
    "EXTENSION_KIND",
    "PHASES",
    "Converted",
    "ObjectCheck",
    "PhaseMapping",
    "convert_extension",
    "is_extension",
    "key_of",
    "parse_extension",
]

EXTENSION_KIND = "ServiceMeshExtension"
EXTENSION_API_VERSIONS = ("maistra.io/v1", "maistra.io/v1alpha1")


class PhaseMapping(NamedTuple):
    """Where a ServiceMeshExtension phase lands: a WasmPlugin phase (None: no phase).

    ``loss`` is empty when the WasmPlugin phase means the same position in
    the filter chain; otherwise it says what changes, and becomes a warning.
    """

    phase: str | None
    loss: str = ""


_SHARED = (
    "; {phase} also takes former {other} extensions, and within a phase only priority"
    " orders plugins, whereas every {name} extension used to run before every {other} one"
)

PHASES: dict[str, PhaseMapping] = {
    # Maistra placed extensions around Istio's filters (pkg/servicemesh/extension
    # in maistra/istio): PreAuthN before jwt_authn/istio_authn, PostAuthN right
    # after istio_authn, PreAuthZ right before rbac, PostAuthZ right after it,
    # PreStats right before istio.stats and PostStats right after it. Istio's
    # phases insert *before* a group of filters: AUTHN before authentication,
    # AUTHZ before authorization (after authentication), STATS before stats
    # (after authorization), and no phase after STATS but still before the
    # stats filter (buildInboundHTTPFilters in istio/istio). So each Pre* phase
    # has an exact equivalent and each Post* phase does not.
    "PreAuthN": PhaseMapping("AUTHN"),
    "PostAuthN": PhaseMapping(
        "AUTHZ",
        "PostAuthN becomes AUTHZ (after authentication, before authorization)"
        + _SHARED.format(phase="AUTHZ", other="PreAuthZ", name="PostAuthN"),
    ),
    "PreAuthZ": PhaseMapping("AUTHZ"),
    "PostAuthZ": PhaseMapping(
        # Red Hat's migration guide converts its PostAuthZ example to STATS.
        "STATS",
        "PostAuthZ becomes STATS (after authorization, before stats), as in Red Hat's"
        " migration guide" + _SHARED.format(phase="STATS", other="PreStats", name="PostAuthZ"),
    ),
    "PreStats": PhaseMapping("STATS"),
    "PostStats": PhaseMapping(
        None,
        "PostStats has no WasmPlugin equivalent, so the WasmPlugin gets no phase; Istio runs"
        " plugins without a phase after the STATS ones but before its own stats filter,"
        " whereas PostStats extensions ran after it",
    ),
}

_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")
_SPEC_FIELDS = (
    "config",
    "image",
    "imagePullPolicy",
    "imagePullSecrets",
    "phase",
    "priority",
    "workloadSelector",
)
# WasmPlugin names people carry over by habit, and the ServiceMeshExtension name.
_WASMPLUGIN_NAMES = {
    "url": "image",
    "selector": "workloadSelector",
    "pluginConfig": "config",
    "imagePullSecret": "imagePullSecrets",
    "matchLabels": "labels",
}
_WASMPLUGIN_FIELDS = frozenset(
    field.json_name for field in wasm_pb2.WasmPlugin.DESCRIPTOR.fields_by_name.values()
)
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_OUTPUT_METADATA = ("name", "namespace", "labels", "annotations")
# kubectl's record of the *ServiceMeshExtension* it applied; carried over it
# would make `kubectl apply` of the WasmPlugin compute a wrong three-way diff.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class ObjectCheck(Protocol):
    """The WasmPlugin checks (:func:`wasmxds.api.parse.parse_object`), passed in.

    The loader in :mod:`wasmxds.api.parse` dispatches ServiceMeshExtensions
    here, so this package takes the checks as an argument instead of
    importing the loader back.
    """

    def __call__(
        self,
        value: object,
        *,
        source: str,
        line: int,
        locate: Locator,
        default_namespace: str,
    ) -> ParsedObject | None: ...


class Converted(NamedTuple):
    """What :func:`convert_extension` returns.

    ``wasmplugin`` is the WasmPlugin as plain data (apiVersion, kind,
    metadata, spec, in that order), or None when any error was found.
    """

    wasmplugin: dict[str, object] | None
    problems: tuple[Problem, ...]


def is_extension(value: Mapping[object, object]) -> bool:
    """Whether ``value`` declares itself a ServiceMeshExtension (any apiVersion)."""
    return value.get("kind") == EXTENSION_KIND


def convert_extension(
    value: object,
    *,
    check: ObjectCheck,
    path: str,
    locate: Locator,
    default_namespace: str,
    issues: Iterable[Issue] = (),
) -> Converted:
    """Convert one ServiceMeshExtension (plain data) into a WasmPlugin; pure.

    ``path`` names the source in problems, ``locate`` gives the line of a
    ServiceMeshExtension field path, ``default_namespace`` is the namespace of
    an object that sets none (the output keeps metadata as written). ``issues``
    are problems found while reading the YAML; they make the object invalid.
    """
    conversion = _convert(value, check, path, locate, default_namespace, issues)
    return Converted(conversion.output, conversion.problems)


def parse_extension(
    value: Mapping[object, object],
    *,
    check: ObjectCheck,
    source: str,
    line: int,
    locate: Locator,
    default_namespace: str,
    issues: Iterable[Issue] = (),
) -> ParsedObject:
    """A ServiceMeshExtension as the WasmPlugin wasmxds serves, with a deprecation warning.

    The plugin has the object's namespace and name and an origin at its
    document (``source``, ``line``), so it collides with a WasmPlugin of the
    same namespace/name exactly as two WasmPlugins would.
    """
    conversion = _convert(value, check, source, locate, default_namespace, issues, line=line)
    problems = list(conversion.problems)
    plugin = conversion.parsed.plugin if conversion.output is not None else None
    if plugin is not None:
        target = "-" if source == "<stdin>" else shlex.quote(source)
        problems.append(
            Problem(
                source,
                locate(("kind",)),
                f"{EXTENSION_KIND} is deprecated (removed in OpenShift Service Mesh 2.3); it is"
                f" served as WasmPlugin {plugin.key} — run 'wasmxds migrate {target}' to"
                " convert it",
                Severity.WARNING,
            )
        )
    problems.sort(key=lambda problem: problem.line)
    return ParsedObject(plugin, conversion.parsed.key, tuple(problems))


class _Conversion(NamedTuple):
    output: dict[str, object] | None
    problems: tuple[Problem, ...]
    parsed: ParsedObject


def _convert(
    value: object,
    check: ObjectCheck,
    source: str,
    locate: Locator,
    default_namespace: str,
    issues: Iterable[Issue],
    *,
    line: int | None = None,
) -> _Conversion:
    converter = _Converter(locate)
    converter.issues.extend(issues)
    full, output = converter.run(value)
    # The same checks as a WasmPlugin written by hand, reported against the
    # ServiceMeshExtension's fields and lines.
    parsed = check(
        full,
        source=source,
        line=locate(()) if line is None else line,
        locate=lambda wasm_path: locate(converter.to_extension_path(wasm_path)),
        default_namespace=default_namespace,
    )
    assert parsed is not None  # apiVersion and kind are a WasmPlugin's
    problems = [issue.to_problem(source) for issue in converter.issues]
    for problem in parsed.problems:
        message = converter.rename(problem.message)
        if not converter.already_reported(message):
            problems.append(Problem(problem.path, problem.line, message, problem.severity))
    problems.sort(key=lambda problem: problem.line)
    ok = parsed.plugin is not None and not any(problem.is_error for problem in problems)
    return _Conversion(output if ok else None, tuple(problems), parsed)


class _Converter:
    """The checks and field mapping of one ServiceMeshExtension."""

    def __init__(self, locate: Locator) -> None:
        self.locate = locate
        self.issues: list[Issue] = []
        # (WasmPlugin path prefix, ServiceMeshExtension path prefix), longest first.
        self.renames: list[tuple[FieldPath, FieldPath]] = [
            (("spec", "selector", "matchLabels"), ("spec", "workloadSelector", "labels")),
            (("spec", "selector"), ("spec", "workloadSelector")),
            (("spec", "url"), ("spec", "image")),
            (("spec", "pluginConfig"), ("spec", "config")),
        ]
        # Spec fields with an error of their own: the WasmPlugin checks would
        # only repeat it in other words ("spec.url: required" for no image).
        self.failed: set[str] = set()

    def error(self, path: FieldPath, message: str) -> None:
        self.issues.append(Issue(path, self.locate(path), message))
        if len(path) > 1 and path[0] == "spec":
            self.failed.add(str(path[1]))

    def warn(self, path: FieldPath, message: str) -> None:
        self.issues.append(Issue(path, self.locate(path), message, Severity.WARNING))

    # Paths and messages of the WasmPlugin checks ------------------------------------

    def to_extension_path(self, path: FieldPath) -> FieldPath:
        for wasm, extension in self.renames:
            if path[: len(wasm)] == wasm:
                return extension + path[len(wasm) :]
        return path

    def rename(self, message: str) -> str:
        """``spec.url: ...`` from a WasmPlugin check as ``spec.image: ...``."""
        for wasm, extension in self.renames:
            old = format_path(wasm)
            if message.startswith(old) and message[len(old) : len(old) + 1] in (":", ".", "["):
                return format_path(extension) + message[len(old) :]
        return message

    def already_reported(self, message: str) -> bool:
        if "*" in self.failed:
            return message.startswith("spec")
        for field in self.failed:
            prefix = format_path(("spec", field))
            if message.startswith(prefix) and message[len(prefix) : len(prefix) + 1] in ":.[":
                return True
        return False

    # The object ---------------------------------------------------------------------

    def run(self, value: object) -> tuple[dict[str, object], dict[str, object]]:
        """The WasmPlugin to check (metadata as written) and the one to output."""
        spec: dict[str, object] = {}
        metadata: object = None
        if not isinstance(value, Mapping):
            self.error((), f"expected a mapping, got {describe(value)}")
        else:
            for key in value:
                if key not in _TOP_LEVEL:
                    path: FieldPath = (key,) if isinstance(key, str) else ()
                    self.error(path, f"unknown field; {suggest(str(key), _TOP_LEVEL)}")
            self.identity(value)
            metadata = value.get("metadata")
            spec = self.spec(value.get("spec"))
        full: dict[str, object] = {"apiVersion": API_VERSION, "kind": KIND}
        if metadata is not None:
            full["metadata"] = metadata
        full["spec"] = spec
        output: dict[str, object] = {"apiVersion": API_VERSION, "kind": KIND}
        output["metadata"] = _output_metadata(metadata)
        output["spec"] = spec
        return full, output

    def identity(self, value: Mapping[object, object]) -> None:
        api_version, kind = value.get("apiVersion"), value.get("kind")
        if kind != EXTENSION_KIND:
            self.error(("kind",), f"expected {EXTENSION_KIND}, got {describe(kind)}")
        if api_version not in EXTENSION_API_VERSIONS:
            supported = " and ".join(EXTENSION_API_VERSIONS)
            self.error(
                ("apiVersion",),
                f"unsupported apiVersion {describe(api_version)} for kind {EXTENSION_KIND};"
                f" the supported ones are {supported}",
            )

    def spec(self, value: object) -> dict[str, object]:
        base: FieldPath = ("spec",)
        if value is None or not isinstance(value, Mapping):
            self.error(
                base,
                f"required: the {EXTENSION_KIND} spec"
                if value is None
                else f"expected a mapping, got {describe(value)}",
            )
            self.failed.add("*")  # the WasmPlugin checks would only list its missing fields
            return {}
        for key in value:
            if not isinstance(key, str):
                self.error(base, f"field names must be strings, got {describe(key)}")
            elif key not in _SPEC_FIELDS:
                self.error((*base, key), f"unknown field; {_unknown_hint(key, _SPEC_FIELDS)}")
        spec: dict[str, object] = {}
        selector = self.selector(value.get("workloadSelector"))
        if selector is not None:
            spec["selector"] = selector
        url = self.url(value)
        if url is not None:
            spec["url"] = url
        pull_policy = self.pull_policy(value.get("imagePullPolicy"))
        if pull_policy is not None:
            spec["imagePullPolicy"] = pull_policy
        pull_secret = self.pull_secret(value.get("imagePullSecrets"))
        if pull_secret is not None:
            spec["imagePullSecret"] = pull_secret
        phase = self.phase(value)
        if phase is not None:
            spec["phase"] = phase
        if value.get("priority") is None:
            self.warn(
                (*base, "priority"),
                "not set: the ServiceMeshExtension took the priority in its"
                " image's manifest.yaml, which is not read here; a WasmPlugin without one"
                " runs after every plugin that sets one in its phase",
            )
        else:
            spec["priority"] = value["priority"]
        config = self.config(value.get("config"))
        if config is not None:
            spec["pluginConfig"] = config
        return spec

    def selector(self, value: object) -> object:
        path: FieldPath = ("spec", "workloadSelector")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error(path, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if key != "labels":
                self.error(
                    (*path, str(key)), f"unknown field; {_unknown_hint(str(key), ('labels',))}"
                )
        labels = value.get("labels")
        if labels is None or labels == {}:
            return None  # every workload in the namespace, as with no selector
        return {"matchLabels": labels}

    def url(self, spec: Mapping[object, object]) -> str | None:
        path: FieldPath = ("spec", "image")
        image = spec.get("image")
        if image is None or image == "":
            self.error(path, "required: the container image that holds the extension")
            return None
        if not isinstance(image, str):
            self.error(path, f"expected a string, got {describe(image)}")
            return None
        if has_scheme(image):
            self.error(
                path,
                f"{image!r} is not a container image reference (it has a scheme);"
                " ServiceMeshExtension images are written without oci://",
            )
            return None
        if not _has_registry_host(image):
            self.warn(
                path,
                f"{image!r} names no registry: Maistra resolved short names through the"
                " node's registry search list, Istio and wasmxds read it as Docker Hub"
                f" (docker.io/{'' if '/' in _repository(image) else 'library/'}{image});"
                " write the registry host if that is not where the image is",
            )
        return with_scheme(image)

    def pull_policy(self, value: object) -> str | None:
        path: FieldPath = ("spec", "imagePullPolicy")
        if value is None or value == "":
            return None
        if value == "Never":
            self.warn(
                path,
                "Never has no WasmPlugin equivalent; it becomes IfNotPresent (pulled when"
                " not cached yet)",
            )
            return "IfNotPresent"
        if value in _PULL_POLICIES:
            assert isinstance(value, str)
            return value
        valid = ", ".join(_PULL_POLICIES)
        if isinstance(value, str):
            folded = {policy.casefold(): policy for policy in _PULL_POLICIES}
            hint = (
                f'; did you mean "{folded[value.casefold()]}"? (values are case-sensitive)'
                if value.casefold() in folded
                else f"; valid values: {valid}"
            )
            self.error(path, f"unknown value {describe(value)}{hint}")
        else:
            self.error(path, f"expected one of {valid} (as a string), got {describe(value)}")
        return None

    def pull_secret(self, value: object) -> str | None:
        path: FieldPath = ("spec", "imagePullSecrets")
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(path, f"expected a list of {{name: ...}}, got {describe(value)}")
            return None
        names: list[str] = []
        for index, item in enumerate(value):
            item_path = (*path, index)
            if not isinstance(item, Mapping):
                self.error(item_path, f"expected a mapping {{name: ...}}, got {describe(item)}")
                continue
            for key in item:
                if key != "name":
                    self.error(
                        (*item_path, str(key)),
                        f"unknown field; {_unknown_hint(str(key), ('name',))}",
                    )
            name = item.get("name")
            if not isinstance(name, str) or not name:
                self.error(
                    (*item_path, "name"),
                    "required: the name of a Secret"
                    if name is None or name == ""
                    else f"expected a string, got {describe(name)}",
                )
                continue
            names.append(name)
        if not names:
            return None
        if len(names) > 1:
            dropped = ", ".join(json.dumps(name) for name in names[1:])
            self.warn(
                (*path, 1),
                f"a WasmPlugin takes one imagePullSecret; {json.dumps(names[0])} is kept and"
                f" {dropped} dropped (merge their registry credentials into one Secret)",
            )
        index = next(i for i, item in enumerate(value) if _secret_name(item) == names[0])
        self.renames.insert(0, (("spec", "imagePullSecret"), (*path, index, "name")))
        return names[0]

    def phase(self, spec: Mapping[object, object]) -> str | None:
        path: FieldPath = ("spec", "phase")
        value = spec.get("phase")
        if value is None:
            self.warn(
                path,
                "not set: the ServiceMeshExtension took the phase in its"
                " image's manifest.yaml, which is not read here; the WasmPlugin gets no phase"
                " (after STATS plugins); set the phase the manifest names",
            )
            return None
        mapping = PHASES.get(value) if isinstance(value, str) else None
        if mapping is None:
            self.error(path, _phase_error(value))
            return None
        if mapping.loss:
            self.warn(path, mapping.loss)
        return mapping.phase

    def config(self, value: object) -> dict[object, object] | None:
        path: FieldPath = ("spec", "config")
        if value is None:
            return None
        if isinstance(value, Mapping):
            return dict(value) if value else None
        if not isinstance(value, str):
            self.error(
                path,
                f"expected a mapping (or a string holding a JSON object), got {describe(value)}",
            )
            return None
        if not value.strip():
            return None  # Maistra's conversion: an empty string is no config
        parsed, form = _mapping_in(value)
        if parsed is None:
            self.error(
                path,
                "a string that holds no JSON object or YAML mapping; Maistra handed it to the"
                " module verbatim, but a WasmPlugin's pluginConfig is an object (the module"
                " receives its JSON), so this extension cannot be converted as is: write"
                " config as a mapping the module can read as JSON",
            )
            return None
        self.warn(
            path,
            f"a string holding a {form}; it becomes that object, so the module now receives"
            " it as compact JSON with sorted keys (as Istio sends pluginConfig)",
        )
        return parsed


def _unknown_hint(key: str, valid: Iterable[str]) -> str:
    alias = _WASMPLUGIN_NAMES.get(key)
    if alias is not None and alias in valid:
        return f'did you mean "{alias}"? ({key} is the WasmPlugin name)'
    if key in _WASMPLUGIN_FIELDS and "image" in valid:
        return (
            f"{key} is a WasmPlugin field that ServiceMeshExtension does not have; add it to"
            " the WasmPlugin that `wasmxds migrate` writes"
        )
    return suggest(key, valid)


def _phase_error(value: object) -> str:
    valid = ", ".join(PHASES)
    if not isinstance(value, str):
        return f"expected one of {valid} (as a string), got {describe(value)}"
    folded = {phase.casefold(): phase for phase in PHASES}
    if value.casefold() in folded:
        return (
            f'unknown value {describe(value)}; did you mean "{folded[value.casefold()]}"?'
            " (values are case-sensitive)"
        )
    if value in wasm_pb2.PluginPhase.DESCRIPTOR.values_by_name:
        return f"{describe(value)} is a WasmPlugin phase; ServiceMeshExtension phases are {valid}"
    return f"unknown value {describe(value)}; valid values: {valid}"


def _secret_name(item: object) -> object:
    return item.get("name") if isinstance(item, Mapping) else None


def _mapping_in(text: str) -> tuple[dict[object, object] | None, str]:
    """The object a string config holds, and what it was written as."""
    try:
        decoded = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(decoded, dict):
            return decoded, "JSON object"
        return None, ""
    try:
        documents = load_documents(text)
    except YamlSyntaxError:
        return None, ""
    if len(documents) != 1 or documents[0].issues:
        return None, ""
    value = documents[0].value
    if isinstance(value, dict) and value:
        return value, "YAML mapping"
    return None, ""


def _repository(image: str) -> str:
    """The image reference without its tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        last[-1] = last[-1].split(":", 1)[0]
    return "/".join(last)


def _has_registry_host(image: str) -> bool:
    """Docker's rule: a first path component with a dot or a port, or localhost, is a host."""
    first, slash, _ = image.partition("/")
    if not slash:
        return False
    return "." in first or ":" in first or first == "localhost"


def _output_metadata(metadata: object) -> dict[str, object]:
    """The metadata a new WasmPlugin takes over: name, namespace, labels and annotations."""
    if not isinstance(metadata, Mapping):
        return {}
    output: dict[str, object] = {}
    for key in _OUTPUT_METADATA:
        item = metadata.get(key)
        if key == "annotations" and isinstance(item, Mapping):
            item = {k: v for k, v in item.items() if k != _LAST_APPLIED}
        if item is None or (key in ("labels", "annotations") and item == {}):
            continue
        output[key] = item
    return output


def key_of(wasmplugin: Mapping[str, object], default_namespace: str) -> ObjectKey:
    """The namespace/name of a converted WasmPlugin (namespace defaulted)."""
    metadata = wasmplugin["metadata"]
    assert isinstance(metadata, Mapping)
    return ObjectKey(str(metadata.get("namespace") or default_namespace), str(metadata["name"]))
