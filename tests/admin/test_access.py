"""Who may read what on the admin port: referenced modules only, client certificates per
namespace, and debug pages closed on a non-loopback bind (real aiohttp server, real TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import pytest
import trustme

from tests.factories import WASM_HEADER, make_plugin
from tests.xds.certs import client_cert
from tests.xds.helpers import snapshot_of
from wasmxds.admin.server import AdminServer, AdminState, AdminTls, Pulse, is_loopback
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import SettingsError
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module, Ready
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.settings import HostPort

DEBUG_PAGES = (
    "/debug/syncz",
    "/debug/plugins",
    "/debug/problems",
    "/debug/config_dump?namespace=a",
)
OPEN_PAGES = ("/metrics", "/healthz", "/readyz")


def ready(
    namespace: str, name: str, module: Module, *, last_good: Module | None = None
) -> PluginStatus:
    """A plugin in ``namespace`` using ``module`` (and keeping ``last_good`` as its last good)."""
    plugin = make_plugin(name, namespace=namespace)
    return PluginStatus(
        plugin, module_request(plugin), Ready(module), None, served_module=last_good
    )


@contextlib.asynccontextmanager
async def admin(
    tmp_path: Path,
    plugins: Mapping[ObjectKey, PluginStatus],
    *,
    host: str = "127.0.0.1",
    tls: AdminTls | None = None,
    debug_public: bool = False,
) -> AsyncIterator[tuple[int, ModuleStore]]:
    """The admin server bound to ``host``; yields its port and module store."""
    store = ModuleStore(tmp_path / "cache")
    state = AdminState(
        readiness=lambda: Readiness(sources_loaded=True, first_push=True, xds_listening=True),
        sessions=list,
        snapshot=snapshot_of,
        plugins=lambda: plugins,
        problems=list,
        delivery="remote",
        store=store,
        metrics=Metrics(),
        module_arrived=Pulse(),
    )
    server = AdminServer(address=HostPort(host, 0), state=state, tls=tls, debug_public=debug_public)
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    assert server.port is not None
    try:
        yield server.port, store
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_only_modules_a_current_plugin_references_are_served(tmp_path):
    """A cached digest no plugin uses is a 404 at once; wanted and last-good modules are served."""
    plugins: dict[ObjectKey, PluginStatus] = {}
    async with admin(tmp_path, plugins) as (port, store), httpx.AsyncClient(timeout=10) as client:
        wanted = await store.put(WASM_HEADER)
        kept = await store.put(WASM_HEADER + b"\x00")
        orphan = await store.put(WASM_HEADER + b"\x01")
        plugins[ObjectKey("a", "p")] = ready("a", "p", wanted, last_good=kept)
        base = f"http://127.0.0.1:{port}/modules/sha256/"
        assert (await client.get(base + wanted.digest)).status_code == 200
        assert (await client.get(base + kept.digest)).content == WASM_HEADER + b"\x00"
        response = await client.get(base + orphan.digest)
        assert response.status_code == 404
        assert "not used by any current plugin" in response.text
        plugins.clear()  # the plugin was deleted: its module is no longer served
        assert (await client.get(base + wanted.digest)).status_code == 404


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, AdminTls, ssl.SSLContext]:
    """A CA, the admin server's TLS files (client certificates from the same CA), and a client
    context that trusts the server but presents no certificate."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "admin.pem", tmp_path / "admin-key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    anonymous = ssl.create_default_context(cafile=ca_file)
    return ca, AdminTls(cert, key, ca_file), anonymous


