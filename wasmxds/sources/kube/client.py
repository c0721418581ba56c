"""The one place wasmxds talks to the Kubernetes API server.

The client library is ``kubernetes_asyncio`` (maintained, aiohttp-based like
the rest of wasmxds, with request builders for custom resources). It gives us
what is hard to get right: kubeconfig loading (CA data, client certificates,
tokens, exec plugins), in-cluster config with the rotating service account
token, TLS, and URL/query building for the list, watch and status-patch calls.
(lightkube was the other candidate: it cannot ask for bookmarks, answers a 410
by re-watching from "now", which misses deletions, and brings in a second httpx.)
The library takes about a second to import, so it is loaded on :meth:`KubeClient.connect`,
and only ``--kubernetes`` pays for it.

Responses are read here, raw (``_preload_content=False``). Objects stay plain
JSON, so the same validation as files applies (:func:`wasmxds.api.parse.parse_object`);
and the watch stream is split into events here rather than by the library's
``Watch`` helper, which reads lines under aiohttp's 128 KiB line limit (one
large WasmPlugin, say a WAF rule set in ``pluginConfig``, would break the watch
for good), passes a non-JSON error body on as if it were an event, and retries
a 410 with the same resourceVersion. Every library or aiohttp error becomes a
:class:`KubeApiError` here; messages name the request, never a credential.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from wasmxds.api.objects import API_GROUP, ObjectKey
from wasmxds.sources.kube.protocol import (
    EXTENSION_PLURAL,
    MAX_EVENT_BYTES,
    PLUGIN_PLURAL,
    PLUGIN_VERSION,
    ClientConfig,
    Collection,
    KubeApiError,
    KubeConfigError,
    ListResult,
    WatchEvent,
    split_events,
    status_error,
)

if TYPE_CHECKING:
    from kubernetes_asyncio import client as k8s

__all__ = ["KubeClient"]

log = structlog.get_logger(__name__)

# Error bodies are short Status objects; read no more than this of one.
_MAX_ERROR_BODY = 64 << 10
# After a 401, credentials are loaded again, but not more often than this (seconds).
_RELOAD_AFTER = 5.0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return "connection closed by the server"
    return str(exc) or type(exc).__name__


class KubeClient:
    """A connection to one API server, shared by the source and the status writer."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._api: k8s.ApiClient | None = None
        self._core: Any = None  # the library's CoreV1Api and CustomObjectsApi, once connected
        self._custom: Any = None
        self._lock = asyncio.Lock()
        self._configuration: Any = None
        self._loaded_at = 0.0
        self.server = ""

    async def connect(self) -> None:
        """Load the configuration (once). Raises :class:`KubeConfigError` when it is unusable."""
        async with self._lock:
            if self._api is not None:
                return
            # Imported here: a second of start-up that only --kubernetes should pay.
            from kubernetes_asyncio import client as library

            self._configuration = type.__call__(library.Configuration)
            await self._load(self._configuration)
            self.server = str(self._configuration.host)
            self._api = library.ApiClient(self._configuration)
            self._api.user_agent = "wasmxds"
            # The library's stubs promise models; with _preload_content=False it hands
            # back the aiohttp response instead, so its API objects are used untyped.
            self._core = library.CoreV1Api(self._api)
            self._custom = library.CustomObjectsApi(self._api)
            log.info("kubernetes.connecting", server=self.server)

    async def _load(self, configuration: Any) -> None:
        """Read the kubeconfig or in-cluster files into ``configuration``."""
        from kubernetes_asyncio.config import incluster_config, kube_config
        from kubernetes_asyncio.config.config_exception import ConfigException

        try:
            if self.config.kubeconfig is not None:
                # persist_config=False: never write refreshed tokens back into the user's file.
                await kube_config.load_kube_config(
                    config_file=str(self.config.kubeconfig),
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                # The library re-reads the (rotating) service account token every minute.
                incluster_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration,
                    token_filename=str(self.config.token_file),
                    cert_filename=str(self.config.ca_file),
                )
        except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
            where = (
                f"kubeconfig {self.config.kubeconfig}"
                if self.config.kubeconfig is not None
                else "in-cluster config"
            )
            raise KubeConfigError(f"{where}: {exc}") from exc
        self._loaded_at = time.monotonic()

    async def _unauthorized(self) -> None:
        """After a 401: load the credentials again, at most every few seconds.

        Tokens from exec plugins (``aws eks get-token``, say) and OIDC expire,
        and a kubeconfig may be rewritten with a new one; the library does not
        renew them by itself.
        """
        if time.monotonic() - self._loaded_at < _RELOAD_AFTER:
            return
        try:
            await self._load(self._configuration)
        except KubeConfigError as exc:
            log.warning("kubernetes.credentials_reload_failed", error=str(exc))
        else:
            log.info("kubernetes.credentials_reloaded", server=self.server)

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None

    def _check_connected(self) -> None:
        if self._api is None:
            raise RuntimeError("KubeClient.connect() was not called")

    async def _request(
        self, collection: Collection, timeout: aiohttp.ClientTimeout, **params: Any
    ) -> aiohttp.ClientResponse:
        """Send a list or watch request; the raw response, whatever its status."""
        self._check_connected()
        if collection.field_selector:
            params["field_selector"] = collection.field_selector
        if collection.label_selector:
            params["label_selector"] = collection.label_selector
        common = {"_preload_content": False, "_request_timeout": timeout, **params}
        call: Any
        if collection.resource == "secrets":
            assert collection.namespace is not None
            call = self._core.list_namespaced_secret(collection.namespace, **common)
        elif collection.namespace is None:
            call = self._custom.list_cluster_custom_object(
                API_GROUP, PLUGIN_VERSION, collection.resource, **common
            )
        else:
            call = self._custom.list_namespaced_custom_object(
                API_GROUP, PLUGIN_VERSION, collection.namespace, collection.resource, **common
            )
        response: aiohttp.ClientResponse = await call
        return response

    async def list_all(self, collection: Collection, *, page_size: int = 500) -> ListResult:
        """Every object of ``collection`` and the resourceVersion to watch from.

        Pages of ``page_size`` keep each response small; the server makes the
        pages one consistent snapshot (a 410 mid-way raises :class:`Gone`).
        """
        what = f"list {collection}"
        items: list[dict[str, Any]] = []
        token = ""
        timeout = aiohttp.ClientTimeout(total=self.config.request_timeout)
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if token:
                params["_continue"] = token
            document = await self._json(what, self._request(collection, timeout, **params))
            page = document.get("items")
            metadata = document.get("metadata")
            if not isinstance(page, list) or not isinstance(metadata, dict):
                raise KubeApiError(what, 200, "the answer is not a list")
            for item in page:
                if isinstance(item, dict):
                    # Lists of built-in kinds leave kind/apiVersion out of their items.
                    item.setdefault("kind", collection.kind)
                    item.setdefault("apiVersion", collection.api_version)
                    items.append(item)
            token = str(metadata.get("continue") or "")
            if not token:
                return ListResult(items, str(metadata.get("resourceVersion") or ""))

    async def watch(
        self, collection: Collection, resource_version: str, *, timeout_seconds: int
    ) -> AsyncGenerator[list[WatchEvent], None]:
        """Watch from ``resource_version``; yields the events of each network read.

        The first (empty) batch comes as soon as the server accepted the watch.
        Ends when the server closes the stream cleanly (``timeoutSeconds``);
        raises :class:`KubeApiError` on a refused request or a broken stream.
        ERROR events are passed on: the caller decides what a 410 means to it.
        """
        what = f"watch {collection}"
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.config.request_timeout,
            sock_read=timeout_seconds + self.config.watch_read_grace,
        )
        try:
            response = await self._request(
                collection,
                timeout,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=resource_version,
                timeout_seconds=timeout_seconds,
            )
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise KubeApiError(what, 0, _describe(exc)) from exc
        try:
            if response.status != 200:
                await self._refused(response.status)
                raise status_error(what, response.status, await self._error_body(response))
            yield []
            buffer = bytearray()
            try:
                async for chunk in response.content.iter_any():
                    buffer += chunk
                    batch = split_events(what, buffer, collection)
                    if len(buffer) > MAX_EVENT_BYTES:
                        raise KubeApiError(what, 200, f"an event exceeds {MAX_EVENT_BYTES} bytes")
                    if batch:
                        yield batch
            except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
                raise KubeApiError(what, 0, _describe(exc)) from exc
            if buffer.strip():
                raise KubeApiError(what, 0, "the stream ended inside an event")
        finally:
            # A watch connection is not worth reusing; closing also ends one left unread.
            response.close()

    async def patch_status(self, key: ObjectKey, patch: Mapping[str, Any]) -> None:
        """Merge-patch the ``status`` subresource of the WasmPlugin or TrafficExtension ``key``."""
        what = f"patch status of {key.described}"
        self._check_connected()
        call = self._custom.patch_namespaced_custom_object_status(
            API_GROUP,
            PLUGIN_VERSION,
            key.namespace,
            EXTENSION_PLURAL if key.kind else PLUGIN_PLURAL,
            key.name,
            dict(patch),
            # Custom resources take no strategic merge patch; the library would pick it.
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=self.config.request_timeout),
        )
        await self._json(what, call)

    async def _json(self, what: str, call: Any) -> dict[str, Any]:
        """Await a request made with ``_preload_content=False``; its JSON object body."""
        try:
            response: aiohttp.ClientResponse = await call
            try:
                if response.status >= 300:
                    await self._refused(response.status)
                    raise status_error(what, response.status, await self._error_body(response))
                body = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError) as exc:
            raise KubeApiError(what, 0, _describe(exc)) from exc
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise KubeApiError(what, response.status, "the answer is not JSON") from exc
        if not isinstance(document, dict):
            raise KubeApiError(what, response.status, "the answer is not a JSON object")
        return document

    async def _refused(self, status: int) -> None:
        if status == 401:
            await self._unauthorized()

    @staticmethod
    async def _error_body(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.content.read(_MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return b""
