"""Who is on the other end of an xDS stream, as far as plugin targeting is concerned.

Read from the ``Node`` of a stream's first request (DESIGN "Node identity").
The translate stage targets plugins at it; the snapshot memoizes per class.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

__all__ = [
    "DEFAULT_NODE_NAMESPACE",
    "ClassKey",
    "NodeInfo",
    "cohort_point",
    "node_info_from_metadata",
    "node_info_from_proto",
    "node_metadata",
]

DEFAULT_NODE_NAMESPACE = "default"

ClassKey = tuple[str, tuple[tuple[str, str], ...]]
"""A node class: namespace and sorted labels."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A proxy's identity: its id, namespace and labels.

    ``class_key`` groups proxies that must receive identical resources;
    everything computed per node is computed once per class and shared.
    """

    id: str
    namespace: str = DEFAULT_NODE_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster: str = ""
    class_key: ClassKey = field(init=False)
    cohort: float = field(init=False, repr=False)
    """Where the proxy falls in staged rollouts: a point in [0, 100) from its id
    (:func:`cohort_point`), the same on every replica and across restarts."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_key", (self.namespace, tuple(sorted(self.labels.items()))))
        object.__setattr__(self, "cohort", cohort_point(self.id))


def cohort_point(node_id: str) -> float:
    """A stable point in [0, 100) for ``node_id``: the first 8 bytes of its sha256.

    A rollout step of p percent takes the proxies whose point is below p, so a
    proxy in one step stays in every later one, and every replica agrees.
    """
    head = hashlib.sha256(node_id.encode("utf-8", "surrogatepass")).digest()[:8]
    return int.from_bytes(head, "big") * 100.0 / (1 << 64)


def _first(metadata: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in metadata:
            return metadata[key]
    return None


def _labels(raw: Any) -> dict[str, str]:
    # Istio sends LABELS as a struct; some bootstraps carry it as a JSON string.
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def node_info_from_metadata(
    node_id: str,
    metadata: Mapping[str, Any],
    *,
    cluster: str = "",
    proven_namespace: str | None = None,
) -> NodeInfo:
    """Build a :class:`NodeInfo` from node metadata already converted to Python values.

    Namespace comes from ``NAMESPACE`` or ``namespace``, labels from ``LABELS``
    or ``labels`` (the Istio names first, so Istio bootstraps work unchanged).
    ``proven_namespace`` (from a verified certificate) takes the namespace's
    place; labels still come from metadata, as in Istio, where they come from the pod.
    """
    namespace = proven_namespace or _first(metadata, "NAMESPACE", "namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = DEFAULT_NODE_NAMESPACE
    labels = _labels(_first(metadata, "LABELS", "labels"))
    return NodeInfo(id=node_id, namespace=namespace, labels=labels, cluster=cluster)


# The metadata keys anything in wasmxds reads (node_info_from_metadata, the identity policy).
_READ_KEYS = ("NAMESPACE", "namespace", "LABELS", "labels")


def node_metadata(node: Any) -> dict[str, Any]:
    """The ``envoy.config.core.v3.Node`` metadata wasmxds reads, as Python values.

    Only the namespace and labels keys: an Istio proxy sends some thirty, and
    converting them all (``json_format``) was a visible share of a new stream's
    CPU. Values convert as ``json_format`` converts them (numbers are floats).
    """
    if not node.HasField("metadata"):
        return {}
    fields = node.metadata.fields
    return {key: _python_value(fields[key]) for key in _READ_KEYS if key in fields}


def _python_value(value: struct_pb2.Value) -> Any:
    # Nesting is bounded by protobuf's own parse depth limit (100).
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {key: _python_value(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_python_value(item) for item in value.list_value.values]
    return None


def node_info_from_proto(node: Any, *, proven_namespace: str | None = None) -> NodeInfo:
    """From an ``envoy.config.core.v3.Node``."""
    return node_info_from_metadata(
        node.id, node_metadata(node), cluster=node.cluster, proven_namespace=proven_namespace
    )
