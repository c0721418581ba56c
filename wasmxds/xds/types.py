"""The resource types wasmxds serves, and the order a stream sends them in."""

from __future__ import annotations

__all__ = ["CLUSTER", "ECDS", "FULL_STATE", "LISTENER", "SEND_ORDER", "WILDCARD"]

# Spelled out rather than imported from translate/: the xDS layer serves
# whatever the translate stage built and depends on nothing of it.
ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

# Types whose SotW responses must carry every resource (xds_protocol: LDS and CDS).
FULL_STATE = frozenset({LISTENER, CLUSTER})
# Types Envoy subscribes to as a whole (an empty name list means "everything").
WILDCARD = FULL_STATE
# Make before break: clusters before the listeners that use them, listeners
# before the ECDS resources they make Envoy ask for.
SEND_ORDER = (CLUSTER, LISTENER, ECDS)
