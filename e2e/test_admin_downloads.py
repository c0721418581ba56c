"""The real ``wasmxds serve``'s module download endpoint against hostile requests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import trustme
from aiohttp import web

from e2e.harness.listeners import free_port
from e2e.harness.modules import ModuleServer
from e2e.harness.wasmxds import run_cli, running_wasmxds
from e2e.test_core import plugin_yaml
from e2e.test_listener_mode import until
from tests.xds.certs import client_cert


async def raw_status(port: int, target: str) -> bytes:
    """The status code the admin port answers to a request line sent byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer.split(b" ", 2)[1]


async def test_hostile_module_downloads_are_404_at_once_and_log_no_traceback(
    tmp_path, modules: ModuleServer, header_filter_wasm: bytes
):
    """Malformed and unwanted digests are 404 without the 20 s wait; the log stays JSON lines."""
    config = tmp_path / "config"
    config.mkdir()
    (config / "p.yaml").write_text(plugin_yaml("header-filter", modules.url("header-filter.wasm")))
    admin_port = free_port()
    digest = hashlib.sha256(header_filter_wasm).hexdigest()
    base = f"http://127.0.0.1:{admin_port}"
    args = ("--admin-address", base[7:], "--module-delivery", "remote", "--module-base-url", base)
    async with (
        running_wasmxds([config], tmp_path / "cache", extra_args=args) as wasmxds,
        # The old wait (20 s) would outlast this client's timeout.
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):

        async def ready() -> Any:
            plugins = (await client.get("/debug/plugins")).json()
            return plugins and plugins[0]["module"]["state"] == "ready"

        await until(ready, what="plugin module fetched")
        served = await client.get(f"/modules/sha256/{digest}")
        assert served.status_code == 200
        assert served.content == header_filter_wasm
        for path in (f"{digest}%0A", digest.upper(), "0" * 64, "a" * 8000):
            started = time.perf_counter()
            response = await client.get(f"/modules/sha256/{path}")
            print(f"GET /modules/sha256/{path[:70]}: {response.status_code}", end=" ")
            print(f"in {time.perf_counter() - started:.3f} s")
            assert response.status_code == 404, path[:70]
        assert await raw_status(admin_port, "/modules/sha256/../../../etc/passwd") == b"404"
        assert await raw_status(admin_port, "/modules/sha256/" + "a" * 20000) == b"400"
        assert (await client.get("/healthz")).status_code == 200
    for line in wasmxds.raw:
        assert isinstance(json.loads(line), dict), line
    assert any(e.get("event") == "admin.bad_request" for e in wasmxds.events)


