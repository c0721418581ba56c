"""The reconcile stage: desired state in, one snapshot and per-plugin reports out.

:mod:`.requests` turns a plugin into what it asks of the module stage;
:mod:`.reconciler` decides what is served (make before break, last good,
stand-ins); :mod:`.last_good` keeps the last good versions across restarts;
:mod:`.reports` turns the outcome into per-plugin reports, which
:mod:`.kubestatus` writes back to Kubernetes (``--write-status``).
"""

from wasmxds.reconcile.reconciler import (
    ModuleLookup,
    PluginStatus,
    Reconciler,
    Serving,
)
from wasmxds.reconcile.requests import module_request

__all__ = ["ModuleLookup", "PluginStatus", "Reconciler", "Serving", "module_request"]
