"""A WasmPlugin manifest rewritten as the TrafficExtension Istio 1.30 replaces it with.

``wasmxds migrate --to trafficextension`` uses it. The mapping is istio/api's
(``traffic_extension.proto``): the module's fields move under ``spec.wasm``;
selector, targetRefs, phase, priority and match stay in ``spec``. The two
differences are reported as warnings by the caller:

- the deprecated singular ``targetRef`` has no TrafficExtension field; it
  becomes the only entry of ``targetRefs`` (what Istio does with it when
  ``targetRefs`` is empty);
- ``phase: UNSPECIFIED_PHASE`` is spelt ``UNSPECIFIED``.

The result is a new object with the same ECDS resource name (``<ns>.<name>``),
so the Envoy filter references of ECDS mode stay; served beside the WasmPlugin
it came from, it supersedes it
(:func:`wasmxds.api.trafficextension.supersede`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND

__all__ = ["Rewritten", "to_traffic_extension"]

_PLACEMENT = ("selector", "targetRefs", "phase", "priority", "match")


@dataclass(frozen=True, slots=True)
class Rewritten:
    """The TrafficExtension, and what changed meaning on the way (field path → note)."""

    value: dict[str, object]
    notes: tuple[tuple[tuple[str, ...], str], ...]


def to_traffic_extension(plugin: Mapping[str, object]) -> Rewritten:
    """Rewrite a WasmPlugin that passed validation (plain data) as a TrafficExtension."""
    spec = plugin.get("spec")
    assert isinstance(spec, Mapping)
    notes: list[tuple[tuple[str, ...], str]] = []
    placement: dict[str, object] = {}
    wasm: dict[str, object] = {}
    for key, item in spec.items():
        if item is None:
            continue
        if key == "targetRef":
            if spec.get("targetRefs"):
                notes.append(
                    (("spec", "targetRef"), "dropped: targetRefs is set, Istio ignores it")
                )
            else:
                placement["targetRefs"] = [item]
                notes.append((("spec", "targetRef"), "became spec.targetRefs[0]"))
        elif key == "phase" and item == "UNSPECIFIED_PHASE":
            placement["phase"] = "UNSPECIFIED"
        elif key in _PLACEMENT:
            placement[str(key)] = item
        else:
            wasm[str(key)] = item
    result = {key: item for key, item in plugin.items() if key not in ("status", "spec")}
    result["kind"] = TRAFFIC_EXTENSION_KIND
    result["spec"] = {**placement, "wasm": wasm}
    return Rewritten(result, tuple(notes))
