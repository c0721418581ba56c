"""The admin HTTP server (aiohttp), loopback by default.

/healthz                     the process is up
/readyz                      sources read, first push made, xDS listening (JSON detail)
/metrics                     Prometheus metrics
/debug/syncz                 per proxy: identity and, per type, sent / ACKed / NACKed state
/debug/plugins               per WasmPlugin: origin, module, fetch state, stand-in, proxies
/debug/problems              what the sources found wrong, as path:line: message
/debug/config_dump?node=ID   the exact resources a proxy gets (or ?namespace=&label=k=v)
/debug/rollouts              per staged rollout: versions, step, proxies, health, why
POST /rollouts/NS/NAME/ACTION  pause, resume, promote or abort a staged rollout
/modules/sha256/<hex>        module bytes, for `--module-delivery remote`

Module downloads serve only modules a current plugin references (served, last
good, or being fetched); with ``--admin-client-ca`` only to a client whose
certificate proves (by the xDS port's rules: one SPIFFE ID, a ``--trust-domain``)
a namespace such a plugin applies to. On a non-loopback address the debug pages
need a client certificate whose SPIFFE ID a ``--debug-identity`` names, or
``--debug-public``. Steering a rollout (POST) is open to anyone on the host on
a loopback bind; elsewhere only to a certificate a ``--debug-identity`` names
(never through ``--debug-public``), and never to a request a web page sent.
Health, readiness and metrics never need a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wasmxds.admin.downloads import ModuleDownloads, Pulse
from wasmxds.admin.views import Readiness, config_dump, plugins_view, syncz
from wasmxds.api.objects import ObjectKey, Problem
from wasmxds.errors import RolloutError, RolloutNotFound, SettingsError
from wasmxds.metrics import Metrics
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.reconcile import PluginStatus
from wasmxds.rollout import Rollouts
from wasmxds.settings import HostPort
from wasmxds.xds.identity import (
    IdentityPattern,
    IdentityPolicy,
    IdentityRefused,
    RefusalLog,
    SpiffeId,
    clip,
)
from wasmxds.xds.node import node_info_from_metadata
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot

__all__ = ["AdminServer", "AdminState", "AdminTls", "Pulse"]

log = structlog.get_logger(__name__)

# Seconds a stop waits for admin requests still being answered.
_SHUTDOWN_GRACE = 1.0

# A client decides what a refused request's reason says: at most this many
# admin.bad_request lines per window, then one line counting the rest.
_BAD_REQUEST_LINES = 20
_BAD_REQUEST_WINDOW = 10.0


def _printable(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit``: runs of whitespace (newlines too) become one
    space, and any other control character is escaped as repr does (``\\x1b``)."""
    words = text.split()
    return " ".join(
        "".join(c if c.isprintable() else repr(c)[1:-1] for c in word) for word in words
    )[:limit]


