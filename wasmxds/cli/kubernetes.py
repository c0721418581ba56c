"""Kubernetes flags of ``wasmxds serve`` (kept here to keep serve.py about serving)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from wasmxds.api.validate import dns1123_label_error
from wasmxds.errors import SettingsError
from wasmxds.sources.kube import SERVICE_ACCOUNT_TOKEN

__all__ = ["add_kubernetes_arguments", "kubernetes_settings"]

_IN_CLUSTER_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def add_kubernetes_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Kubernetes",
        "Read WasmPlugins (extensions.istio.io/v1alpha1) and the image pull secrets they"
        " name from a Kubernetes API server, alone or together with --config-dir.",
    )
    group.add_argument(
        "--kubernetes",
        action="store_true",
        help="list and watch WasmPlugins in a cluster (in-cluster config unless --kubeconfig)",
    )
    group.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --kubernetes: use this kubeconfig (its current context) instead of the"
        " pod's service account",
    )
    group.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="with --kubernetes: watch only this namespace (repeatable; default: all)",
    )
    group.add_argument(
        "--write-status",
        action="store_true",
        help="with --kubernetes: write a Ready condition (module fetched or why not, proxy"
        " count) into each WasmPlugin's status; needs RBAC to patch wasmplugins/status",
    )


def kubernetes_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~wasmxds.settings.ServeSettings` fields these flags set."""
    if not args.kubernetes:
        for flag, given in (
            ("--kubeconfig", args.kubeconfig is not None),
            ("--namespace", bool(args.namespace)),
            ("--write-status", args.write_status),
        ):
            if given:
                raise SettingsError(f"{flag} needs --kubernetes")
        if not args.config_dir:
            raise SettingsError(
                "nothing to serve: give --config-dir DIR (repeatable), --kubernetes, or both"
            )
        return {}
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        raise SettingsError(f"--kubeconfig {args.kubeconfig}: no such file")
    if args.kubeconfig is None:
        missing = [name for name in _IN_CLUSTER_ENV if not os.environ.get(name)]
        if missing or not SERVICE_ACCOUNT_TOKEN.is_file():
            what = ", ".join(missing) if missing else f"the token {SERVICE_ACCOUNT_TOKEN}"
            raise SettingsError(
                f"--kubernetes without --kubeconfig needs in-cluster config (missing: {what});"
                " run in a pod with a service account, or give --kubeconfig FILE"
            )
    for namespace in args.namespace:
        if reason := dns1123_label_error(namespace):
            raise SettingsError(f"--namespace {namespace!r}: not a valid namespace: {reason}")
    return {
        "kubernetes": True,
        "kubeconfig": args.kubeconfig.absolute() if args.kubeconfig is not None else None,
        "namespaces": tuple(dict.fromkeys(args.namespace)),
        "write_status": args.write_status,
    }
