"""Operability with a real Envoy: admin pages, status/plugins CLI, NACKs, delivery modes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import Envoy, running_envoy
from e2e.harness.listeners import free_port
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import WasmxdsProcess, run_cli, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until
from tests.xds.certs import client_cert

pytestmark = pytest.mark.envoy


@asynccontextmanager
async def running(
    tmp_path: Path,
    upstream: EchoUpstream,
    files: dict[str, str],
    *,
    args: Sequence[str] = (),
    bootstrap_extra: dict[str, Any] | None = None,
    admin_port: int | None = None,
) -> AsyncIterator[tuple[WasmxdsProcess, Envoy, httpx.AsyncClient, str]]:
    """wasmxds (admin on a known port) + one Envoy; yields them, a client and the admin URL."""
    config = tmp_path / "config"
    config.mkdir()
    for name, text in files.items():
        (config / name).write_text(text)
    admin_port = admin_port or free_port()
    extra = ("--admin-address", f"127.0.0.1:{admin_port}", "--fetch-retry-max", "500ms", *args)
    async with AsyncExitStack() as stack:
        wasmxds = await stack.enter_async_context(
            running_wasmxds([config], tmp_path / "cache", extra_args=extra)
        )
        xds_port = await wasmxds.port_of("xds.listening")
        bootstrap = ecds_bootstrap(xds_port=xds_port, upstream_port=upstream.port, node_id="edge-1")
        if bootstrap_extra:
            bootstrap["static_resources"]["clusters"].append(bootstrap_extra)
        envoy = await stack.enter_async_context(running_envoy(bootstrap, tmp_path / "envoy"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        yield wasmxds, envoy, client, f"127.0.0.1:{admin_port}"


async def admin_json(client: httpx.AsyncClient, admin: str, path: str) -> Any:
    response = await client.get(f"http://{admin}{path}")
    response.raise_for_status()
    return response.json()


async def ecds_state(client: httpx.AsyncClient, admin: str, want: str) -> dict[str, Any] | None:
    proxies = await admin_json(client, admin, "/debug/syncz")
    if proxies and "ECDS" in proxies[0]["types"] and proxies[0]["types"]["ECDS"]["state"] == want:
        state: dict[str, Any] = proxies[0]["types"]["ECDS"]
        return state
    return None


async def test_synced_proxy_and_ready_plugin_in_every_view(tmp_path, upstream, modules):
    """After Envoy ACKs, syncz, status, plugins, config_dump, readyz and metrics all agree."""
    url = modules.url("header-filter.wasm")
    files = {"p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "ok"}})}
    async with running(tmp_path, upstream, files) as (_, envoy, client, admin):
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: _header(client, port, "ok"), what="filter running")
        state = await until(lambda: ecds_state(client, admin, "SYNCED"), what="SYNCED")
        assert state["resources"].keys() == {"default.header-filter"}
        assert state["version_acked"] == state["version_sent"]

        code, out, _ = await run_cli("status", "--admin-address", admin)
        assert code == 0
        header, row = out.splitlines()[:2]
        assert header.split()[:7] == ["NODE", "NAMESPACE", "IDENTITY", "XDS", "CDS", "LDS", "ECDS"]
        # Plaintext xDS: the namespace is the proxy's claim, not proven by a certificate.
        assert row.split()[:6] == ["edge-1", "default", "metadata", "sotw/ads", "-", "-"]
        assert "SYNCED (1)" in row

        code, out, _ = await run_cli("plugins", "--admin-address", admin)
        assert code == 0
        assert "default/header-filter" in out
        assert " ready " in out
        assert " filter " in out

        plugins = await admin_json(client, admin, "/debug/plugins")
        assert plugins[0]["proxies"] == ["edge-1"]
        assert (
            plugins[0]["module"]["digest"]
            == hashlib.sha256(modules.files["header-filter.wasm"]).hexdigest()
        )
        dump = await admin_json(client, admin, "/debug/config_dump?node=edge-1")
        (resource,) = dump["resources"]["ECDS"]
        assert resource["name"] == "default.header-filter"
        assert json.dumps(resource["resource"]).count("x-wasmxds-demo") == 1
        ready = await client.get(f"http://{admin}/readyz")
        assert ready.status_code == 200
        assert ready.json()["ready"] is True

        metrics = (await client.get(f"http://{admin}/metrics")).text
        assert 'wasmxds_xds_connected_proxies{flavour="sotw",service="ads"} 1.0' in metrics
        assert "wasmxds_xds_pushes_total{" in metrics
        assert 'wasmxds_xds_push_latency_seconds_count{stage="send_to_ack"}' in metrics
        assert "wasmxds_debounce_pushes_total" in metrics
        assert 'wasmxds_module_fetches_total{result="success",scheme="http"} 1.0' in metrics
        assert 'wasmxds_module_cache_lookups_total{result="miss"} 1.0' in metrics
        assert "wasmxds_module_cache_entries 1.0" in metrics
        # The heap freezer ran at start: what start-up made is out of the collector's walk.
        frozen = re.search(r"^wasmxds_heap_frozen_objects (\S+)$", metrics, re.MULTILINE)
        assert frozen is not None
        assert float(frozen.group(1)) > 10_000
        assert 'wasmxds_heap_freezes{kind="collect"} 1.0' in metrics
        assert 'wasmxds_source_problems{severity="error"} 0.0' in metrics


async def _header(client: httpx.AsyncClient, port: int, want: str) -> bool:
    response = await client.get(f"http://127.0.0.1:{port}/")
    return bool(response.headers.get(HEADER) == want)


async def test_nack_of_a_corrupt_module_is_reported(tmp_path, upstream, modules):
    """A module Envoy cannot compile (sha256 matching) shows as NACKED with Envoy's message."""
    corrupt = b"\0asm\x01\x00\x00\x00" + b"\x01\xff\xff\xff\xff\x0fthis is not a type section"
    modules.files["corrupt.wasm"] = corrupt
    digest = hashlib.sha256(corrupt).hexdigest()
    files = {
        "p.yaml": plugin_yaml(
            "header-filter", modules.url("corrupt.wasm"), extra=f"sha256: '{digest}'\n"
        )
    }
    # --preflight off: the check would refuse the module before Envoy could NACK it.
    args = ("--preflight", "off")
    async with running(tmp_path, upstream, files, args=args) as (wasmxds, _, client, admin):
        state = await until(lambda: ecds_state(client, admin, "NACKED"), what="NACKED")
        assert state["nacks"] >= 1
        assert "Wasm" in state["last_nack"] or "wasm" in state["last_nack"]
        await wasmxds.wait_event("xds.nack")
        code, out, _ = await run_cli("status", "--admin-address", admin)
        assert code == 0
        assert "NACKED" in out
        assert "edge-1 rejected ECDS:" in out
        metrics = (await client.get(f"http://{admin}/metrics")).text
        assert 'resource="default.header-filter"' in metrics
        assert "wasmxds_xds_nacks_total" in metrics


