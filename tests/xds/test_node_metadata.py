"""Node metadata is read key by key, with the values json_format would give."""

from __future__ import annotations

import math
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2

from wasmxds.xds.node import node_info_from_proto, node_metadata

_METADATA: dict[str, Any] = {
    "NAMESPACE": "team-a",
    "LABELS": {"app": "web", "version": 2, "canary": True, "none": None, "list": [1, "x"]},
    "namespace": "ignored-when-NAMESPACE-is-set",
    "labels": {"nested": {"deep": [1.5, {"k": "v"}]}},
    "ISTIO_VERSION": "1.30.0",
    "PLATFORM_METADATA": {"gcp_project": "p"},
}


def _node(metadata: dict[str, Any]) -> base_pb2.Node:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return base_pb2.Node(id="envoy-1", metadata=struct)


def test_read_keys_convert_as_json_format_does():
    """Strings, numbers (floats), booleans, nulls, lists and structs: json_format's values."""
    node = _node(_METADATA)
    everything = json_format.MessageToDict(node.metadata)
    read = node_metadata(node)
    assert set(read) == {"NAMESPACE", "LABELS", "namespace", "labels"}
    assert read == {key: everything[key] for key in read}
    assert node_metadata(base_pb2.Node(id="bare")) == {}


def test_labels_keep_the_namespace_and_label_text_they_had():
    """The node's class (namespace, labels as text) is unchanged by the direct reader."""
    info = node_info_from_proto(_node(_METADATA))
    assert info.namespace == "team-a"
    assert info.labels["app"] == "web"
    assert info.labels["version"] == "2.0"  # json_format gives 2.0; labels keep that text
    assert info.labels["canary"] == "true"


def test_values_json_format_refuses_elsewhere_do_not_fail_the_stream():
    """Infinity in a key wasmxds does not read no longer fails reading the node."""
    struct = struct_pb2.Struct()
    struct.update({"NAMESPACE": "team-a"})
    struct.fields["OTHER"].number_value = math.inf
    info = node_info_from_proto(base_pb2.Node(id="envoy-1", metadata=struct))
    assert info.namespace == "team-a"
