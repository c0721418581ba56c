"""Listener and Cluster templates for listener mode (``--listeners DIR``).

A template is an Envoy Listener or Cluster wrapped with what wasmxds needs to
know about it::

    apiVersion: wasmxds.io/v1alpha1
    kind: ListenerTemplate
    metadata:
      name: ingress
    spec:
      direction: GATEWAY          # INBOUND (WasmPlugin mode SERVER), OUTBOUND or GATEWAY (CLIENT)
      nodes:                      # optional: which proxies get it (default: all)
        namespaces: [edge]
        matchLabels: {app: gateway}
      listener: {...}             # an envoy.config.listener.v3.Listener, as in Envoy's YAML
      anchors:                    # optional: roles of filters their type does not tell
        authz: [lua-policy]       # custom, authn, authz or stats -> filter names

``kind: ClusterTemplate`` has ``spec.nodes`` and ``spec.cluster`` (an
``envoy.config.cluster.v3.Cluster``). The Envoy part is parsed strictly with
Envoy's own schema, so a misspelt field or unknown ``@type`` is reported with
its line instead of being sent to proxies.
"""

from __future__ import annotations

import difflib
import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format, message

from wasmxds.api.convert import FieldPath, LineTable, format_path, suggest
from wasmxds.api.envoy_types import ensure_types
from wasmxds.api.json import canonical_json
from wasmxds.api.limits import DEFAULT_LIMITS, Limits
from wasmxds.api.objects import Origin, Problem
from wasmxds.api.yamlload import YamlSyntaxError, load_documents

__all__ = [
    "ANCHOR_ROLES",
    "TEMPLATE_API_VERSION",
    "ClusterTemplate",
    "Direction",
    "ListenerTemplate",
    "NodeSelector",
    "ParsedTemplates",
    "Templates",
    "parse_templates",
]

TEMPLATE_API_VERSION = "wasmxds.io/v1alpha1"
_KINDS = ("ListenerTemplate", "ClusterTemplate")
ANCHOR_ROLES = ("custom", "authn", "authz", "stats")
"""What ``spec.anchors`` may call a filter (see :mod:`wasmxds.translate.anchors`)."""


class Direction(enum.StrEnum):
    """Which way traffic flows through a listener, from the proxy's workload's view."""

    INBOUND = "INBOUND"
    """Traffic to the workload: WasmPlugin ``match.mode`` SERVER."""
    OUTBOUND = "OUTBOUND"
    """Traffic from the workload: mode CLIENT."""
    GATEWAY = "GATEWAY"
    """A gateway's listener: mode CLIENT, as Istio treats gateways."""

    @property
    def is_server(self) -> bool:
        return self is Direction.INBOUND


@dataclass(frozen=True, slots=True)
class NodeSelector:
    """Proxies a template applies to: any of ``namespaces`` (all when empty) with all ``labels``."""

    namespaces: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if self.namespaces and namespace not in self.namespaces:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True, eq=False)
class ListenerTemplate:
    name: str
    direction: Direction
    nodes: NodeSelector
    listener: listener_pb2.Listener
    origin: Origin
    fingerprint: str
    anchors: Mapping[str, str] = field(default_factory=dict)
    """Filter name → anchor role, from ``spec.anchors``."""

    @property
    def port(self) -> int:
        return int(self.listener.address.socket_address.port_value)


@dataclass(frozen=True, slots=True, eq=False)
class ClusterTemplate:
    name: str
    nodes: NodeSelector
    cluster: cluster_pb2.Cluster
    origin: Origin
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Templates:
    """Listener-mode templates in precedence order: per proxy, the first with a name wins."""

    listeners: tuple[ListenerTemplate, ...] = ()
    clusters: tuple[ClusterTemplate, ...] = ()
    version: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for fingerprint in [t.fingerprint for t in self.listeners] + [
            t.fingerprint for t in self.clusters
        ]:
            digest.update(fingerprint.encode())
        object.__setattr__(self, "version", digest.hexdigest()[:12])


@dataclass(frozen=True, slots=True)
class ParsedTemplates:
    """One file's templates; ``syntax_ok`` False means keep the file's last good content."""

    path: str
    listeners: tuple[ListenerTemplate, ...] = ()
    clusters: tuple[ClusterTemplate, ...] = ()
    problems: tuple[Problem, ...] = ()
    syntax_ok: bool = True


