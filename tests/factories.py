"""Build API objects for tests without going through YAML."""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import json_format

from wasmxds.api.objects import ObjectKey, Origin, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.xds.node import NodeInfo

WASM_HEADER = b"\0asm\x01\x00\x00\x00"


def make_plugin(name: str = "plugin", namespace: str = "default", **spec: Any) -> WasmPlugin:
    """A WasmPlugin from camelCase spec fields: ``make_plugin(url="http://x/a.wasm")``."""
    spec.setdefault("url", f"http://modules.example/{name}.wasm")
    message = json_format.ParseDict(spec, wasm_pb2.WasmPlugin())
    fingerprint = hashlib.sha256(
        f"{namespace}/{name}".encode() + message.SerializeToString(deterministic=True)
    ).hexdigest()
    return WasmPlugin(
        key=ObjectKey(namespace, name),
        spec=message,
        labels={},
        annotations={},
        resource_version="",
        generation=0,
        creation_timestamp="",
        origin=Origin(f"{name}.yaml", 1),
        fingerprint=fingerprint,
    )


def make_node(node_id: str = "proxy-1", namespace: str = "default", **labels: str) -> NodeInfo:
    return NodeInfo(id=node_id, namespace=namespace, labels=labels)
