"""Every way Envoy can talk to wasmxds: SotW and delta ADS, the standalone ECDS service, mTLS."""

from __future__ import annotations

import asyncio
import copy
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
import yaml

from e2e.harness.bootstrap import CONFIGS, ecds_bootstrap, load_bootstrap
from e2e.harness.envoy import Envoy, envoy_binary, running_envoy
from e2e.harness.listeners import (
    cluster_template,
    free_port,
    http_listener_template,
    listeners_bootstrap,
)
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_listener_mode import until
from tests.xds.certs import client_cert

pytestmark = pytest.mark.envoy


@asynccontextmanager
async def serving(
    tmp_path: Path, files: dict[str, str], *args: str
) -> AsyncIterator[tuple[WasmxdsProcess, int, Path]]:
    config_dir = tmp_path / "config"
    config_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (config_dir / name).write_text(text)
    extra = ("--fetch-retry-max", "500ms", *args)
    async with running_wasmxds([config_dir], tmp_path / "cache", extra_args=extra) as process:
        yield process, await process.port_of("xds.listening"), config_dir


async def header_value(client: httpx.AsyncClient, port: int) -> str | None:
    response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200, response.status_code
    value: str = response.headers.get(HEADER, "<absent>")
    return value


async def _follows_edits(envoy: Envoy, config_dir: Path, url: str) -> None:
    """Add, edit and delete a plugin and see each step in Envoy's responses."""
    port = await envoy.wait_listener_port("ingress")
    plugin = config_dir / "plugin.yaml"
    async with httpx.AsyncClient(timeout=5) as client:
        check: Callable[[str], Callable[[], Any]] = lambda want: lambda: _is(client, port, want)  # noqa: E731
        plugin.write_text(
            plugin_yaml("header-filter", url, {"response_headers": {HEADER: "added"}})
        )
        await until(check("added"), what="plugin added")
        plugin.write_text(
            plugin_yaml("header-filter", url, {"response_headers": {HEADER: "edited"}})
        )
        await until(check("edited"), what="plugin edited")
        plugin.unlink()
        await until(check("<absent>"), what="plugin deleted")


async def _is(client: httpx.AsyncClient, port: int, want: str) -> bool:
    return await header_value(client, port) == want


@pytest.mark.parametrize("api", ["sotw", "delta"])
async def test_ads_add_edit_delete(tmp_path, upstream, modules, api):
    """Over SotW and delta ADS a plugin is added, edited and deleted live."""
    async with serving(tmp_path, {}) as (_, xds_port, config_dir):
        bootstrap = ecds_bootstrap(
            xds_port=xds_port, upstream_port=upstream.port, name=f"ecds-{api}.yaml"
        )
        async with running_envoy(bootstrap, tmp_path / "envoy") as envoy:
            await envoy.wait_live()
            await _follows_edits(envoy, config_dir, modules.url("header-filter.wasm"))


def _ecds_service_bootstrap(xds_port: int, upstream_port: int, api_type: str) -> dict[str, Any]:
    """The ECDS bootstrap with the filter fetched from the ECDS service, not ADS."""
    config = ecds_bootstrap(
        xds_port=xds_port, upstream_port=upstream_port, initial_fetch_timeout="1s"
    )
    del config["dynamic_resources"]
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    source = hcm["http_filters"][0]["config_discovery"]["config_source"]
    source.pop("ads")
    source["api_config_source"] = {
        "api_type": api_type,
        "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "wasmxds"}}],
    }
    return config


@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"])
async def test_standalone_ecds_service(tmp_path, upstream, modules, api_type):
    """A config_source pointing straight at the ECDS service (SotW and delta) works too."""
    async with serving(tmp_path, {}) as (wasmxds, xds_port, config_dir):
        bootstrap = _ecds_service_bootstrap(xds_port, upstream.port, api_type)
        async with running_envoy(bootstrap, tmp_path / "envoy") as envoy:
            await envoy.wait_live()
            await _follows_edits(envoy, config_dir, modules.url("header-filter.wasm"))
        connected = await wasmxds.wait_event("xds.connected")
        assert connected["service"] == "ecds"