class _Reader:
    """Collects problems for one document, each at the line of the field it is about."""

    def __init__(self, path: str, lines: LineTable) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[Problem] = []

    def error(self, at: FieldPath, message: str) -> None:
        text = f"{format_path(at)}: {message}" if at else message
        self.problems.append(Problem(self.path, self.lines(at), text))

    def mapping(self, value: object, at: FieldPath, allowed: Sequence[str]) -> dict[str, object]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(at, "expected a mapping")
            return {}
        for key in value:
            if key not in allowed:
                self.error((*at, key), f"unknown field; {suggest(key, allowed)}")
        return value

    def nodes(self, value: object, at: FieldPath) -> NodeSelector:
        spec = self.mapping(value, at, ("namespaces", "matchLabels"))
        namespaces = spec.get("namespaces") or []
        labels = spec.get("matchLabels") or {}
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            self.error((*at, "namespaces"), "expected a list of namespace names")
            namespaces = []
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            self.error((*at, "matchLabels"), "expected a map of label names to string values")
            labels = {}
        return NodeSelector(frozenset(namespaces), dict(labels))

    def envoy(self, value: object, at: FieldPath, proto: message.Message) -> bool:
        if not isinstance(value, dict):
            self.error(at, f"expected an {proto.DESCRIPTOR.full_name} mapping")
            return False
        ensure_types(value)
        try:
            json_format.ParseDict(value, proto)
        except json_format.ParseError as exc:
            where, message = _explain_parse_error(str(exc))
            self.error((*at, *where), message)
            return False
        return True


