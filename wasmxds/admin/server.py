"""The admin HTTP server (aiohttp), loopback by default.

/healthz                     the process is up
/readyz                      sources read, first push made, xDS listening (JSON detail)
/metrics                     Prometheus metrics
/debug/syncz                 per proxy: identity and, per type, sent / ACKed / NACKed state
/debug/plugins               per WasmPlugin: origin, module, fetch state, stand-in, proxies
/debug/problems              what the sources found wrong, as path:line: message
/debug/config_dump?node=ID   the exact resources a proxy gets (or ?namespace=&label=k=v)
/modules/sha256/<hex>        module bytes, for `--module-delivery remote`

Module downloads serve only modules a current plugin references (served, last
good, or being fetched); with ``--admin-client-ca`` only to a client whose
certificate's SPIFFE namespace such a plugin applies to. On a non-loopback
address the debug pages need that client CA or ``--debug-public``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wasmxds.admin.views import Readiness, config_dump, plugins_view, syncz
from wasmxds.api.objects import ObjectKey, Problem
from wasmxds.errors import SettingsError
from wasmxds.metrics import Metrics
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.resolver import pinned_digest
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.modules.types import Module, ModuleRequest, Pending, Ready
from wasmxds.reconcile import PluginStatus
from wasmxds.settings import HostPort
from wasmxds.xds.identity import parse_spiffe_id
from wasmxds.xds.node import node_info_from_metadata
from wasmxds.xds.server import Session
from wasmxds.xds.snapshot import Snapshot

__all__ = ["AdminServer", "AdminState", "AdminTls", "Pulse"]

log = structlog.get_logger(__name__)

# Seconds a stop waits for admin requests still being answered.
_SHUTDOWN_GRACE = 1.0

# How long a module download waits for a fetch under way that is known to
# produce its digest (Envoy's own http_uri timeout for remote modules is 30 s).
_MODULE_WAIT = 20.0
# A digest nothing here names may still come from a fetch whose result is not
# known yet (an unpinned URL, an OCI tag never pulled here, or before the first
# reconcile): behind a Service another replica may have fetched it first. Such
# requests wait briefly, and only this many at once; the rest are a 404 at once,
# so no client can tie up connections by asking for made-up digests.
_UNKNOWN_WAIT = 5.0
_UNKNOWN_WAITERS = 64
# What fetches under way may produce is worked out again on every pulse, and
# otherwise at most this often, however many requests ask.
_EXPECTATION_MAX_AGE = 1.0
# A client decides what a refused request's reason says: at most this many
# admin.bad_request lines per window, then one line counting the rest.
_BAD_REQUEST_LINES = 20
_BAD_REQUEST_WINDOW = 10.0


@dataclass(frozen=True, slots=True)
class _Expectation:
    """Which module digests the fetches under way here can bring."""

    digests: frozenset[str]
    """Digests a fetch under way is known to produce (pinned, or resolved before)."""
    open: bool
    """Some fetch under way (or the first reconcile) may produce a digest not known yet."""


def _expectation(
    plugins: Iterable[PluginStatus], index: ModuleIndex | None, first_push: bool
) -> _Expectation:
    if not first_push:
        return _Expectation(frozenset(), open=True)  # what plugins want is not known yet
    digests: set[str] = set()
    open_ = False
    for status in plugins:
        if not isinstance(status.outcome, Pending):
            continue  # only a first fetch still under way can land a new digest
        known, exact = _digests_of(status.request, index)
        digests |= known
        open_ = open_ or not exact
    return _Expectation(frozenset(digests), open_)


def _digests_of(request: ModuleRequest, index: ModuleIndex | None) -> tuple[set[str], bool]:
    """The module digests fetching ``request`` may store, and whether that is all of them."""
    try:
        scheme = request.scheme
    except ValueError:
        return set(), True  # a malformed URL fails at once; nothing to wait for
    if scheme not in ("http", "https", "oci"):
        return set(), True  # file:// is a path on the proxy, never stored here
    pinned = request.sha256.strip().lower()
    if scheme != "oci" and is_digest(pinned):
        return {pinned}, True  # the module's own digest: this one or a failed fetch
    known: set[str] = set()
    exact = False
    if index is not None:
        secret = "" if request.pull_secret is None else str(request.pull_secret)
        ref = index.ref(request.url, request.sha256, secret)
        if ref is not None:
            known.add(ref.digest)  # what this URL resolved to before (a tag may have moved)
        # OCI: sha256 (Istio's meaning) or the URL's @sha256: name the manifest,
        # and a manifest seen before names its module for good.
        for manifest in (pinned, pinned_digest(request.url)):
            if is_digest(manifest) and (module := index.manifest_module(manifest)) is not None:
                known.add(module)
                exact = True
    if is_digest(pinned):
        known.add(pinned)  # an OCI sha256 may also be the module's own digest
    return known, exact


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


class Pulse:
    """Wakes every current waiter each time it fires (an Event re-armed after setting)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.fired = 0
        """How many times it has fired: who caches what it guards compares this."""

    def fire(self) -> None:
        self.fired += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


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


