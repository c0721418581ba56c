"""Validated API objects as the rest of wasmxds sees them.

Everything here is immutable once built. The protobuf ``spec`` inside a
:class:`WasmPlugin` is a mutable message by nature; treat it as read-only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from wasmxds.api.proto import wasm_pb2

__all__ = [
    "API_VERSION",
    "DEFAULT_NAMESPACE",
    "KIND",
    "TRAFFIC_EXTENSION_KIND",
    "ObjectKey",
    "Origin",
    "Problem",
    "Severity",
    "WasmPlugin",
]

API_GROUP = "extensions.istio.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "WasmPlugin"
TRAFFIC_EXTENSION_KIND = "TrafficExtension"
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Namespace and name of an object; the identity sources deduplicate on.

    ``kind`` is empty for WasmPlugins (and Secrets) and ``TrafficExtension`` for
    those, so the two kinds of one namespace/name are different objects.
    """

    namespace: str
    name: str
    kind: str = ""

    @property
    def resource_name(self) -> str:
        """The ECDS resource name: ``<namespace>.<name>`` (DESIGN contract), for both
        kinds; a TrafficExtension supersedes a WasmPlugin of the same name
        (:func:`wasmxds.api.trafficextension.supersede`)."""
        return f"{self.namespace}.{self.name}"

    @property
    def described(self) -> str:
        """Kind and namespace/name: ``WasmPlugin ns/name``, ``TrafficExtension ns/name``."""
        return str(self) if self.kind else f"{KIND} {self}"

    def __str__(self) -> str:
        if self.kind:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object came from: a file and the line its document starts on.

    Objects that did not come from a file (Kubernetes) use a descriptive
    ``path`` such as ``kubernetes:ns/name`` and ``line`` 0.
    """

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, rendered as ``path:line: message``.

    ``message`` starts with the field it is about (``spec.sha256: ...``) when
    there is one, so a reader can go straight to it.
    """

    path: str
    line: int
    message: str
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        prefix = "warning: " if self.severity is Severity.WARNING else ""
        return f"{self.path}:{self.line}: {prefix}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


@dataclass(frozen=True, slots=True, eq=False)
class WasmPlugin:
    """A WasmPlugin that passed schema and semantic validation.

    ``fingerprint`` is a content hash of the whole object (metadata and spec,
    not status). It changes exactly when the object changes, which is what
    ``imagePullPolicy: Always`` keys re-pulls on (Istio uses
    ``metadata.resourceVersion`` for this; files have none).
    """

    key: ObjectKey
    spec: wasm_pb2.WasmPlugin
    labels: dict[str, str]
    annotations: dict[str, str]
    resource_version: str
    generation: int
    creation_timestamp: str
    origin: Origin
    fingerprint: str
    lua: str | None = None
    """A TrafficExtension's ``lua.inlineCode``; None for Wasm (then ``spec`` says it all).

    For a Lua extension ``spec`` carries only what placement needs (selector,
    targetRefs, phase, priority, match); its Wasm fields are empty.
    """

    @property
    def resource_name(self) -> str:
        return self.key.resource_name


@dataclass(frozen=True, slots=True)
class ParsedObject:
    """One WasmPlugin object after validation.

    ``plugin`` is None when any error was found; ``key`` is set whenever the
    object's namespace and name could be read, valid or not, so a source can
    keep serving the last good version of an object that broke.
    """

    plugin: WasmPlugin | None
    key: ObjectKey | None
    problems: tuple[Problem, ...]
