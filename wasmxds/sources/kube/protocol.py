"""The list/watch protocol as wasmxds sees it: collections, events, errors.

Plain data and parsing, no client library (importing this is cheap): the
reflector, the source and the status writer use these types, and only
:mod:`wasmxds.sources.kube.client` talks to a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from wasmxds.api.configsecrets import LABEL_SELECTOR as CONFIG_LABEL_SELECTOR
from wasmxds.api.objects import API_GROUP, TRAFFIC_EXTENSION_KIND, ObjectKey
from wasmxds.api.secrets import PULL_SECRET_TYPE
from wasmxds.errors import Gone, KubeApiError, KubeConfigError
from wasmxds.sources.kube import SERVICE_ACCOUNT_CA, SERVICE_ACCOUNT_TOKEN

__all__ = [
    "EXTENSION_PLURAL",
    "MAX_EVENT_BYTES",
    "PLUGIN_PLURAL",
    "PLUGIN_VERSION",
    "ClientConfig",
    "Collection",
    "Gone",
    "KubeApiError",
    "KubeConfigError",
    "ListResult",
    "WatchEvent",
    "object_key",
    "split_events",
    "status_error",
    "status_event_error",
]

PLUGIN_VERSION = "v1alpha1"
PLUGIN_PLURAL = "wasmplugins"
EXTENSION_PLURAL = "trafficextensions"
# etcd refuses objects over 1.5 MiB; an event line far beyond that is not an event.
MAX_EVENT_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the API server is and how to authenticate: a kubeconfig file, or the
    pod's in-cluster config (``KUBERNETES_SERVICE_HOST``/``_PORT``, the service
    account token and CA) when ``kubeconfig`` is None."""

    kubeconfig: Path | None = None
    token_file: Path = SERVICE_ACCOUNT_TOKEN
    ca_file: Path = SERVICE_ACCOUNT_CA
    request_timeout: float = 30.0
    # Extra time past a watch's own timeoutSeconds before a silent stream counts as dead.
    watch_read_grace: float = 30.0


@dataclass(frozen=True, slots=True)
class Collection:
    """One list/watch endpoint: WasmPlugins or TrafficExtensions (of a namespace,
    or all when ``namespace`` is None), a namespace's image pull secrets, or the
    Secrets of a namespace that opted in to plugin configuration (``label_selector``)."""

    resource: Literal["wasmplugins", "trafficextensions", "secrets"]
    namespace: str | None = None
    label_selector: str = ""

    @classmethod
    def plugins(cls, namespace: str | None = None) -> Collection:
        return cls("wasmplugins", namespace)

    @classmethod
    def extensions(cls, namespace: str | None = None) -> Collection:
        return cls("trafficextensions", namespace)

    @classmethod
    def pull_secrets(cls, namespace: str) -> Collection:
        return cls("secrets", namespace)

    @classmethod
    def config_secrets(cls, namespace: str) -> Collection:
        """The namespace's Secrets labelled for plugin configuration: one list/watch per
        namespace, however many Secrets its plugins name."""
        return cls("secrets", namespace, CONFIG_LABEL_SELECTOR)

    @property
    def field_selector(self) -> str:
        # Secrets of other types, or not labelled for plugins, are none of our business:
        # the server filters them out, so wasmxds never receives (or holds) unrelated
        # credentials. Labelled ones of any type arrive, so a wrong type is reported.
        if self.label_selector:
            return ""
        return f"type={PULL_SECRET_TYPE}" if self.resource == "secrets" else ""

    @property
    def kind(self) -> str:
        kinds = {"wasmplugins": "WasmPlugin", "trafficextensions": TRAFFIC_EXTENSION_KIND}
        return kinds.get(self.resource, "Secret")

    @property
    def api_version(self) -> str:
        return "v1" if self.resource == "secrets" else f"{API_GROUP}/{PLUGIN_VERSION}"

    def __str__(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        if self.label_selector:
            return f"secrets labelled {self.label_selector} in {where}"
        return f"{self.resource} in {where}"


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[dict[str, Any]]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    object: dict[str, Any] = field(repr=False)

    @property
    def resource_version(self) -> str:
        metadata = self.object.get("metadata")
        value = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        return value if isinstance(value, str) else ""


def object_key(value: Mapping[str, Any]) -> ObjectKey | None:
    """The namespace/name (and kind, for a TrafficExtension) of an object from the API
    server (None when it has none)."""
    metadata = value.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    kind = TRAFFIC_EXTENSION_KIND if value.get("kind") == TRAFFIC_EXTENSION_KIND else ""
    return ObjectKey(namespace, name, kind)


def status_error(what: str, status: int, body: bytes) -> KubeApiError:
    """An error from an HTTP status and its body (a ``Status`` object, usually)."""
    message = f"HTTP {status}"
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("kind") == "Status":
        message = str(document.get("message") or document.get("reason") or message)
    elif body:
        message = body[:200].decode(errors="replace").strip() or message
    return (Gone if status == 410 else KubeApiError)(what, status, message)


def status_event_error(what: str, status: Mapping[str, Any]) -> KubeApiError:
    """An error from the ``Status`` object of a watch ERROR event."""
    code = status.get("code")
    message = str(status.get("message") or status.get("reason") or "watch error")
    number = code if isinstance(code, int) else 500
    return (Gone if number == 410 else KubeApiError)(what, number, message)


def split_events(what: str, buffer: bytearray, collection: Collection) -> list[WatchEvent]:
    """Take every complete line out of ``buffer`` as an event (JSON lines)."""
    events: list[WatchEvent] = []
    while (end := buffer.find(b"\n")) >= 0:
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError as exc:
            raise KubeApiError(what, 200, "an event is not JSON") from exc
        kind, value = (
            (document.get("type"), document.get("object"))
            if isinstance(document, dict)
            else (None, None)
        )
        if not isinstance(kind, str) or not isinstance(value, dict):
            raise KubeApiError(what, 200, "an event has no type or object")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            value.setdefault("kind", collection.kind)
            value.setdefault("apiVersion", collection.api_version)
        events.append(WatchEvent(kind, value))
    return events
