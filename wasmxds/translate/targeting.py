"""Which proxies a WasmPlugin applies to (Istio's ShouldAttachPolicy, reference §4).

- Namespace scope: a proxy considers plugins from its own namespace and the
  root namespace only.
- Proxies labelled ``gateway.networking.k8s.io/gateway-name`` are Gateway API
  gateways: a plugin with targetRefs applies when one ref is that Gateway (in
  the proxy's namespace); a plugin without targetRefs falls back to its selector
  (Istio's ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY, on by default).
- Every other proxy ignores plugins with targetRefs and applies the selector:
  no selector means every proxy in scope; otherwise its labels must be a subset
  of the proxy's.
"""

from __future__ import annotations

from wasmxds.api.objects import WasmPlugin
from wasmxds.api.proto import selector_pb2
from wasmxds.xds.node import NodeInfo

__all__ = ["GATEWAY_NAME_LABEL", "applies_to", "in_namespace_scope", "selector_matches"]

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
_GATEWAY_API_GROUP = "gateway.networking.k8s.io"


def in_namespace_scope(plugin_namespace: str, node: NodeInfo, root_namespace: str) -> bool:
    return plugin_namespace in (node.namespace, root_namespace)


def selector_matches(plugin: WasmPlugin, node: NodeInfo) -> bool:
    if not plugin.spec.HasField("selector"):
        return True
    return all(node.labels.get(k) == v for k, v in plugin.spec.selector.match_labels.items())


def _target_refs(plugin: WasmPlugin) -> list[selector_pb2.PolicyTargetReference]:
    refs = list(plugin.spec.targetRefs)
    # The deprecated singular field only counts when the list is empty (Istio merges it so).
    if not refs and plugin.spec.HasField("targetRef"):
        refs.append(plugin.spec.targetRef)
    return refs


def _targets_gateway(plugin: WasmPlugin, node: NodeInfo, gateway_name: str) -> bool:
    if plugin.key.namespace != node.namespace:
        return False
    return any(
        ref.kind == "Gateway" and ref.group == _GATEWAY_API_GROUP and ref.name == gateway_name
        for ref in _target_refs(plugin)
    )


def applies_to(plugin: WasmPlugin, node: NodeInfo, root_namespace: str) -> bool:
    """Whether ``plugin`` runs in ``node`` (before per-listener ``match`` rules)."""
    if not in_namespace_scope(plugin.key.namespace, node, root_namespace):
        return False
    has_refs = bool(_target_refs(plugin))
    gateway_name = node.labels.get(GATEWAY_NAME_LABEL)
    if gateway_name is not None and has_refs:
        return _targets_gateway(plugin, node, gateway_name)
    if has_refs:
        return False
    return selector_matches(plugin, node)
