"""A fake Kubernetes API server for WasmPlugins, TrafficExtensions and Secrets: real
HTTP(S) on loopback.

No API server can run here, so this one speaks the parts of the real protocol
wasmxds uses, the way the real one does (api-concepts "Efficient detection of
changes", "Resource versions", "Retrieving large results sets in chunks"):

- list: ``items`` and ``metadata.resourceVersion``; ``limit``/``continue``
  pages from one snapshot; a ``resourceVersion`` or ``continue`` older than the
  kept history is ``410 Gone`` (``reason: Expired``); items of built-in kinds
  (Secrets) come without ``kind``/``apiVersion``, as the real server sends them.
- watch (``watch=1``/``true``/``True``): a chunked stream of JSON lines
  ``{"type": ..., "object": ...}``; without a resourceVersion (or ``0``) it
  starts with synthetic ADDED events of what exists; with one it replays
  history after it, or answers 410 (an ERROR event with a ``Status`` by
  default, or HTTP 410) when that is compacted; ``timeoutSeconds`` ends it
  cleanly; BOOKMARKs go only to watches that set ``allowWatchBookmarks``.
- ``fieldSelector`` (``metadata.name``, ``metadata.namespace``, ``type`` for
  Secrets) and ``labelSelector`` (equality and existence), with DELETED/ADDED
  when an update moves an object out of or into a watch's selection.
- ``PATCH .../wasmplugins/NAME/status`` (and ``trafficextensions``) with
  ``application/merge-patch+json`` (RFC 7386) changes only ``status``; it is
  recorded in ``status_patches``.
- ``traffic_extensions=False`` is a cluster without the TrafficExtension CRD:
  its paths answer 404 (a ``Status``, as the real server's ``NotFound``).
- bearer-token authentication (401 ``Status`` otherwise), a ``resourceVersion``
  counter shared by all objects, ``generation`` bumped on spec changes of
  custom resources, ``managedFields`` that change on every write.

Tests drive it directly: :meth:`FakeKube.apply` and :meth:`FakeKube.delete`
change objects, :meth:`expire_history` compacts, :meth:`send_error` and
:meth:`send_bookmark` write into open watches, :meth:`drop_watches` cuts their
connections, :meth:`fail_next` answers the next requests with an error,
:meth:`stop`/:meth:`start` take the whole server down and back up on the same
port, and :meth:`kubeconfig` writes a kubeconfig pointing at it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import itertools
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trustme
import yaml
from aiohttp import web

__all__ = [
    "FakeKube",
    "RecordedRequest",
    "StatusPatch",
    "pull_secret",
    "running_fake_kube",
    "trafficextension",
    "wasmplugin",
]

GROUP = "extensions.istio.io"
VERSION = "v1alpha1"
PLUGIN_API_VERSION = f"{GROUP}/{VERSION}"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"

# resource -> (kind, apiVersion, built-in: list items carry no kind/apiVersion)
_RESOURCES: dict[str, tuple[str, str, bool]] = {
    "wasmplugins": ("WasmPlugin", PLUGIN_API_VERSION, False),
    "trafficextensions": ("TrafficExtension", PLUGIN_API_VERSION, False),
    "secrets": ("Secret", "v1", True),
}
_KINDS = {kind: resource for resource, (kind, _, _) in _RESOURCES.items()}
_FIELDS = {
    "wasmplugins": {"metadata.name", "metadata.namespace"},
    "trafficextensions": {"metadata.name", "metadata.namespace"},
    "secrets": {"metadata.name", "metadata.namespace", "type"},
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go's strconv.ParseBool
_DROP = object()  # queue marker: cut the connection
_END = object()  # queue marker: end the stream cleanly


def wasmplugin(
    name: str,
    namespace: str = "default",
    *,
    url: str = "http://modules.example/filter.wasm",
    config: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A WasmPlugin manifest as ``kubectl apply`` would send it."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    body: dict[str, Any] = dict(spec) if spec is not None else {"url": url}
    if config is not None:
        body["pluginConfig"] = dict(config)
    return {
        "apiVersion": PLUGIN_API_VERSION,
        "kind": "WasmPlugin",
        "metadata": metadata,
        "spec": body,
    }


def trafficextension(
    name: str, namespace: str = "default", *, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """A TrafficExtension manifest as ``kubectl apply`` would send it."""
    return {
        "apiVersion": PLUGIN_API_VERSION,
        "kind": "TrafficExtension",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }


def pull_secret(
    name: str,
    namespace: str = "default",
    *,
    registry: str = "registry.example",
    username: str = "user",
    password: str = "secret",
    secret_type: str = SECRET_TYPE,
) -> dict[str, Any]:
    """A ``kubernetes.io/dockerconfigjson`` Secret (or another ``secret_type``)."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = json.dumps({"auths": {registry: {"auth": auth}}})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": secret_type,
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status(code, reason, message), status=code)


