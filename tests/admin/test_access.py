"""Who may read what on the admin port: referenced modules only, client certificates per
namespace, and debug pages closed on a non-loopback bind (real aiohttp server, real TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest
import trustme

import wasmxds.admin.downloads as downloads
from tests.factories import WASM_HEADER, make_plugin
from tests.xds.certs import client_cert
from tests.xds.helpers import snapshot_of
from wasmxds.admin.server import AdminServer, AdminState, AdminTls, Pulse, is_loopback
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import SettingsError
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module, Pending, Ready
from wasmxds.reconcile import PluginStatus, module_request
from wasmxds.settings import HostPort
from wasmxds.xds.identity import IdentityPolicy, parse_identity_pattern

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
    identity: IdentityPolicy | None = None,
    debug_identities: Sequence[str] = (),
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
    server = AdminServer(
        address=HostPort(host, 0),
        state=state,
        tls=tls,
        debug_public=debug_public,
        identity=identity,
        debug_identities=[parse_identity_pattern(text) for text in debug_identities],
    )
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


def client_context(ca: trustme.CA, tmp_path: Path, namespace: str, *uris: str) -> ssl.SSLContext:
    """A client context presenting a SPIFFE certificate of ``namespace`` from ``ca`` (or one
    whose URI SANs are ``uris``, when given)."""
    uris = uris or (f"spiffe://cluster.local/ns/{namespace}/sa/envoy",)
    cert, key = client_cert(ca, *uris).write(tmp_path, f"client-{namespace}")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.load_cert_chain(cert, key)
    return context


async def test_module_downloads_need_a_client_certificate_of_a_namespace_that_uses_it(
    tmp_path, pki
):
    """With an admin client CA: no certificate is a 403 asking for one, another namespace's is
    the 404 of an unknown digest, the plugin's own namespace (or any, for a root plugin) gets it."""
    ca, tls, anonymous = pki
    plugins: dict[ObjectKey, PluginStatus] = {}
    async with admin(tmp_path, plugins, tls=tls) as (port, store):
        team_a = await store.put(WASM_HEADER)
        shared = await store.put(WASM_HEADER + b"\x00")
        plugins[ObjectKey("team-a", "p")] = ready("team-a", "p", team_a)
        plugins[ObjectKey("istio-system", "g")] = ready("istio-system", "g", shared)
        base = f"https://127.0.0.1:{port}/modules/sha256/"

        async with httpx.AsyncClient(verify=anonymous, timeout=10) as client:
            response = await client.get(base + team_a.digest)
            assert response.status_code == 403
            assert "--admin-client-ca" in response.text
            assert (await client.get(base + shared.digest)).status_code == 403
        async with httpx.AsyncClient(
            verify=client_context(ca, tmp_path, "team-b"), timeout=10
        ) as client:
            response = await client.get(base + team_a.digest)
            unknown = await client.get(base + "0" * 64)
            assert response.status_code == unknown.status_code == 404
            assert response.text == unknown.text.replace("0" * 64, team_a.digest)
            assert "(team-b)" in response.text
            assert "team-a" not in response.text  # another tenant's namespaces are not told
            assert (await client.get(base + shared.digest)).status_code == 200
        async with httpx.AsyncClient(
            verify=client_context(ca, tmp_path, "team-a"), timeout=10
        ) as client:
            response = await client.get(base + team_a.digest)
            assert response.status_code == 200
            assert response.content == WASM_HEADER


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        ((), "no SPIFFE ID"),
        (("https://example.com/team-a",), "no SPIFFE ID"),
        (("spiffe://evil.example/ns/team-a/sa/envoy",), "trust domain 'evil.example'"),
        (
            (
                "spiffe://cluster.local/ns/team-a/sa/envoy",
                "spiffe://cluster.local/ns/team-b/sa/envoy",
            ),
            "2 URI SANs",
        ),
        (
            ("spiffe://cluster.local/ns/team-a/sa/envoy", "https://example.com/x"),
            "2 URI SANs",
        ),
        (("spiffe://cluster.local/ns/team-a/sa/envoy\n",), "does not name a namespace"),
    ],
)
async def test_module_downloads_apply_the_xds_identity_rules(tmp_path, pki, uris, reason):
    """A certificate the xDS port would refuse (no SPIFFE ID, foreign trust domain, more than
    one URI SAN, a malformed ID) gets no module, not even a root-namespace one."""
    ca, tls, _ = pki
    plugins: dict[ObjectKey, PluginStatus] = {}
    policy = IdentityPolicy(frozenset({"cluster.local"}))
    async with admin(tmp_path, plugins, tls=tls, identity=policy) as (port, store):
        team_a = await store.put(WASM_HEADER)
        shared = await store.put(WASM_HEADER + b"\x00")
        plugins[ObjectKey("team-a", "p")] = ready("team-a", "p", team_a)
        plugins[ObjectKey("istio-system", "g")] = ready("istio-system", "g", shared)
        base = f"https://127.0.0.1:{port}/modules/sha256/"
        context = client_context(ca, tmp_path, "hostile", *uris) if uris else None
        if context is None:
            cert, key = client_cert(ca).write(tmp_path, "no-san")
            context = ssl.create_default_context()
            ca.configure_trust(context)
            context.load_cert_chain(cert, key)
        async with httpx.AsyncClient(verify=context, timeout=10) as client:
            for digest in (team_a.digest, shared.digest):
                response = await client.get(base + digest)
                print(f"{uris}: {response.status_code} {response.text.strip()}")
                assert response.status_code == 403
                assert reason in response.text