async def test_failed_fetch_shows_the_standin_and_why(tmp_path, upstream, modules):
    """A module that cannot be fetched is listed with its deny-all stand-in and the error."""
    files = {"p.yaml": plugin_yaml("header-filter", modules.url("missing.wasm"))}
    async with running(tmp_path, upstream, files) as (_, _, client, admin):

        async def failed() -> list[Any] | None:
            plugins: list[Any] = await admin_json(client, admin, "/debug/plugins")
            return plugins if plugins and plugins[0]["module"]["state"] == "failed" else None

        (plugin,) = await until(failed, what="fetch failure reported")
        assert plugin["served"] == "stand-in"
        assert plugin["standin"]["kind"] == "deny-all"
        assert "404" in plugin["standin"]["reason"]
        assert plugin["module"]["attempts"] >= 1
        code, out, _ = await run_cli("plugins", "--admin-address", admin)
        assert code == 0
        assert "deny-all" in out
        assert "404" in out


async def test_remote_delivery_envoy_downloads_from_wasmxds(tmp_path, upstream, modules):
    """With remote delivery Envoy fetches /modules/sha256/<hex> from wasmxds and runs it."""
    admin_port = free_port()
    modules_cluster = yaml.safe_load(
        (
            await run_cli(
                "bootstrap",
                "--node-id",
                "x",
                "--filter",
                "a.b",
                "--modules-address",
                f"127.0.0.1:{admin_port}",
            )
        )[1]
    )["static_resources"]["clusters"][-1]
    assert modules_cluster["name"] == "wasmxds_modules"
    url = modules.url("header-filter.wasm")
    files = {"p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "remote"}})}
    args = ("--module-delivery", "remote", "--module-base-url", f"http://127.0.0.1:{admin_port}")
    async with running(
        tmp_path, upstream, files, args=args, bootstrap_extra=modules_cluster, admin_port=admin_port
    ) as (
        _, envoy, client, admin,
    ):  # fmt: skip
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: _header(client, port, "remote"), what="remotely delivered filter")
        dump = await admin_json(client, admin, "/debug/config_dump?node=edge-1")
        code = json.dumps(dump["resources"]["ECDS"][0]["resource"])
        assert f"http://127.0.0.1:{admin_port}/modules/sha256/" in code
        stats = await envoy.stats("cluster.wasmxds_modules.upstream_rq_200")
        assert stats["cluster.wasmxds_modules.upstream_rq_200"] >= 1