async def _not_found(request: web.Request) -> web.Response:
    """What the real server answers for a resource whose CRD is not installed."""
    del request
    return _error(404, "NotFound", "the server could not find the requested resource")


class _BadSelector(ValueError):
    pass


@dataclass(frozen=True)
class _Selector:
    """A fieldSelector and labelSelector, both as (key, operator, value) terms."""

    fields: tuple[tuple[str, str, str], ...] = ()
    labels: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, resource: str, field_text: str, label_text: str) -> _Selector:
        fields = []
        for term in filter(None, (t.strip() for t in field_text.split(","))):
            key, op, value = _term(term)
            if op not in ("=", "==", "!=") or key not in _FIELDS[resource]:
                raise _BadSelector(f'field label not supported: "{key}"')
            fields.append((key, op, value))
        labels = [_term(t.strip()) for t in label_text.split(",") if t.strip()]
        return cls(tuple(fields), tuple(labels))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj["metadata"]
        values = {
            "metadata.name": metadata["name"],
            "metadata.namespace": metadata["namespace"],
            "type": obj.get("type", ""),
        }
        for key, op, value in self.fields:
            if (values[key] == value) != (op in ("=", "==")):
                return False
        labels = metadata.get("labels") or {}
        for key, op, value in self.labels:
            present = key in labels
            ok = {
                "exists": present,
                "!": not present,
                "=": labels.get(key) == value,
                "==": labels.get(key) == value,
                "!=": labels.get(key) != value,
            }[op]
            if not ok:
                return False
        return True


def _term(term: str) -> tuple[str, str, str]:
    for op in ("!=", "==", "="):
        if op in term:
            key, value = term.split(op, 1)
            return key.strip(), op, value.strip()
    if term.startswith("!"):
        return term[1:], "!", ""
    return term, "exists", ""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    authorized: bool
    content_type: str = ""

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in _TRUE


_RECORDED = web.RequestKey("recorded", RecordedRequest)


@dataclass(frozen=True)
class StatusPatch:
    namespace: str
    name: str
    content_type: str
    body: dict[str, Any]
    resource: str = "wasmplugins"


@dataclass(eq=False)
class _Watch:
    resource: str
    namespace: str | None
    selector: _Selector
    bookmarks: bool
    request: RecordedRequest
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)

    def sees(self, resource: str, obj: Mapping[str, Any] | None) -> bool:
        if obj is None or resource != self.resource:
            return False
        if self.namespace is not None and obj["metadata"]["namespace"] != self.namespace:
            return False
        return self.selector.matches(obj)


