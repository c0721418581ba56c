"""Which proxies a plugin applies to: namespace scope, selector, Gateway API targetRefs."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from tests.factories import make_node, make_plugin
from wasmxds.translate.targeting import GATEWAY_NAME_LABEL, applies_to
from wasmxds.xds.node import node_info_from_metadata, node_info_from_proto

ROOT = "istio-system"
GW = "gateway.networking.k8s.io"


@pytest.mark.parametrize(
    ("plugin_ns", "spec", "node_ns", "labels", "expected"),
    [
        pytest.param("default", {}, "default", {}, True, id="same-namespace-no-selector"),
        pytest.param("other", {}, "default", {}, False, id="other-namespace-out-of-scope"),
        pytest.param(ROOT, {}, "anything", {}, True, id="root-namespace-applies-everywhere"),
        pytest.param(
            "default",
            {"selector": {"matchLabels": {"app": "web"}}},
            "default",
            {"app": "web", "v": "1"},
            True,
            id="selector-subset-matches",
        ),
        pytest.param(
            "default",
            {"selector": {"matchLabels": {"app": "web"}}},
            "default",
            {"app": "api"},
            False,
            id="selector-value-differs",
        ),
        pytest.param(
            "default",
            {"selector": {"matchLabels": {"app": "web", "v": "2"}}},
            "default",
            {"app": "web"},
            False,
            id="selector-label-missing",
        ),
        pytest.param(
            ROOT,
            {"selector": {"matchLabels": {"istio": "ingressgateway"}}},
            "edge",
            {"istio": "ingressgateway"},
            True,
            id="root-selector-matches-any-namespace",
        ),
        pytest.param(
            "default",
            {"targetRefs": [{"kind": "Gateway", "group": GW, "name": "gw"}]},
            "default",
            {},
            False,
            id="targetrefs-ignored-for-non-gateway",
        ),
        pytest.param(
            "default",
            {"targetRefs": [{"kind": "Gateway", "group": GW, "name": "gw"}]},
            "default",
            {GATEWAY_NAME_LABEL: "gw"},
            True,
            id="targetrefs-gateway-matches",
        ),
        pytest.param(
            "default",
            {"targetRef": {"kind": "Gateway", "group": GW, "name": "gw"}},
            "default",
            {GATEWAY_NAME_LABEL: "gw"},
            True,
            id="deprecated-targetref-counts",
        ),
        pytest.param(
            "default",
            {"targetRefs": [{"kind": "Gateway", "group": GW, "name": "other"}]},
            "default",
            {GATEWAY_NAME_LABEL: "gw"},
            False,
            id="targetrefs-other-gateway",
        ),
        pytest.param(
            ROOT,
            {"targetRefs": [{"kind": "Gateway", "group": GW, "name": "gw"}]},
            "default",
            {GATEWAY_NAME_LABEL: "gw"},
            False,
            id="targetrefs-need-same-namespace",
        ),
        pytest.param(
            "default",
            {"selector": {"matchLabels": {"x": "y"}}},
            "default",
            {GATEWAY_NAME_LABEL: "gw", "x": "y"},
            True,
            id="gateway-falls-back-to-selector",
        ),
    ],
)
def test_applies_to(plugin_ns, spec, node_ns, labels, expected):
    """Istio's attachment rules, one row per rule."""
    plugin = make_plugin("p", plugin_ns, **spec)
    assert applies_to(plugin, make_node(namespace=node_ns, **labels), ROOT) is expected


def test_node_identity_prefers_istio_keys():
    """NAMESPACE/LABELS (Istio's keys) win over namespace/labels."""
    node = node_info_from_metadata(
        "n", {"NAMESPACE": "a", "namespace": "b", "LABELS": {"x": "1"}, "labels": {"y": "2"}}
    )
    assert node.namespace == "a"
    assert dict(node.labels) == {"x": "1"}


def test_node_identity_defaults_and_json_labels():
    """Namespace defaults to 'default'; labels may arrive as a JSON string."""
    node = node_info_from_metadata("n", {"labels": '{"app": "web"}'})
    assert node.namespace == "default"
    assert dict(node.labels) == {"app": "web"}


def test_node_identity_from_envoy_node():
    """An Envoy Node message's metadata struct is read the same way."""
    metadata = struct_pb2.Struct()
    metadata.update({"namespace": "edge", "labels": {"app": "gw"}})
    node = node_info_from_proto(base_pb2.Node(id="envoy-1", cluster="c", metadata=metadata))
    assert (node.id, node.namespace, dict(node.labels), node.cluster) == (
        "envoy-1",
        "edge",
        {"app": "gw"},
        "c",
    )


def test_class_key_ignores_label_order():
    """Nodes with the same namespace and labels share one class."""
    a = node_info_from_metadata("a", {"labels": {"x": "1", "y": "2"}})
    b = node_info_from_metadata("b", {"labels": {"y": "2", "x": "1"}})
    assert a.class_key == b.class_key
