"""What a WasmPlugin asks of the module stage: its URL, checksum, pull policy, secret and
who must have signed the module.

Istio's rules: a URL without a scheme is an OCI reference, and an unspecified
pull policy means Always only for an OCI reference tagged ``:latest``.

Signatures (beyond Istio, which reserves ``verificationKey`` but ignores it):
the server's ``--verification-key`` keys and the plugin's own
``verificationKey`` are two separate requirements, both to be met, so whoever
writes a plugin can add a condition but never lift the operator's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from wasmxds.api.keys import VerificationKey, parse_verification_key
from wasmxds.api.moduleurl import with_scheme
from wasmxds.api.objects import ObjectKey, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.pullsecretref import pull_secret_ref
from wasmxds.errors import KeyFormatError
from wasmxds.modules.types import ModuleRequest, PullPolicy, TrustedKeys

__all__ = ["LUA_REQUEST", "LUA_SOURCE", "SERVER_KEYS_SOURCE", "module_request"]

SERVER_KEYS_SOURCE = "--verification-key"
_PLUGIN_KEY_SOURCE = "spec.verificationKey"

LUA_SOURCE = "inline Lua code"
"""What debug pages and status show as a Lua TrafficExtension's module."""
LUA_REQUEST = ModuleRequest(url="lua:inline")
"""A Lua TrafficExtension asks the module stage for nothing; this stands for it in reports."""


def _pull_policy(spec: wasm_pb2.WasmPlugin, url: str) -> PullPolicy:
    if spec.image_pull_policy == wasm_pb2.Always:
        return PullPolicy.ALWAYS
    if spec.image_pull_policy == wasm_pb2.IfNotPresent:
        return PullPolicy.IF_NOT_PRESENT
    # Istio: unspecified means Always only for an OCI reference tagged :latest.
    if url.startswith("oci://") and url.endswith(":latest"):
        return PullPolicy.ALWAYS
    return PullPolicy.IF_NOT_PRESENT


@functools.lru_cache(maxsize=256)
def _plugin_key(text: str) -> VerificationKey:
    # Validation refused a bad key already; parsing again every reconcile is waste.
    return parse_verification_key(text, source=_PLUGIN_KEY_SOURCE)


def module_request(
    plugin: WasmPlugin, server_keys: Sequence[VerificationKey] = ()
) -> ModuleRequest:
    """What a plugin asks of the module stage.

    The pull secret travels by reference only, in the plugin's namespace (Istio
    forces it there), and only for OCI (http(s) fetches send no credentials).
    ``server_keys`` are the ``--verification-key`` keys: with any, every module
    must be signed by one of them (and by the plugin's own key, if it names one).
    """
    url = with_scheme(plugin.spec.url)
    # Every spelling istiod accepts (`ns/name`, `kubernetes://...`) means `name` here.
    secret = pull_secret_ref(plugin.spec.image_pull_secret).name
    verify: list[TrustedKeys] = []
    if server_keys:
        verify.append(TrustedKeys(tuple(server_keys), SERVER_KEYS_SOURCE))
    if plugin.spec.verification_key:
        source = f"{_PLUGIN_KEY_SOURCE} of {plugin.key}"
        try:
            keys: tuple[VerificationKey, ...] = (_plugin_key(plugin.spec.verification_key),)
        except KeyFormatError as exc:
            # Validation refuses such a plugin; should one get here, it gets nothing
            # (no keys: nothing can satisfy the requirement), never an unverified module.
            keys, source = (), f"{source}, which is unusable: {exc}"
        verify.append(TrustedKeys(keys, source))
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
        verify=tuple(verify),
    )