async def test_remote_delivery_over_admin_mutual_tls(tmp_path, upstream, modules):
    """With admin mTLS, Envoy downloads its namespace's module through the wasmxds_modules
    cluster `wasmxds bootstrap --modules-tls-*` builds, presenting its SPIFFE certificate."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    tls = tmp_path / "tls"
    tls.mkdir()
    cert, key, ca_file = tls / "admin.pem", tls / "admin-key.pem", tls / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    envoy_cert, envoy_key = client_cert(ca, "spiffe://cluster.local/ns/default/sa/edge").write(
        tls, "envoy"
    )
    admin_port = free_port()
    code, out, err = await run_cli(
        "bootstrap", "--node-id", "x", "--filter", "a.b",
        "--modules-address", f"127.0.0.1:{admin_port}", "--modules-tls-ca", str(ca_file),
        "--modules-tls-cert", str(envoy_cert), "--modules-tls-key", str(envoy_key),
    )  # fmt: skip
    assert code == 0, err
    modules_cluster = yaml.safe_load(out)["static_resources"]["clusters"][-1]
    url = modules.url("header-filter.wasm")
    files = {"p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "mtls"}})}
    args = (
        *("--module-delivery", "remote", "--module-base-url", f"https://127.0.0.1:{admin_port}"),
        *("--admin-tls-cert", str(cert), "--admin-tls-key", str(key)),
        *("--admin-client-ca", str(ca_file)),
    )
    async with running(
        tmp_path, upstream, files, args=args, bootstrap_extra=modules_cluster, admin_port=admin_port
    ) as (
        _, envoy, client, _,
    ):  # fmt: skip
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: _header(client, port, "mtls"), what="module downloaded over mTLS")
        stats = await envoy.stats("cluster.wasmxds_modules.upstream_rq_200")
        assert stats["cluster.wasmxds_modules.upstream_rq_200"] >= 1


async def test_inline_delivery_runs_the_module(tmp_path, upstream, modules):
    """With --module-delivery inline the bytes travel in the resource and the filter runs."""
    url = modules.url("header-filter.wasm")
    files = {"p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "inline"}})}
    async with running(tmp_path, upstream, files, args=("--module-delivery", "inline")) as (
        _,
        envoy,
        client,
        admin,
    ):
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: _header(client, port, "inline"), what="inline filter")
        dump = await admin_json(client, admin, "/debug/config_dump?node=edge-1")
        assert "inline_bytes" in json.dumps(dump["resources"]["ECDS"][0]["resource"])


async def test_bootstrap_output_starts_an_envoy_that_gets_its_filter(tmp_path, upstream, modules):
    """`wasmxds bootstrap` output, unmodified, runs an Envoy that connects and gets its filter."""
    url = modules.url("header-filter.wasm")
    config = tmp_path / "config"
    config.mkdir()
    (config / "p.yaml").write_text(
        plugin_yaml(
            "header-filter", url, {"response_headers": {HEADER: "bootstrapped"}}, namespace="edge"
        )
    )
    async with running_wasmxds([config], tmp_path / "cache") as wasmxds:
        xds_port = await wasmxds.port_of("xds.listening")
        listen = free_port()
        code, out, err = await run_cli(
            "bootstrap", "--node-id", "gw-7", "--namespace", "edge", "--label", "app=gw",
            "--xds-address", f"127.0.0.1:{xds_port}", "--filter", "edge.header-filter",
            "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{upstream.port}",
        )  # fmt: skip
        assert code == 0, err
        async with (
            running_envoy(yaml.safe_load(out), tmp_path / "envoy"),
            httpx.AsyncClient(timeout=5) as client,
        ):
            await until(
                lambda: _header(client, listen, "bootstrapped"), what="filter via bootstrap"
            )
        connected = await wasmxds.wait_event("xds.connected")
        assert (connected["node"], connected["namespace"]) == ("gw-7", "edge")