@contextlib.asynccontextmanager
async def gated_server(files: dict[str, bytes]) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A loopback HTTP server that holds every request until the event is set.

    Then it serves ``files`` by path and answers 404 to anything else (an OCI
    registry's API included, so an ``oci://`` pull from it fails).
    """
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await release.wait()
        data = files.get(request.path)
        if data is None:
            return web.Response(status=404, text="not here\n")
        return web.Response(body=data, content_type="application/wasm")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1]), release
    finally:
        release.set()
        await runner.cleanup()


async def test_only_a_known_coming_digest_waits_and_unknown_ones_are_capped(
    tmp_path, header_filter_wasm: bytes
):
    """During a pending OCI pull, unknown digests wait 5 s at most (64 at once, the rest get 404
    at once); a digest a pending http fetch pins waits and gets the bytes."""
    digest = hashlib.sha256(header_filter_wasm).hexdigest()
    async with gated_server({"/gated.wasm": header_filter_wasm}) as (port, release):
        config = tmp_path / "config"
        config.mkdir()
        pinned = plugin_yaml(
            "pinned", f"http://127.0.0.1:{port}/gated.wasm", extra=f"sha256: {digest}\n"
        )
        (config / "pinned.yaml").write_text(pinned)
        (config / "oci.yaml").write_text(plugin_yaml("oci", f"oci://127.0.0.1:{port}/f/g:v1"))
        admin_port = free_port()
        base = f"http://127.0.0.1:{admin_port}"
        args = (
            *("--admin-address", base[7:], "--module-delivery", "remote"),
            *("--module-base-url", base, "--insecure-registry", f"127.0.0.1:{port}"),
            *("--initial-fetch-wait", "200ms"),
        )
        async with (
            running_wasmxds([config], tmp_path / "cache", extra_args=args),
            httpx.AsyncClient(
                base_url=base, timeout=30, limits=httpx.Limits(max_connections=200)
            ) as client,
        ):

            async def first_push() -> Any:
                ready = (await client.get("/readyz")).json()["first_push"]
                states = {p["module"]["state"] for p in (await client.get("/debug/plugins")).json()}
                return ready and states == {"pending"}

            await until(first_push, what="first push with both modules still fetching")

            async def timed_get(path: str) -> tuple[httpx.Response, float]:
                started = time.perf_counter()
                response = await client.get(path)
                return response, time.perf_counter() - started

            known = asyncio.create_task(timed_get(f"/modules/sha256/{digest}"))
            unknown = await asyncio.gather(
                *(timed_get(f"/modules/sha256/{n:064x}") for n in range(1, 81))
            )
            times = sorted(elapsed for _, elapsed in unknown)
            at_once = sum(1 for elapsed in times if elapsed < 2.0)
            print(f"80 unknown digests during a pending OCI pull: {at_once} answered within 2 s,")
            print(
                f"  fastest {times[0]:.3f} s, median {times[40]:.3f} s, slowest {times[-1]:.3f} s"
            )
            assert {response.status_code for response, _ in unknown} == {404}
            assert times[-1] < 15.0  # the old hold was 20 s for every one of them
            assert not known.done()
            release.set()
            response, elapsed = await known
            print(
                f"pinned digest of a pending http fetch: {response.status_code} in {elapsed:.2f} s"
            )
            assert response.status_code == 200
            assert response.content == header_filter_wasm

            async def oci_failed() -> Any:
                plugins = (await client.get("/debug/plugins")).json()
                return any(p["module"]["state"] == "failed" for p in plugins)

            await until(oci_failed, what="the OCI pull failed")
            response, elapsed = await timed_get(f"/modules/sha256/{'a' * 64}")
            print(
                f"unknown digest once no pull is pending: {response.status_code} in {elapsed:.3f} s"
            )
            assert response.status_code == 404


async def test_admin_port_on_a_public_bind_guards_debug_pages_and_modules_by_namespace(
    tmp_path, modules: ModuleServer, header_filter_wasm: bytes
):
    """Real `wasmxds serve` on 0.0.0.0: debug pages 403 without the client CA, probes and
    metrics open; with admin mTLS a module goes only to a certificate that proves (one SPIFFE
    ID, a trusted domain) its plugin's namespace, refusals look like unknown digests, probes
    need no certificate, and only a --debug-identity certificate reads the debug pages."""
    config = tmp_path / "config"
    config.mkdir()
    url = modules.url("header-filter.wasm")
    (config / "p.yaml").write_text(plugin_yaml("header-filter", url, namespace="team-a"))
    digest = hashlib.sha256(header_filter_wasm).hexdigest()
    admin_port = free_port()
    plain = f"http://127.0.0.1:{admin_port}"
    args = (
        *("--admin-address", f"0.0.0.0:{admin_port}", "--module-delivery", "remote"),
        *("--module-base-url", plain),
    )
    async with (
        running_wasmxds([config], tmp_path / "cache", extra_args=args),
        httpx.AsyncClient(base_url=plain, timeout=10) as client,
    ):

        async def listening() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await until(listening, what="wasmxds ready on a public bind")
        for path in ("/debug/plugins", "/debug/syncz", "/debug/config_dump?namespace=team-a"):
            response = await client.get(path)
            assert response.status_code == 403, path
            assert "--debug-public" in response.text
        for path in ("/healthz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        code, _, err = await run_cli("plugins", "--admin-address", f"127.0.0.1:{admin_port}")
        print(f"`wasmxds plugins` on the public bind: {err.strip()}")
        assert code != 0
        assert "--admin-cert" in err
        assert "--debug-public" in err

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "admin.pem", tmp_path / "admin-key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    secure = f"https://127.0.0.1:{admin_port}"
    ops_id = "spiffe://cluster.local/ns/team-a/sa/ops"
    tls_args = (
        *("--admin-address", f"0.0.0.0:{admin_port}", "--module-delivery", "remote"),
        *("--module-base-url", secure, "--admin-tls-cert", str(cert)),
        *("--admin-tls-key", str(key), "--admin-client-ca", str(ca_file)),
        *("--trust-domain", "cluster.local", "--debug-identity", ops_id),
    )

    def holding(name: str, *uris: str) -> ssl.SSLContext:
        files = client_cert(ca, *uris).write(tmp_path, name)
        context = ssl.create_default_context(cafile=ca_file)
        context.load_cert_chain(*files)
        return context

    def as_namespace(namespace: str) -> ssl.SSLContext:
        return holding(namespace, f"spiffe://cluster.local/ns/{namespace}/sa/envoy")

    def connect(verify: ssl.SSLContext) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=secure, verify=verify, timeout=10)

    async with (
        running_wasmxds([config], tmp_path / "cache2", extra_args=tls_args),
        connect(holding("ops", ops_id)) as ops,
        connect(as_namespace("team-a")) as team_a,
        connect(as_namespace("team-b")) as team_b,
        connect(holding("evil", "spiffe://evil.example/ns/team-a/sa/envoy")) as foreign,
        connect(
            holding(
                "both",
                "spiffe://cluster.local/ns/team-a/sa/envoy",
                "spiffe://cluster.local/ns/team-b/sa/envoy",
            )
        ) as both,
        connect(ssl.create_default_context(cafile=ca_file)) as anonymous,
    ):

        async def ready() -> Any:
            plugins = (await ops.get("/debug/plugins")).json()
            return plugins and plugins[0]["module"]["state"] == "ready"

        await until(ready, what="plugin module fetched (debug page read by a --debug-identity)")
        served = await team_a.get(f"/modules/sha256/{digest}")
        assert served.status_code == 200
        assert served.content == header_filter_wasm

        # A proxy's certificate from the CA is not a debug identity: no other tenant's config.
        for path in ("/debug/config_dump?namespace=team-b", "/debug/plugins", "/debug/syncz"):
            refused = await team_a.get(path)
            assert refused.status_code == 403, path
            assert "--debug-identity" in refused.text
        print(f"team-a proxy certificate on the debug pages: {refused.text.strip()}")

        # Another namespace's module is the same 404, at once, as a digest nobody has.
        refused = await team_b.get(f"/modules/sha256/{digest}")
        unknown = await team_b.get(f"/modules/sha256/{'0' * 64}")
        print(f"team-b certificate: {refused.status_code} {refused.text.strip()}")
        assert refused.status_code == unknown.status_code == 404
        assert refused.text == unknown.text.replace("0" * 64, digest)

        # The xDS port's identity rules: a trusted domain, exactly one SPIFFE ID.
        for hostile, reason in ((foreign, "evil.example"), (both, "2 URI SANs")):
            refused = await hostile.get(f"/modules/sha256/{digest}")
            print(f"{reason}: {refused.status_code} {refused.text.strip()}")
            assert refused.status_code == 403
            assert reason in refused.text

        # No certificate: probes and metrics answer, modules and debug pages ask for one.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await anonymous.get(path)).status_code == 200, path
        refused = await anonymous.get(f"/modules/sha256/{digest}")
        assert refused.status_code == 403
        assert "--admin-client-ca" in refused.text

        address = ("--admin-address", f"127.0.0.1:{admin_port}")
        ops_files = (tmp_path / "ops.pem", tmp_path / "ops-key.pem")
        code, out, err = await run_cli(
            "plugins",
            *address,
            *("--admin-ca", str(ca_file), "--admin-cert", str(ops_files[0])),
            *("--admin-key", str(ops_files[1])),
        )
        assert code == 0, err
        assert "team-a/header-filter" in out
        code, _, err = await run_cli(
            "plugins",
            *address,
            *("--admin-ca", str(ca_file), "--admin-cert", str(tmp_path / "team-a.pem")),
            *("--admin-key", str(tmp_path / "team-a-key.pem")),
        )
        print(f"`wasmxds plugins` with a proxy certificate: {err.strip()}")
        assert code != 0
        assert "--debug-identity" in err
        code, _, err = await run_cli("status", *address)
        print(f"`wasmxds status` in plain HTTP to the TLS port: {err.strip()}")
        assert code != 0
        assert "--admin-ca" in err
        code, _, err = await run_cli("status", *address, "--admin-ca", str(ca_file))
        print(f"`wasmxds status` without a client certificate: {err.strip()}")
        assert code != 0
        assert "--admin-cert" in err