class FakeKube:
    """See the module docstring. ``watch_gone`` picks how a too-old watch is refused."""

    def __init__(
        self,
        *,
        token: str = "fake-token",
        tls: bool = True,
        watch_gone: Literal["event", "http"] = "event",
        traffic_extensions: bool = True,
    ) -> None:
        self.token = token
        self.traffic_extensions = traffic_extensions
        self.watch_gone = watch_gone
        self.ca = trustme.CA() if tls else None
        self.port = 0
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.status_patches: list[StatusPatch] = []
        self._rv = itertools.count(100)
        self.resource_version = next(self._rv)
        # (resourceVersion, resource, event type, object, previous version of it)
        self._history: list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = []
        self._compacted = 0
        self._snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._watches: set[_Watch] = set()
        # (status, resource it is for; None: the next request that is not for
        # trafficextensions, so WasmPlugin tests are not disturbed by that list/watch)
        self._failures: list[tuple[int, str | None]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start serving (again, on the same port after :meth:`stop`)."""
        app = web.Application(middlewares=[self._middleware])
        base = f"/apis/{GROUP}/{VERSION}"
        plurals = ["wasmplugins"]
        if self.traffic_extensions:
            plurals.append("trafficextensions")
        else:
            app.router.add_route("*", f"{base}/{{tail:.*trafficextensions.*}}", _not_found)
        for plural in plurals:
            app.router.add_get(f"{base}/{plural}", self._collection)
            app.router.add_get(f"{base}/namespaces/{{namespace}}/{plural}", self._collection)
            app.router.add_get(f"{base}/namespaces/{{namespace}}/{plural}/{{name}}", self._get)
            app.router.add_patch(
                f"{base}/namespaces/{{namespace}}/{plural}/{{name}}/status", self._patch_status
            )
        app.router.add_get("/api/v1/secrets", self._collection)
        app.router.add_get("/api/v1/namespaces/{namespace}/secrets", self._collection)
        app.router.add_get("/api/v1/namespaces/{namespace}/secrets/{name}", self._get)
        context = None
        if self.ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        # The real server notices a client that went away; so must the fake, to close its watch.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=context, reuse_address=True
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving: open watches are cut, new connections refused. State is kept."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- client configuration ---------------------------------------------

    def kubeconfig(self, path: Path, *, token: str | None = None) -> Path:
        """Write a kubeconfig for this server (bearer token, CA inline) to ``path``."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.ca is not None:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca.cert_pem.bytes()
            ).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "wasmxds", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "wasmxds"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def service_account(self, directory: Path) -> tuple[Path, Path, dict[str, str]]:
        """In-cluster config: (token file, CA file, environment) as a pod would have them."""
        directory.mkdir(parents=True, exist_ok=True)
        token, ca = directory / "token", directory / "ca.crt"
        token.write_text(self.token)
        assert self.ca is not None, "in-cluster config is always TLS"
        ca.write_bytes(self.ca.cert_pem.bytes())
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(self.port)}
        return token, ca, env

    # -- driving it ---------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update an object (status is kept: it is a subresource)."""
        obj = copy.deepcopy(dict(manifest))
        resource = _KINDS[obj["kind"]]
        metadata = obj["metadata"]
        metadata.setdefault("namespace", "default")
        key = (resource, metadata["namespace"], metadata["name"])
        previous = self.objects.get(key)
        rv = next(self._rv)
        if previous is None:
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = _now()
            generation = 1
        else:
            old = previous["metadata"]
            metadata["uid"] = old["uid"]
            metadata["creationTimestamp"] = old["creationTimestamp"]
            generation = old.get("generation", 1)
            if previous.get("spec") != obj.get("spec"):
                generation += 1
            if "status" in previous:
                obj["status"] = previous["status"]
            else:
                obj.pop("status", None)
        if resource != "secrets":
            metadata["generation"] = generation
        else:
            obj.pop("status", None)
        metadata["resourceVersion"] = str(rv)
        metadata["managedFields"] = [
            {
                "manager": "kubectl",
                "operation": "Update",
                "apiVersion": obj["apiVersion"],
                "time": _now(),
            }
        ]
        self._store(resource, key, obj, previous, rv)
        return copy.deepcopy(obj)

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        resource = _KINDS[kind]
        key = (resource, namespace, name)
        previous = self.objects[key]
        rv = next(self._rv)
        final = copy.deepcopy(previous)
        final["metadata"]["resourceVersion"] = str(rv)
        self._store(resource, key, None, previous, rv, deleted=final)

    def expire_history(self) -> None:
        """Forget every change so far (etcd compaction): older versions now get 410."""
        self._compacted = self.resource_version
        self._history.clear()
        self._snapshots.clear()

    def send_error(self, code: int = 410, message: str = "too old resource version") -> None:
        """Write an ERROR event into every open watch, then end it (as the server does)."""
        reason = "Expired" if code == 410 else "InternalError"
        for watch in self._watches:
            watch.queue.put_nowait({"type": "ERROR", "object": _status(code, reason, message)})
            watch.queue.put_nowait(_END)

    def send_bookmark(self) -> None:
        """A BOOKMARK at the current resourceVersion to every watch that asked for them."""
        for watch in self._watches:
            if watch.bookmarks:
                kind, api_version, _ = _RESOURCES[watch.resource]
                watch.queue.put_nowait(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": kind,
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self.resource_version)},
                        },
                    }
                )

    def bump(self) -> int:
        """Advance the resourceVersion (a change to an object nobody here watches)."""
        self.resource_version = next(self._rv)
        return self.resource_version

    def drop_watches(self) -> None:
        """Cut every open watch connection without ending its stream."""
        for watch in self._watches:
            watch.queue.put_nowait(_DROP)

    def end_watches(self) -> None:
        """End every open watch cleanly, as ``timeoutSeconds`` would."""
        for watch in self._watches:
            watch.queue.put_nowait(_END)

    def fail_next(self, status: int = 503, count: int = 1, resource: str | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (a ``Status`` body): those
        for ``resource``, or (None) any but the trafficextensions list/watch."""
        self._failures.extend([(status, resource)] * count)

    def open_watches(self, resource: str = "wasmplugins") -> list[RecordedRequest]:
        return [w.request for w in self._watches if w.resource == resource]

    def watch_requests(self, resource: str = "wasmplugins") -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_watch and r.path.endswith(resource)]

    def list_requests(self, resource: str = "wasmplugins") -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.method == "GET" and not r.is_watch and r.path.endswith(resource)
        ]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``check()`` holds; it is re-checked on every request and watch change."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(check)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- internals ------------------------------------------------------------

    def _store(
        self,
        resource: str,
        key: tuple[str, str, str],
        obj: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        rv: int,
        *,
        deleted: dict[str, Any] | None = None,
    ) -> None:
        self.resource_version = rv
        if obj is None:
            del self.objects[key]
        else:
            self.objects[key] = obj
        event_type = "DELETED" if obj is None else "ADDED" if previous is None else "MODIFIED"
        shown = obj if obj is not None else deleted
        assert shown is not None
        self._history.append(
            (rv, resource, event_type, copy.deepcopy(shown), copy.deepcopy(previous))
        )
        for watch in self._watches:
            event = self._event_for(watch, resource, event_type, shown, previous)
            if event is not None:
                watch.queue.put_nowait(event)

    @staticmethod
    def _event_for(
        watch: _Watch,
        resource: str,
        event_type: str,
        obj: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> dict[str, Any] | None:
        """What ``watch`` sees of a change, with selector moves (watch cache semantics)."""
        now, before = watch.sees(resource, obj), watch.sees(resource, previous)
        if event_type == "DELETED":
            return {"type": "DELETED", "object": copy.deepcopy(obj)} if before else None
        if now and not before:
            return {"type": "ADDED", "object": copy.deepcopy(obj)}
        if now:
            return {"type": event_type, "object": copy.deepcopy(obj)}
        if before:
            return {"type": "DELETED", "object": copy.deepcopy(obj)}
        return None

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        recorded = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            authorized,
            request.headers.get("Content-Type", ""),
        )
        self.requests.append(recorded)
        await self._notify()
        if not authorized:
            return _error(401, "Unauthorized", "Unauthorized")
        failure = next(
            (
                f
                for f in self._failures
                if f[1] == self._resource(request)
                or (f[1] is None and self._resource(request) != "trafficextensions")
            ),
            None,
        )
        if failure is not None:
            self._failures.remove(failure)
            code = failure[0]
            return _error(code, "InternalError", f"injected failure ({code})")
        request[_RECORDED] = recorded
        response: web.StreamResponse = await handler(request)
        return response

    def _resource(self, request: web.Request) -> str:
        if "/secrets" in request.path:
            return "secrets"
        return "trafficextensions" if "/trafficextensions" in request.path else "wasmplugins"

    def _matching(
        self, resource: str, namespace: str | None, selector: _Selector
    ) -> list[dict[str, Any]]:
        found = [
            obj
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource and (namespace is None or ns == namespace) and selector.matches(obj)
        ]
        return copy.deepcopy(found)

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource = self._resource(request)
        namespace = request.match_info.get("namespace")
        query = request.query
        try:
            selector = _Selector.parse(
                resource, query.get("fieldSelector", ""), query.get("labelSelector", "")
            )
        except _BadSelector as exc:
            return _error(400, "BadRequest", str(exc))
        if query.get("watch") in _TRUE:
            return await self._watch(request, resource, namespace, selector)
        return self._list(resource, namespace, selector, query)

    def _too_old(self, version: str) -> bool:
        return version not in ("", "0") and int(version) < self._compacted

    def _list(
        self, resource: str, namespace: str | None, selector: _Selector, query: Mapping[str, str]
    ) -> web.Response:
        kind, api_version, builtin = _RESOURCES[resource]
        token = query.get("continue", "")
        if token:
            snapshot = self._snapshots.get(token)
            if snapshot is None:
                return _error(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a"
                    " consistent list result.",
                )
            version, remaining = snapshot
        else:
            if self._too_old(query.get("resourceVersion", "")):
                return _error(410, "Expired", "too old resource version")
            version, remaining = (
                self.resource_version,
                self._matching(resource, namespace, selector),
            )
        limit = int(query.get("limit", "0") or 0)
        page, rest = (remaining[:limit], remaining[limit:]) if limit else (remaining, [])
        metadata: dict[str, Any] = {"resourceVersion": str(version)}
        if rest:
            next_token = uuid.uuid4().hex
            self._snapshots[next_token] = (version, rest)
            metadata["continue"] = next_token
            metadata["remainingItemCount"] = len(rest)
        if builtin:
            for item in page:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return web.json_response(
            {"kind": f"{kind}List", "apiVersion": api_version, "metadata": metadata, "items": page}
        )

    async def _watch(
        self, request: web.Request, resource: str, namespace: str | None, selector: _Selector
    ) -> web.StreamResponse:
        query = request.query
        version = query.get("resourceVersion", "")
        if self._too_old(version) and self.watch_gone == "http":
            return _error(
                410, "Expired", f"too old resource version: {version} ({self._compacted})"
            )
        watch = _Watch(
            resource,
            namespace,
            selector,
            query.get("allowWatchBookmarks") in _TRUE,
            request[_RECORDED],
        )
        # Work out what to replay and register the watch in one step (no await in
        # between), so no change can fall between the two.
        if self._too_old(version):
            status = _status(
                410, "Expired", f"too old resource version: {version} ({self._compacted})"
            )
            backlog: list[object] = [{"type": "ERROR", "object": status}, _END]
        elif version in ("", "0"):
            backlog = [
                {"type": "ADDED", "object": obj}
                for obj in self._matching(resource, namespace, selector)
            ]
        else:
            start = int(version)
            replayed = (
                self._event_for(watch, res, event_type, obj, previous)
                for rv, res, event_type, obj, previous in self._history
                if rv > start
            )
            backlog = [event for event in replayed if event is not None]
        for item in backlog:
            watch.queue.put_nowait(item)
        self._watches.add(watch)
        await self._notify()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        timeout = float(query.get("timeoutSeconds", "1800") or 1800)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = await watch.queue.get()
                    if item is _END:
                        break
                    if item is _DROP:
                        if request.transport is not None:  # None: the client left already
                            request.transport.abort()
                        return response
                    await response.write(json.dumps(item).encode() + b"\n")
        except TimeoutError:
            pass
        finally:
            self._watches.discard(watch)
            await self._notify()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _get(self, request: web.Request) -> web.Response:
        resource = self._resource(request)
        key = (resource, request.match_info["namespace"], request.match_info["name"])
        obj = self.objects.get(key)
        if obj is None:
            kind = _RESOURCES[resource][0]
            return _error(404, "NotFound", f'{resource} "{key[2]}" not found ({kind})')
        return web.json_response(obj)

    async def _patch_status(self, request: web.Request) -> web.Response:
        resource = self._resource(request)
        key = (resource, request.match_info["namespace"], request.match_info["name"])
        content_type = request.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() != "application/merge-patch+json":
            # Custom resources take JSON and merge patches, never strategic merge ones.
            return _error(
                415, "UnsupportedMediaType", f"the media type {content_type} is not supported"
            )
        previous = self.objects.get(key)
        if previous is None:
            return _error(404, "NotFound", f'{resource}.{GROUP} "{key[2]}" not found')
        body = await request.json()
        self.status_patches.append(StatusPatch(key[1], key[2], content_type, body, resource))
        updated = copy.deepcopy(previous)
        if "status" in body:
            updated["status"] = merge_patch(previous.get("status"), body["status"])
        rv = next(self._rv)
        updated["metadata"]["resourceVersion"] = str(rv)
        updated["metadata"]["managedFields"] = [
            *previous["metadata"].get("managedFields", []),
            {"manager": "wasmxds", "operation": "Update", "subresource": "status", "time": _now()},
        ]
        self._store(resource, key, updated, previous, rv)
        await self._notify()
        return web.json_response(updated)


@contextlib.asynccontextmanager
async def running_fake_kube(**options: Any) -> AsyncIterator[FakeKube]:
    fake = FakeKube(**options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def objects_named(items: Iterable[Mapping[str, Any]]) -> list[str]:
    """``namespace/name`` of each object, for assertions."""
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in items]
