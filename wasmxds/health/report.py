"""One proxy's flush reduced to what health needs, and which plugin a failure stat names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["FAILURE_SUFFIXES", "NodeReport", "plugin_of"]

FAILURE_SUFFIXES = (".vm_reload_backoff", ".vm_reload_failure", ".vm_reload")
"""Envoy's per-plugin Wasm failure counters, ``wasm.<plugin>.<suffix>`` (FAIL_RELOAD)."""
_WASM = "wasm."


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One flush of one proxy (deltas since its previous flush)."""

    failures: Mapping[str, float] = field(default_factory=dict)
    """Wasm failure stat (``wasm.<plugin>.vm_reload_backoff``...) → how much it rose."""
    requests: float = 0.0
    """Downstream requests completed, summed over the listeners' HTTP connection managers."""
    errors: float = 0.0
    """Of those, answered with a 5xx."""


def plugin_of(stat: str) -> str | None:
    """The plugin (``PluginConfig.name``) a Wasm failure stat belongs to; None if not one."""
    if stat.startswith(_WASM):
        for suffix in FAILURE_SUFFIXES:
            if stat.endswith(suffix) and len(stat) > len(_WASM) + len(suffix):
                return stat[len(_WASM) : -len(suffix)]
    return None