def client_context(ca: trustme.CA, tmp_path: Path, namespace: str) -> ssl.SSLContext:
    """A client context presenting a SPIFFE certificate of ``namespace`` from ``ca``."""
    cert, key = client_cert(ca, f"spiffe://cluster.local/ns/{namespace}/sa/envoy").write(
        tmp_path, f"client-{namespace}"
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.load_cert_chain(cert, key)
    return context


async def test_module_downloads_need_a_client_certificate_of_a_namespace_that_uses_it(
    tmp_path, pki
):
    """With an admin client CA: no certificate fails the handshake, another namespace's is a 403
    naming the namespaces, the plugin's own namespace (or any, for a root plugin) gets it."""
    ca, tls, anonymous = pki
    plugins: dict[ObjectKey, PluginStatus] = {}
    async with admin(tmp_path, plugins, tls=tls) as (port, store):
        team_a = await store.put(WASM_HEADER)
        shared = await store.put(WASM_HEADER + b"\x00")
        plugins[ObjectKey("team-a", "p")] = ready("team-a", "p", team_a)
        plugins[ObjectKey("istio-system", "g")] = ready("istio-system", "g", shared)
        base = f"https://127.0.0.1:{port}/modules/sha256/"

        async with httpx.AsyncClient(verify=anonymous, timeout=10) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(base + team_a.digest)
        async with httpx.AsyncClient(
            verify=client_context(ca, tmp_path, "team-b"), timeout=10
        ) as client:
            response = await client.get(base + team_a.digest)
            assert response.status_code == 403
            assert "(team-b)" in response.text
            assert "team-a" not in response.text  # another tenant's namespaces are not told
            assert (await client.get(base + shared.digest)).status_code == 200
        async with httpx.AsyncClient(
            verify=client_context(ca, tmp_path, "team-a"), timeout=10
        ) as client:
            response = await client.get(base + team_a.digest)
            assert response.status_code == 200
            assert response.content == WASM_HEADER


async def test_debug_pages_are_refused_on_a_public_bind_unless_opened(tmp_path, pki):
    """Bound to 0.0.0.0: debug pages are a 403 naming both ways to open them, 200 with
    --debug-public or a verified client certificate; probes and metrics stay open."""
    ca, tls, _ = pki
    async with (
        admin(tmp_path, {}, host="0.0.0.0") as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for path in DEBUG_PAGES:
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "--admin-client-ca" in response.text
            assert "--debug-public" in response.text
        for path in OPEN_PAGES:
            assert (await client.get(path)).status_code == 200, path
    async with (
        admin(tmp_path, {}, host="0.0.0.0", debug_public=True) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for path in (*DEBUG_PAGES, *OPEN_PAGES):
            assert (await client.get(path)).status_code == 200, path
    async with (
        admin(tmp_path, {}, host="0.0.0.0", tls=tls) as (port, _),
        httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}",
            verify=client_context(ca, tmp_path, "ops"),
            timeout=10,
        ) as client,
    ):
        for path in (*DEBUG_PAGES, *OPEN_PAGES):
            assert (await client.get(path)).status_code == 200, path


async def test_loopback_binds_keep_debug_pages_open(tmp_path):
    """On 127.0.0.1 (every e2e test, `wasmxds status`) the debug pages stay readable."""
    async with (
        admin(tmp_path, {}) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for path in DEBUG_PAGES:
            assert (await client.get(path)).status_code == 200, path


def test_which_bind_addresses_count_as_loopback():
    """Loopback addresses and localhost are local; wildcard, public and host names are not."""
    assert all(map(is_loopback, ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "10.0.0.5", "wasmxds.example")))


def test_unreadable_admin_tls_files_are_a_sentence_naming_the_flag(tmp_path, pki):
    """A key that is not PEM, or a CA file that is not one, stops start-up naming the flag."""
    _, tls, _ = pki
    junk = tmp_path / "junk.pem"
    junk.write_text("not a pem\n")
    with pytest.raises(SettingsError, match=r"--admin-tls-cert .* --admin-tls-key"):
        AdminTls(tls.cert, junk).context()
    with pytest.raises(SettingsError, match=r"--admin-client-ca .*: not a PEM CA certificate"):
        AdminTls(tls.cert, tls.key, junk).context()