_FAILED_IN = re.compile(r"^(?:Failed to parse \w+ field: )+")
_AT_PATH = re.compile(r'\s+at "?(?P<path>[A-Za-z_][\w.\[\]]*?)"?\.*\s*$')
_PATH_PART = re.compile(r"(\w+)|\[(\d+)\]")
_NO_FIELD = re.compile(r'has no field named "(?P<field>\w+)"')
_AVAILABLE = re.compile(
    r"\s*Available Fields\(except extensions\): \"\[(?P<names>.*)\]\"\.*\s*$", re.S
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _explain_parse_error(text: str) -> tuple[FieldPath, str]:
    """protobuf's ParseError text → (field path below the parsed object, a short message).

    protobuf says where the failure is ("at Listener.filter_chains[0]...") and,
    for an unknown field, lists every valid one; turn that into a path we can
    find a line for, and a suggestion instead of the list.
    """
    available: list[str] = []
    found = _AVAILABLE.search(text)
    if found:
        available = [_snake(n.strip(" '")) for n in found.group("names").split(",") if n.strip()]
        text = text[: found.start()]
    text = text.strip()
    chain = _FAILED_IN.match(text)
    # Without an "at" path, the "Failed to parse X field" chain still names the fields.
    path: list[str | int] = (
        re.findall(r"Failed to parse (\w+) field", chain.group(0)) if chain else []
    )
    text = _FAILED_IN.sub("", text)
    at = _AT_PATH.search(text)
    if at:
        path = []
        text = text[: at.start()]
        for name, index in _PATH_PART.findall(at.group("path"))[1:]:  # drop the type name
            path.append(int(index) if index else name)
    unknown = _NO_FIELD.search(text)
    if unknown:
        field = unknown.group("field")
        path.append(field)
        return tuple(path), f"unknown field; {suggest(field, available)}" if available else text
    return tuple(path), text


def _check_listener(reader: _Reader, at: FieldPath, listener: listener_pb2.Listener) -> None:
    if not listener.name:
        reader.error((*at, "name"), "required: listeners are identified by name")
    if not listener.HasField("address") and not listener.HasField("internal_listener"):
        reader.error((*at, "address"), "required: where the listener binds")
    if not listener.filter_chains and not listener.HasField("default_filter_chain"):
        reader.error((*at, "filter_chains"), "required: at least one filter chain")
    for index, chain in enumerate(listener.filter_chains):
        if not chain.filters:
            reader.error((*at, "filter_chains", index, "filters"), "a filter chain needs filters")


def _filter_names(listener: listener_pb2.Listener) -> set[str]:
    """Every network and HTTP filter name in the listener's chains."""
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    names: set[str] = set()
    for chain in chains:
        for network_filter in chain.filters:
            names.add(network_filter.name)
            if network_filter.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                network_filter.typed_config.Unpack(hcm)
                names.update(f.name for f in hcm.http_filters)
    return names


def _anchors(reader: _Reader, value: object, listener: listener_pb2.Listener) -> dict[str, str]:
    """``spec.anchors`` as filter name → role; every name must be a filter of the listener."""
    at: FieldPath = ("spec", "anchors")
    roles = reader.mapping(value, at, ANCHOR_ROLES)
    known = _filter_names(listener)
    marks: dict[str, str] = {}
    for role in ANCHOR_ROLES:
        names = roles.get(role)
        if names is None:
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            reader.error((*at, role), "expected a list of filter names")
            continue
        for index, name in enumerate(names):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = (
                    f'did you mean "{close[0]}"?'
                    if close
                    else "filters: " + ", ".join(sorted(known))
                )
                reader.error(
                    (*at, role, index),
                    f"{name!r} is not the name of a filter in spec.listener (anchors mark the"
                    f" template's own filters by name); {hint}",
                )
            elif marks.setdefault(name, role) != role:
                reader.error((*at, role, index), f"{name!r} is already marked {marks[name]}")
    return marks


def _parse_document(
    value: object, lines: LineTable, path: str, start: int
) -> tuple[ListenerTemplate | ClusterTemplate | None, list[Problem]]:
    reader = _Reader(path, lines)
    if not isinstance(value, dict) or value.get("apiVersion") != TEMPLATE_API_VERSION:
        if isinstance(value, dict) and value.get("kind") in _KINDS:
            reader.error(("apiVersion",), f"must be {TEMPLATE_API_VERSION}")
        elif value is not None:
            reader.error(
                (), f"expected a ListenerTemplate or ClusterTemplate ({TEMPLATE_API_VERSION})"
            )
        return None, reader.problems
    top = reader.mapping(value, (), ("apiVersion", "kind", "metadata", "spec"))
    kind = top.get("kind")
    if kind not in _KINDS:
        reader.error(("kind",), f"must be one of {', '.join(_KINDS)}")
        return None, reader.problems
    metadata = reader.mapping(top.get("metadata"), ("metadata",), ("name", "labels", "annotations"))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        reader.error(("metadata", "name"), "required")
        name = ""
    origin = Origin(path, start)
    digest = hashlib.sha256(canonical_json(value).encode()).hexdigest()
    if kind == "ListenerTemplate":
        spec = reader.mapping(
            top.get("spec"), ("spec",), ("direction", "nodes", "listener", "anchors")
        )
        raw_direction = spec.get("direction", "GATEWAY")
        try:
            direction = Direction(str(raw_direction))
        except ValueError:
            choices = ", ".join(d.value for d in Direction)
            reader.error(("spec", "direction"), f"must be one of {choices}, got {raw_direction!r}")
            direction = Direction.GATEWAY
        nodes = reader.nodes(spec.get("nodes"), ("spec", "nodes"))
        listener = listener_pb2.Listener()
        if reader.envoy(spec.get("listener"), ("spec", "listener"), listener):
            _check_listener(reader, ("spec", "listener"), listener)
        anchors = _anchors(reader, spec.get("anchors"), listener)
        if reader.problems:
            return None, reader.problems
        return ListenerTemplate(name, direction, nodes, listener, origin, digest, anchors), []
    spec = reader.mapping(top.get("spec"), ("spec",), ("nodes", "cluster"))
    nodes = reader.nodes(spec.get("nodes"), ("spec", "nodes"))
    cluster = cluster_pb2.Cluster()
    if reader.envoy(spec.get("cluster"), ("spec", "cluster"), cluster) and not cluster.name:
        reader.error(("spec", "cluster", "name"), "required: clusters are identified by name")
    if reader.problems:
        return None, reader.problems
    return ClusterTemplate(name, nodes, cluster, origin, digest), []


def parse_templates(data: bytes, path: str, limits: Limits = DEFAULT_LIMITS) -> ParsedTemplates:
    """Every template in one file, or the problems that kept them out.

    A file past ``limits`` is refused whole (``syntax_ok`` False).
    """
    if len(data) > limits.max_bytes:
        return ParsedTemplates(
            path, problems=(Problem(path, 1, limits.too_big()),), syntax_ok=False
        )
    try:
        documents = load_documents(data.decode("utf-8"), limits)
    except UnicodeDecodeError as exc:
        return ParsedTemplates(
            path,
            problems=(
                Problem(path, data.count(b"\n", 0, exc.start) + 1, f"not UTF-8 text: {exc}"),
            ),
            syntax_ok=False,
        )
    except YamlSyntaxError as exc:
        return ParsedTemplates(
            path, problems=(Problem(path, exc.line, exc.message),), syntax_ok=False
        )
    listeners: list[ListenerTemplate] = []
    clusters: list[ClusterTemplate] = []
    problems: list[Problem] = []
    for document in documents:
        problems.extend(issue.to_problem(path) for issue in document.issues)
        template, found = _parse_document(document.value, document.lines, path, document.start_line)
        problems.extend(found)
        if isinstance(template, ListenerTemplate):
            listeners.append(template)
        elif isinstance(template, ClusterTemplate):
            clusters.append(template)
    return ParsedTemplates(path, tuple(listeners), tuple(clusters), tuple(problems))
