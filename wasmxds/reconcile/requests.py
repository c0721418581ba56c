"""What a WasmPlugin asks of the module stage: its URL, checksum, pull policy and secret.

Istio's rules: a URL without a scheme is an OCI reference, and an unspecified
pull policy means Always only for an OCI reference tagged ``:latest``.
"""

from __future__ import annotations

from wasmxds.api.moduleurl import with_scheme
from wasmxds.api.objects import ObjectKey, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.modules.types import ModuleRequest, PullPolicy

__all__ = ["module_request"]


def _pull_policy(spec: wasm_pb2.WasmPlugin, url: str) -> PullPolicy:
    if spec.image_pull_policy == wasm_pb2.Always:
        return PullPolicy.ALWAYS
    if spec.image_pull_policy == wasm_pb2.IfNotPresent:
        return PullPolicy.IF_NOT_PRESENT
    # Istio: unspecified means Always only for an OCI reference tagged :latest.
    if url.startswith("oci://") and url.endswith(":latest"):
        return PullPolicy.ALWAYS
    return PullPolicy.IF_NOT_PRESENT


def module_request(plugin: WasmPlugin) -> ModuleRequest:
    """What a plugin asks of the module stage.

    The pull secret travels by reference only, in the plugin's namespace (Istio
    forces it there), and only for OCI (http(s) fetches send no credentials).
    """
    url = with_scheme(plugin.spec.url)
    secret = plugin.spec.image_pull_secret
    return ModuleRequest(
        url=url,
        sha256=plugin.spec.sha256,
        pull_policy=_pull_policy(plugin.spec, url),
        generation=plugin.fingerprint,
        pull_secret=(
            ObjectKey(plugin.key.namespace, secret)
            if secret and url.lower().startswith("oci://")
            else None
        ),
    )