class _HttpLog(logging.Logger):
    """aiohttp's own server log, turned into this process's structured events.

    Left to stdlib logging, a malformed request (a request line past aiohttp's
    8190-byte limit, say) printed a raw traceback beside the JSON log: any
    client could fill the log. A refused request is now one warning line, its
    reason escaped so that it stays one line in the text log, and at most
    ``_BAD_REQUEST_LINES`` of them per ``_BAD_REQUEST_WINDOW`` seconds (then one
    line counting those left out). A real failure keeps its traceback, inside
    the structured event.
    """

    def __init__(self) -> None:
        super().__init__("wasmxds.admin.http")
        self._window_start = -math.inf
        self._logged = 0
        self._suppressed = 0

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self._bad_request(exc, record)
        elif record.levelno >= logging.ERROR:
            log.error("admin.request_failed", message=record.getMessage(), exc_info=record.exc_info)
        elif record.levelno >= logging.WARNING:
            log.warning("admin.http", message=_printable(record.getMessage(), 1000))

    def _bad_request(self, exc: HttpProcessingError, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self._window_start >= _BAD_REQUEST_WINDOW:
            self._flush()
            self._window_start, self._logged = now, 0
        if self._logged >= _BAD_REQUEST_LINES:
            if not self._suppressed:
                # No later request may come to close the window: say it when it ends.
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_later(
                        self._window_start + _BAD_REQUEST_WINDOW - now, self._flush
                    )
            self._suppressed += 1
            return
        self._logged += 1
        log.warning(
            "admin.bad_request",
            status=exc.code,
            reason=_printable(exc.message or type(exc).__name__),
            remote=str(record.args[0]) if isinstance(record.args, tuple) else None,
        )

    def _flush(self) -> None:
        if self._suppressed:
            log.warning(
                "admin.bad_requests_not_logged",
                count=self._suppressed,
                window_seconds=_BAD_REQUEST_WINDOW,
                reason=f"more than {_BAD_REQUEST_LINES} refused requests in the window",
            )
            self._suppressed = 0


@dataclass(frozen=True, slots=True)
class AdminState:
    """Read-only accessors for everything the admin pages show."""

    readiness: Callable[[], Readiness]
    sessions: Callable[[], Sequence[Session]]
    snapshot: Callable[[], Snapshot]
    plugins: Callable[[], Mapping[ObjectKey, PluginStatus]]
    problems: Callable[[], Sequence[Problem]]
    delivery: str
    store: ModuleStore
    metrics: Metrics
    module_arrived: Pulse
    """Fires whenever a module lands in the store, and after every reconcile (a
    fetch may have failed): module downloads waiting for a fetch look again."""
    index: ModuleIndex | None = None
    """What each URL and OCI manifest resolved to before, to know what a fetch brings."""
    health: Callable[[str], Mapping[str, Any] | None] | None = None
    """A node id's health as its own proxy reports it (metrics service); None: never reported."""
    rollouts: Rollouts | None = None
    """The staged-rollout engine: ``/debug/rollouts`` and the steering POSTs."""


@dataclass(frozen=True, slots=True)
class AdminTls:
    """HTTPS for the admin port, and the CA client certificates must come from (if any).

    A client certificate is optional in the handshake (one that is presented must come
    from the CA): health, readiness and metrics stay open to probes and Prometheus
    without one, and each protected route asks for it.
    """

    cert: Path
    key: Path
    client_ca: Path | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"--admin-tls-cert {self.cert} / --admin-tls-key {self.key}: not a PEM"
                f" certificate chain and its private key ({exc})"
            ) from exc
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (ssl.SSLError, OSError) as exc:
                raise SettingsError(
                    f"--admin-client-ca {self.client_ca}: not a PEM CA certificate ({exc})"
                ) from exc
            context.verify_mode = ssl.CERT_OPTIONAL
        return context


def is_loopback(host: str) -> bool:
    """Whether an admin bind address only takes connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


_DEBUG_REFUSED = (
    "the debug pages are not public on a non-loopback admin address: start wasmxds with"
    " --admin-client-ca (and --admin-tls-cert/--admin-tls-key) and --debug-identity"
    " spiffe://<trust-domain>/ns/<namespace>/sa/<account> (or .../ns/<namespace>/*) naming"
    " who may read them, and connect with a client certificate of that identity (`wasmxds"
    " status --admin-ca/--admin-cert/--admin-key`); or start it with --debug-public to let"
    " anyone who reaches the port read them\n"
)


_STEER_REFUSED = (
    "steering a rollout is refused on a non-loopback admin address without a client"
    " certificate a --debug-identity names (--debug-public opens reading the debug pages,"
    " never steering): run `wasmxds rollout` on the wasmxds host against a loopback"
    " --admin-address, or start wasmxds with --admin-client-ca (and"
    " --admin-tls-cert/--admin-tls-key) and --debug-identity"
    " spiffe://<trust-domain>/ns/<namespace>/sa/<account> naming who may steer, and connect"
    " with a client certificate of that identity (`wasmxds rollout"
    " --admin-ca/--admin-cert/--admin-key`)\n"
)

# The operator actions on a staged rollout, by the last segment of their POST path.
ROLLOUT_ACTIONS = ("pause", "resume", "promote", "abort")


def _peer_certificate(request: web.Request) -> dict[str, Any] | None:
    """The client's certificate, verified against the admin client CA; None without one."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return cert or None  # {}: none was asked for (no client CA)


def _peer_uris(cert: Mapping[str, Any]) -> list[str]:
    return [str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]


