"""Snapshots and requests for protocol tests, without sockets."""

from __future__ import annotations

import hashlib
from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from wasmxds.api.objects import WasmPlugin
from wasmxds.api.templates import Templates
from wasmxds.modules.types import Failed, Module, Ready
from wasmxds.translate.plugins import LocalDelivery, plugin_resources
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.translate.typeurls import TYPED_EXTENSION_CONFIG as ECDS
from wasmxds.xds.snapshot import Snapshot
from wasmxds.xds.sotw import SotwStream

ROOT = "istio-system"
DELIVERY = LocalDelivery(Path("/cache"), Path("/cache"))


def module_for(plugin: WasmPlugin) -> Module:
    digest = hashlib.sha256(plugin.spec.url.encode()).hexdigest()
    return Module(digest=digest, path=Path(f"/cache/modules/sha256/{digest}.wasm"), size=8)


def snapshot_of(
    *plugins: WasmPlugin,
    previous: Snapshot | None = None,
    pending: tuple[str, ...] = (),
    failed: dict[str, Failed] | None = None,
    templates: Templates | None = None,
    changed_at: float | None = None,
) -> Snapshot:
    failed = failed or {}
    resources = [
        plugin_resources(
            plugin,
            failed.get(plugin.resource_name) or Ready(module_for(plugin)),
            DELIVERY,
            runtime="envoy.wasm.runtime.v8",
        )
        for plugin in plugins
    ]
    return build_snapshot(
        resources,
        pending=pending,
        previous=previous or Snapshot.empty(ROOT),
        templates=templates,
        changed_at=changed_at,
    )


def request(
    *names: str,
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    type_url: str = ECDS,
) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=13, message=error))
    return req


def maybe_response(
    stream: SotwStream, snapshot: Snapshot
) -> discovery_pb2.DiscoveryResponse | None:
    """What the stream would send now for ECDS, parsed; None when nothing is due."""
    payload = stream.next_response(ECDS, snapshot)
    return None if payload is None else discovery_pb2.DiscoveryResponse.FromString(payload)


def next_response(stream: SotwStream, snapshot: Snapshot) -> discovery_pb2.DiscoveryResponse:
    """What the stream sends now for ECDS; fails the test when nothing is due."""
    response = maybe_response(stream, snapshot)
    assert response is not None, "expected a response"
    return response


def names_in(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    from envoy.config.core.v3 import extension_pb2

    out = []
    for item in response.resources:
        config = extension_pb2.TypedExtensionConfig()
        item.Unpack(config)
        out.append(config.name)
    return out


def ack(stream: SotwStream, response: discovery_pb2.DiscoveryResponse, *names: str):
    return stream.handle(request(*names, nonce=response.nonce, version=response.version_info))


def nack(
    stream: SotwStream, response: discovery_pb2.DiscoveryResponse, *names: str, last_good: str = ""
):
    return stream.handle(request(*names, nonce=response.nonce, version=last_good, error="rejected"))