async def test_probes_and_metrics_need_no_client_certificate(tmp_path, pki):
    """With an admin client CA, /healthz, /readyz and /metrics answer a client without a
    certificate; a certificate from another CA still fails the handshake."""
    _, tls, anonymous = pki
    stranger = trustme.CA()
    foreign = ssl.create_default_context(cafile=tls.client_ca)
    stranger.issue_cert("stranger").configure_cert(foreign)
    async with (
        admin(tmp_path, {}, host="0.0.0.0", tls=tls) as (port, _),
        httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=anonymous, timeout=10
        ) as client,
        httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}", verify=foreign, timeout=10
        ) as impostor,
    ):
        for path in OPEN_PAGES:
            assert (await client.get(path)).status_code == 200, path
        for path in DEBUG_PAGES:
            assert (await client.get(path)).status_code == 403, path
        with pytest.raises(httpx.TransportError):
            await impostor.get("/healthz")


async def test_debug_pages_are_refused_on_a_public_bind_unless_opened(tmp_path):
    """Bound to 0.0.0.0: debug pages are a 403 naming the ways to open them, 200 with
    --debug-public; probes and metrics stay open."""
    async with (
        admin(tmp_path, {}, host="0.0.0.0") as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for path in DEBUG_PAGES:
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "--admin-client-ca" in response.text
            assert "--debug-identity" in response.text
            assert "--debug-public" in response.text
        for path in OPEN_PAGES:
            assert (await client.get(path)).status_code == 200, path
    async with (
        admin(tmp_path, {}, host="0.0.0.0", debug_public=True) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
    ):
        for path in (*DEBUG_PAGES, *OPEN_PAGES):
            assert (await client.get(path)).status_code == 200, path


async def test_debug_pages_need_a_certificate_a_debug_identity_names(tmp_path, pki):
    """With an admin client CA on 0.0.0.0, a proxy's certificate from the CA reads no debug
    page (the 403 names --debug-identity); one that --debug-identity names (by ID or by
    namespace pattern) reads them all; without --debug-identity nobody does."""
    ca, tls, anonymous = pki
    proxy = client_context(ca, tmp_path, "team-a")
    ops = client_context(ca, tmp_path, "ops")
    oncall = client_context(ca, tmp_path, "sre", "spiffe://cluster.local/ns/sre/sa/oncall")
    for identities in (
        (),
        ("spiffe://cluster.local/ns/ops/sa/envoy", "spiffe://cluster.local/ns/sre/*"),
    ):
        async with admin(tmp_path, {}, host="0.0.0.0", tls=tls, debug_identities=identities) as (
            port,
            _,
        ):
            base = f"https://127.0.0.1:{port}"
            for context, allowed in (
                (proxy, False),
                (ops, True),
                (oncall, True),
                (anonymous, False),
            ):
                async with httpx.AsyncClient(base_url=base, verify=context, timeout=10) as client:
                    for path in DEBUG_PAGES:
                        response = await client.get(path)
                        expected = 200 if allowed and identities else 403
                        assert response.status_code == expected, (identities, path)
                        if expected == 403:
                            assert "--debug-identity" in response.text or (
                                "--admin-client-ca" in response.text
                            )
                    for path in OPEN_PAGES:
                        assert (await client.get(path)).status_code == 200, path
            async with httpx.AsyncClient(base_url=base, verify=proxy, timeout=10) as client:
                refused = (await client.get("/debug/config_dump?namespace=team-b")).text
                print(f"team-a proxy certificate, --debug-identity {identities}: {refused.strip()}")
                assert "--debug-identity" in refused


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


def pending(namespace: str, name: str, sha256: str = "") -> PluginStatus:
    """A plugin in ``namespace`` whose first fetch (pinned to ``sha256`` if given) is under way."""
    spec = {"sha256": sha256} if sha256 else {}
    plugin = make_plugin(name, namespace=namespace, **spec)
    return PluginStatus(plugin, module_request(plugin), Pending(), None)


async def test_refused_digests_look_like_unknown_ones_and_are_never_held(
    tmp_path, pki, monkeypatch: pytest.MonkeyPatch
):
    """For a team-a certificate, team-b's cached module, a cached unused one, a made-up digest
    and one team-b is still fetching are the same 404 text, at once (no wait on team-b's
    fetches); a digest team-a's own fetch brings is waited for."""
    # Any wait that should not happen would outlast the client's timeout.
    monkeypatch.setattr(downloads, "_MODULE_WAIT", 3600.0)
    monkeypatch.setattr(downloads, "_UNKNOWN_WAIT", 3600.0)
    ca, tls, _ = pki
    plugins: dict[ObjectKey, PluginStatus] = {}
    coming = "ab" * 32
    async with admin(tmp_path, plugins, tls=tls) as (port, store):
        team_b = await store.put(WASM_HEADER)
        unused = await store.put(WASM_HEADER + b"\x01")
        plugins[ObjectKey("team-b", "used")] = ready("team-b", "used", team_b)
        plugins[ObjectKey("team-b", "pinned")] = pending("team-b", "pinned", coming)
        plugins[ObjectKey("team-b", "open")] = pending("team-b", "open")  # any digest may come
        plugins[ObjectKey("team-a", "mine")] = pending("team-a", "mine", "cd" * 32)
        base = f"https://127.0.0.1:{port}/modules/sha256/"
        async with httpx.AsyncClient(
            verify=client_context(ca, tmp_path, "team-a"), timeout=5
        ) as client:
            texts = set()
            for digest in (team_b.digest, unused.digest, "0" * 64, coming):
                started = time.monotonic()
                response = await client.get(base + digest)
                elapsed = time.monotonic() - started
                print(f"team-a asks {digest[:8]}: {response.status_code} in {elapsed:.3f} s")
                assert response.status_code == 404
                texts.add(response.text.replace(digest, "<digest>"))
            assert len(texts) == 1, texts
            own = asyncio.create_task(client.get(base + "cd" * 32))
            await asyncio.sleep(0.2)
            assert not own.done()  # its own namespace's fetch is waited for
            own.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await own


async def test_waiters_for_a_known_digest_are_capped(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Past _KNOWN_WAITERS downloads waiting for one fetch, the next is a 503 at once."""
    monkeypatch.setattr(downloads, "_MODULE_WAIT", 3600.0)
    monkeypatch.setattr(downloads, "_KNOWN_WAITERS", 2)
    coming = "ab" * 32
    plugins = {ObjectKey("a", "p"): pending("a", "p", coming)}
    async with admin(tmp_path, plugins) as (port, _), httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{port}/modules/sha256/{coming}"
        waiting = [asyncio.create_task(client.get(url)) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert not any(task.done() for task in waiting)
        response = await client.get(url)
        print(f"third waiter: {response.status_code} {response.text.strip()}")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