def _tls_material(tmp_path: Path) -> tuple[trustme.CA, dict[str, Path]]:
    ca = trustme.CA()
    server = ca.issue_cert("wasmxds", "127.0.0.1", "localhost")
    # An Istio-style workload certificate: with --client-ca the namespace comes from it.
    client = client_cert(ca, "spiffe://cluster.local/ns/default/sa/envoy-demo")
    paths = {
        name: tmp_path / f"{name}.pem"
        for name in ("ca", "server", "server-key", "client", "client-key")
    }
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["server"])
    server.private_key_pem.write_to_path(paths["server-key"])
    client.write(tmp_path, "client")
    return ca, paths


def _point_tls(
    config: dict[str, Any], paths: dict[str, Path], *, with_client_cert: bool = True
) -> dict[str, Any]:
    """Swap the shipped bootstrap's /etc/wasmxds/tls paths for the test's files."""
    config = copy.deepcopy(config)
    cluster = config["static_resources"]["clusters"][0]
    common = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    common["validation_context"]["trusted_ca"]["filename"] = str(paths["ca"])
    if with_client_cert:
        common["tls_certificates"][0]["certificate_chain"]["filename"] = str(paths["client"])
        common["tls_certificates"][0]["private_key"]["filename"] = str(paths["client-key"])
    else:
        del common["tls_certificates"]
    return config


async def test_mutual_tls_end_to_end(tmp_path, upstream, modules):
    """Envoy with a client certificate gets its listeners over mTLS; one without gets nothing."""
    _, paths = _tls_material(tmp_path)
    port = free_port()
    url = modules.url("header-filter.wasm")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.yaml").write_text(
        yaml.safe_dump_all(
            [
                http_listener_template("main", port),
                cluster_template("upstream", upstream.host, upstream.port),
            ]
        )
    )
    files = {
        "p.yaml": plugin_yaml("header-filter", url, {"response_headers": {HEADER: "over-mtls"}})
    }
    tls_args = (
        "--listeners", str(templates),
        "--tls-cert", str(paths["server"]), "--tls-key", str(paths["server-key"]),
        "--client-ca", str(paths["ca"]),
    )  # fmt: skip
    async with (
        serving(tmp_path, files, *tls_args) as (wasmxds, xds_port, _),
        AsyncExitStack() as stack,
    ):
        listening = await wasmxds.wait_event("xds.listening")
        assert listening["tls"] == "mutual"
        good = _point_tls(
            listeners_bootstrap(xds_port=xds_port, node_id="trusted", mtls=True), paths
        )
        await stack.enter_async_context(running_envoy(good, tmp_path / "trusted"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        assert await until(lambda: _is(client, port, "over-mtls"), what="filter over mTLS")
        connected = await wasmxds.wait_event("xds.connected", lambda e: e["node"] == "trusted")
        assert connected["flavour"] == "sotw"

        bad = _point_tls(
            listeners_bootstrap(xds_port=xds_port, node_id="untrusted", mtls=True),
            paths,
            with_client_cert=False,
        )
        rejected = await stack.enter_async_context(running_envoy(bad, tmp_path / "untrusted"))
        await asyncio.sleep(2.0)  # several connection attempts
        stats = await rejected.stats("control_plane.connected_state")
        assert stats.get("control_plane.connected_state") == 0
        assert not [
            e
            for e in wasmxds.events
            if e.get("event") == "xds.connected" and e["node"] == "untrusted"
        ]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_bootstraps_are_valid_envoy_config(tmp_path, name):
    """Every shipped bootstrap passes Envoy's validation (TLS paths pointed at real files)."""
    config = load_bootstrap(name)
    if name.endswith("-mtls.yaml"):
        _, paths = _tls_material(tmp_path)
        config = _point_tls(config, paths)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