@dataclass(frozen=True, slots=True)
class AdminTls:
    """HTTPS for the admin port, and the CA client certificates must come from (if any)."""

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
            context.verify_mode = ssl.CERT_REQUIRED
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
    " --admin-client-ca (and --admin-tls-cert/--admin-tls-key) and connect with a client"
    " certificate from that CA, or with --debug-public to let anyone who reaches the port"
    " read them\n"
)


def _peer_namespaces(request: web.Request) -> set[str]:
    """The namespaces of the SPIFFE URI SANs of the client's verified certificate."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    namespaces: set[str] = set()
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI":
            with contextlib.suppress(ValueError):
                namespaces.add(parse_spiffe_id(value).namespace)
    return namespaces


class AdminServer:
    def __init__(
        self,
        *,
        address: HostPort,
        state: AdminState,
        tls: AdminTls | None = None,
        debug_public: bool = False,
        root_namespace: str = "istio-system",
    ) -> None:
        self._address = address
        self._state = state
        # Built now, so that unreadable TLS files stop start-up with a sentence.
        self._ssl_context = tls.context() if tls is not None else None
        self._root_namespace = root_namespace
        self._client_certs = tls is not None and tls.client_ca is not None
        # A verified client certificate is required by the TLS handshake itself.
        self._debug_open = debug_public or self._client_certs or is_loopback(address.host)
        self.port: int | None = None
        self._expectation: tuple[int, float, _Expectation] | None = None
        self._unknown_waiters = 0
        self.app = web.Application()
        routes = self.app.router
        routes.add_get("/healthz", self._healthz)
        routes.add_get("/readyz", self._readyz)
        routes.add_get("/metrics", self._metrics)
        routes.add_get("/debug/syncz", self._syncz)
        routes.add_get("/debug/plugins", self._plugins)
        routes.add_get("/debug/problems", self._problems)
        routes.add_get("/debug/config_dump", self._config_dump)
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
        self._debug_allowed()
        return web.json_response(syncz(self._state.sessions()))

    async def _plugins(self, request: web.Request) -> web.Response:
        self._debug_allowed()
        state = self._state
        view = plugins_view(state.plugins(), state.snapshot(), state.sessions(), state.delivery)
        return web.json_response(view)

    async def _problems(self, request: web.Request) -> web.Response:
        self._debug_allowed()
        return web.json_response(
            [
                {"path": p.path, "line": p.line, "severity": p.severity.value, "message": p.message}
                for p in self._state.problems()
            ]
        )

    async def _config_dump(self, request: web.Request) -> web.Response:
        self._debug_allowed()
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

    def _debug_allowed(self) -> None:
        if not self._debug_open:
            raise web.HTTPForbidden(text=_DEBUG_REFUSED)

    def _users(self, digest: str) -> set[str]:
        """The namespaces of the current plugins that serve, keep or fetch module ``digest``."""
        state = self._state
        users: set[str] = set()
        for status in state.plugins().values():
            digests: set[str] = set()
            if status.served_module is not None:
                digests.add(status.served_module.digest)  # last good
            match status.outcome:
                case Ready(module=Module() as module):
                    digests.add(module.digest)
                case Pending():
                    digests |= _digests_of(status.request, state.index)[0]
            if digest in digests:
                users.add(status.plugin.key.namespace)
        return users

    async def _module(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if not is_digest(digest):
            raise web.HTTPNotFound(text="not a sha256 digest (64 lowercase hex characters)\n")
        module = self._state.store.get(digest)
        if module is not None and not self._users(digest):
            # The cache may keep modules no plugin uses any more (or that one
            # namespace pulled with its secret): only what is referenced is served.
            raise web.HTTPNotFound(text=f"module {digest} is not used by any current plugin\n")
        if module is None:
            # Behind a Service, a proxy can ask this replica for a module another
            # replica has just fetched; this one is most likely fetching it too.
            module = await self._await_module(digest)
        if module is None:
            raise web.HTTPNotFound(text=f"module {digest} is not in the cache\n")
        if self._client_certs:
            self._authorise(request, digest)
        return web.FileResponse(module.path, headers={"Content-Type": "application/wasm"})

    def _authorise(self, request: web.Request, digest: str) -> None:
        """403 unless the client's SPIFFE namespace is one a plugin using ``digest`` applies to."""
        users = self._users(digest)
        if self._root_namespace in users:
            return  # a root-namespace plugin applies to every namespace
        client = _peer_namespaces(request)
        if client & users:
            return
        shown = ", ".join(sorted(client)) or "none (no SPIFFE URI SAN)"
        raise web.HTTPForbidden(
            # Which namespaces do use it is not said: that is another tenant's business.
            text=f"module {digest}: no plugin that uses it applies to the namespace of your"
            f" client certificate ({shown})\n"
        )

    def _expected(self) -> _Expectation:
        """What fetches under way may bring; cached until the next pulse (or a second)."""
        state = self._state
        now = time.monotonic()
        cached = self._expectation
        if (
            cached is None
            or cached[0] != state.module_arrived.fired
            or now - cached[1] > _EXPECTATION_MAX_AGE
        ):
            expectation = _expectation(
                state.plugins().values(), state.index, state.readiness().first_push
            )
            self._expectation = cached = (state.module_arrived.fired, now, expectation)
        return cached[2]

    async def _await_module(self, digest: str) -> Module | None:
        """The module once a fetch under way here lands it, or None at once if none may.

        A digest a fetch is known to bring waits up to ``_MODULE_WAIT``; one that
        only an open-ended fetch might bring waits ``_UNKNOWN_WAIT``, and only
        ``_UNKNOWN_WAITERS`` such requests at a time. Waiters wake on the pulse
        (a module landed, or a reconcile saw a fetch end) and let go as soon as
        nothing under way can bring their digest.
        """
        state = self._state
        expected = self._expected()
        if digest in expected.digests:
            wait, unknown = _MODULE_WAIT, False
        elif expected.open and self._unknown_waiters < _UNKNOWN_WAITERS:
            wait, unknown = _UNKNOWN_WAIT, True
        else:
            return None
        self._unknown_waiters += unknown
        try:
            async with asyncio.timeout(wait):
                # A landed module is served once reconcile shows a plugin using it.
                while (module := state.store.get(digest)) is None or not self._users(digest):
                    await state.module_arrived.wait()
                    if state.store.get(digest) is not None and self._users(digest):
                        continue
                    expected = self._expected()
                    if digest not in expected.digests and not expected.open:
                        return None
        except TimeoutError:
            return None
        finally:
            self._unknown_waiters -= unknown
        return module

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