class AdminServer:
    def __init__(
        self,
        *,
        address: HostPort,
        state: AdminState,
        tls: AdminTls | None = None,
        debug_public: bool = False,
        root_namespace: str = "istio-system",
        identity: IdentityPolicy | None = None,
        debug_identities: Sequence[IdentityPattern] = (),
    ) -> None:
        """``identity``: which client certificates prove a namespace (the xDS port's
        ``--trust-domain`` rules); ``debug_identities``: whose certificates read the debug
        pages on a non-loopback address (``--debug-identity``)."""
        self._address = address
        self._state = state
        # Built now, so that unreadable TLS files stop start-up with a sentence.
        self._ssl_context = tls.context() if tls is not None else None
        self._root_namespace = root_namespace
        self._client_certs = tls is not None and tls.client_ca is not None
        self._identity = identity or IdentityPolicy()
        self._debug_identities = tuple(debug_identities) if self._client_certs else ()
        self._debug_open = debug_public or is_loopback(address.host)
        # Reading may be made public; changing what proxies run may not.
        self._steer_open = is_loopback(address.host)
        self._refusals = RefusalLog("admin.identity_refused")
        self._downloads = ModuleDownloads(
            plugins=state.plugins,
            store=state.store,
            arrived=state.module_arrived,
            first_push=lambda: state.readiness().first_push,
            index=state.index,
            root_namespace=root_namespace,
        )
        self.port: int | None = None
        self.app = web.Application()
        routes = self.app.router
        routes.add_get("/healthz", self._healthz)
        routes.add_get("/readyz", self._readyz)
        routes.add_get("/metrics", self._metrics)
        routes.add_get("/debug/syncz", self._syncz)
        routes.add_get("/debug/plugins", self._plugins)
        routes.add_get("/debug/problems", self._problems)
        routes.add_get("/debug/config_dump", self._config_dump)
        routes.add_get("/debug/rollouts", self._rollouts)
        # POST only: a GET (a link, an image tag) gets a 405 and changes nothing.
        routes.add_post("/rollouts/{namespace}/{name}/{action}", self._steer)
        routes.add_get("/modules/sha256/{digest}", self._module)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        readiness = self._state.readiness()
        body = {
            "ready": readiness.ready,
            "sources_loaded": readiness.sources_loaded,
            "first_push": readiness.first_push,
            "xds_listening": readiness.xds_listening,
        }
        return web.json_response(body, status=200 if readiness.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        payload = generate_latest(self._state.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _syncz(self, request: web.Request) -> web.Response:
        self._debug_allowed(request)
        return web.json_response(syncz(self._state.sessions(), self._state.health))

    async def _plugins(self, request: web.Request) -> web.Response:
        self._debug_allowed(request)
        state = self._state
        view = plugins_view(state.plugins(), state.snapshot(), state.sessions(), state.delivery)
        return web.json_response(view)

    async def _problems(self, request: web.Request) -> web.Response:
        self._debug_allowed(request)
        return web.json_response(
            [
                {"path": p.path, "line": p.line, "severity": p.severity.value, "message": p.message}
                for p in self._state.problems()
            ]
        )

    async def _config_dump(self, request: web.Request) -> web.Response:
        self._debug_allowed(request)
        node_id = request.query.get("node")
        snapshot = self._state.snapshot()
        if node_id:
            for session in self._state.sessions():
                if session.node.id == node_id:
                    dump = config_dump(snapshot, session.node, session.ecds_names())
                    return web.json_response(dump)
            raise web.HTTPNotFound(text=f"no connected proxy with node id {node_id!r}\n")
        labels = {}
        for item in request.query.getall("label", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise web.HTTPBadRequest(text=f"label {item!r}: expected key=value\n")
            labels[key] = value
        namespace = request.query.get("namespace")
        if namespace is None:
            raise web.HTTPBadRequest(text="give ?node=ID, or ?namespace=NS[&label=k=v...]\n")
        node = node_info_from_metadata("(hypothetical)", {"namespace": namespace, "labels": labels})
        return web.json_response(config_dump(snapshot, node, None))

    async def _rollouts(self, request: web.Request) -> web.Response:
        self._debug_allowed(request)
        rollouts = self._state.rollouts
        return web.json_response(rollouts.views() if rollouts is not None else [])

    async def _steer(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ROLLOUT_ACTIONS:
            raise web.HTTPNotFound(
                text=f"no rollout action {clip(action)!r}: one of {', '.join(ROLLOUT_ACTIONS)}\n"
            )
        self._steer_allowed(request)
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        rollouts = self._state.rollouts
        if rollouts is None:
            raise web.HTTPNotFound(text=f"no staged rollout for {clip(key)!r}\n")
        steer = {
            "pause": rollouts.pause,
            "resume": rollouts.resume,
            "promote": rollouts.promote,
            "abort": rollouts.abort,
        }[action]
        try:
            view = steer(key)
        except RolloutNotFound as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None
        except RolloutError as exc:
            raise web.HTTPConflict(text=f"{exc}\n") from None
        log.info("admin.rollout_steered", plugin=clip(key), action=action, remote=request.remote)
        return web.json_response(view)

    def _steer_allowed(self, request: web.Request) -> None:
        """403 unless this client may change what proxies run: anyone on the host on a
        loopback bind, elsewhere a certificate a ``--debug-identity`` names; never a
        request a browser sent for a web page (it carries an Origin header), so no page a
        browser on the host opens can steer through a loopback port."""
        if "Origin" in request.headers:
            self._refused(request, "browser_origin", "")
            raise web.HTTPForbidden(
                text="steering a rollout: this request came from a web page (it carries an"
                " Origin header), and pages cannot steer rollouts; use `wasmxds rollout"
                " pause|resume|promote|abort NAMESPACE/NAME`\n"
            )
        if self._steer_open:
            return
        if not self._debug_identities:
            raise web.HTTPForbidden(text=_STEER_REFUSED)
        identity = self._client_identity(
            request,
            "requests that steer a rollout",
            "connect with a certificate whose SPIFFE ID a --debug-identity names (`wasmxds"
            " rollout --admin-ca/--admin-cert/--admin-key`)",
        )
        if not any(pattern.matches(identity) for pattern in self._debug_identities):
            self._refused(request, "debug_identity", str(identity))
            raise web.HTTPForbidden(
                text=f"steering a rollout: your client certificate's identity {identity} is"
                " not one that may steer; wasmxds lets only the identities given with"
                f" --debug-identity steer rollouts (start it with --debug-identity {identity},"
                f" or a namespace pattern spiffe://{identity.trust_domain}/ns/"
                f"{identity.namespace}/*, to admit it)\n"
            )

    def _debug_allowed(self, request: web.Request) -> None:
        """403 unless the debug pages are open here, or the client's certificate proves an
        identity a ``--debug-identity`` names (a module-download certificate is not enough:
        the pages show every namespace's configuration)."""
        if self._debug_open:
            return
        if not self._debug_identities:
            raise web.HTTPForbidden(text=_DEBUG_REFUSED)
        identity = self._client_identity(
            request,
            "the debug pages",
            "connect with a certificate whose SPIFFE ID a --debug-identity names (`wasmxds"
            " status --admin-ca/--admin-cert/--admin-key`)",
        )
        if not any(pattern.matches(identity) for pattern in self._debug_identities):
            self._refused(request, "debug_identity", str(identity))
            raise web.HTTPForbidden(
                text=f"the debug pages: your client certificate's identity {identity} is not"
                " one that may read them; wasmxds lets only the identities given with"
                " --debug-identity read them (start it with --debug-identity"
                f" {identity}, or a namespace pattern"
                f" spiffe://{identity.trust_domain}/ns/{identity.namespace}/*, to admit it)\n"
            )

    def _client_identity(self, request: web.Request, what: str, remedy: str) -> SpiffeId:
        """The SPIFFE ID the client's verified certificate proves, by the xDS port's rules;
        a 403 saying what is wrong with it otherwise."""
        cert = _peer_certificate(request)
        if cert is None:
            self._refused(request, "no_certificate", "")
            raise web.HTTPForbidden(
                text=f"{what} need a client certificate from wasmxds's --admin-client-ca, and"
                f" this connection presented none: {remedy}\n"
            )
        try:
            return self._identity.certificate_identity(_peer_uris(cert))
        except IdentityRefused as exc:
            self._refused(request, exc.reason, exc.identity)
            raise web.HTTPForbidden(text=f"{what}: {exc}\n") from None

    def _refused(self, request: web.Request, reason: str, identity: str) -> None:
        self._refusals.warning(
            path=clip(request.path), remote=request.remote, reason=reason, identity=identity or None
        )

    async def _module(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not is_digest(digest):
            raise web.HTTPNotFound(text="not a sha256 digest (64 lowercase hex characters)\n")
        if not self._client_certs:
            return await self._downloads.serve(digest, None)
        # Who asks is settled before the cache is looked at or anything is waited for: a
        # refused client learns nothing of what is cached, used or on its way.
        identity = self._client_identity(
            request,
            "module downloads",
            "give Envoy the proxy's certificate (`wasmxds bootstrap"
            " --modules-tls-cert/--modules-tls-key`)",
        )
        return await self._downloads.serve(digest, frozenset({identity.namespace}))

    async def run(self, started: asyncio.Event | None = None) -> None:
        # A stop must not wait for module downloads that are still waiting for a
        # fetch (up to 20 s each): give handlers a moment, then close.
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            logger=_HttpLog(),
            shutdown_timeout=_SHUTDOWN_GRACE,
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self._address.host, self._address.port, ssl_context=self._ssl_context
            )
            await site.start()
            self.port = int(runner.addresses[0][1])
            log.info("admin.listening", address=f"{self._address.host}:{self.port}")
            if started is not None:
                started.set()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
