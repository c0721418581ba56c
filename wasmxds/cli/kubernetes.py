"""Checks of ``wasmxds serve``'s Kubernetes flags (declared in :mod:`wasmxds.settings`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wasmxds.api.validate import dns1123_label_error
from wasmxds.errors import SettingsError
from wasmxds.sources.kube import SERVICE_ACCOUNT_TOKEN

__all__ = ["kubernetes_settings"]

_IN_CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def kubernetes_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """The Kubernetes flags checked together (each was parsed by its declaration)."""
    if not given["kubernetes"]:
        for flag, used in (
            ("--kubeconfig", given["kubeconfig"] is not None),
            ("--namespace", bool(given["namespaces"])),
            ("--write-status", given["write_status"]),
        ):
            if used:
                raise SettingsError(f"{flag} needs --kubernetes")
        if not given["config_dirs"]:
            raise SettingsError(
                "nothing to serve: give --config-dir DIR (repeatable), --kubernetes, or both"
            )
        return {}
    kubeconfig: Path | None = given["kubeconfig"]
    if kubeconfig is not None and not kubeconfig.is_file():
        raise SettingsError(f"--kubeconfig {kubeconfig}: no such file")
    if kubeconfig is None:
        missing = [name for name in _IN_CLUSTER_ENV if not os.environ.get(name)]
        if missing or not SERVICE_ACCOUNT_TOKEN.is_file():
            what = ", ".join(missing) if missing else f"the token {SERVICE_ACCOUNT_TOKEN}"
            raise SettingsError(
                f"--kubernetes without --kubeconfig needs in-cluster config (missing: {what});"
                " run in a pod with a service account, or give --kubeconfig FILE"
            )
    for namespace in given["namespaces"]:
        if reason := dns1123_label_error(namespace):
            raise SettingsError(f"--namespace {namespace!r}: not a valid namespace: {reason}")
    return {"kubeconfig": kubeconfig.absolute() if kubeconfig is not None else None}
