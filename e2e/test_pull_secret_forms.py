"""Every ``imagePullSecret`` spelling istiod accepts pulls from a real htpasswd registry.

istio/istio's TestToSecretName: ``name``, ``ns/name``, ``kubernetes://name`` and
``kubernetes://ns/name`` all mean the Secret ``name`` in the plugin's own
namespace; a namespace in the value is ignored. Real ``wasmxds serve`` (with an
empty ``DOCKER_CONFIG``, so only the pull secret can open the registry), a real
``docker-registry`` with htpasswd and a real Envoy: one plugin per spelling, each
adding its own response header. A Secret of the same name in the other
namespace holds a wrong password, so a plugin that read it would fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from e2e.harness.bootstrap import ecds_bootstrap
from e2e.harness.envoy import running_envoy
from e2e.harness.images import OrasPusher, artifact_image
from e2e.harness.registry import running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import running_wasmxds
from e2e.test_core import plugin_yaml
from e2e.test_module_access import PASSWORD, USER, debug_plugins, secret_yaml

pytestmark = pytest.mark.envoy

ARGS = ("--fetch-retry-max", "500ms", "--insecure-registry", "127.0.0.1")
FORMS = {
    "plain": "regcred",
    "ns": "team/regcred",
    "scheme": "kubernetes://regcred",
    "scheme-ns": "kubernetes://team/regcred",
    "scheme-other-ns": "kubernetes://other/regcred",
    "other-ns": "other/regcred",
}


@pytest.fixture(autouse=True)
def _empty_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The server has no credentials of its own: only a pull secret can open the registry.
    directory = tmp_path / "docker-config"
    directory.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))


async def test_every_istio_pull_secret_form_pulls(
    tmp_path: Path, upstream: EchoUpstream, header_filter_wasm: bytes
) -> None:
    """Each of istiod's imagePullSecret forms pulls with the plugin namespace's Secret."""
    async with running_registry(tmp_path / "registry", htpasswd={USER: PASSWORD}) as registry:
        image = artifact_image(header_filter_wasm)
        pusher = OrasPusher(registry.host, basic=(USER, PASSWORD))
        await asyncio.to_thread(pusher.push, "team/filter", "v1", image)
        config = tmp_path / "config"
        config.mkdir()
        documents = [
            plugin_yaml(
                name,
                registry.url("team/filter"),
                {"response_headers": {f"x-form-{name}": value}},
                namespace="team",
                extra=f"imagePullSecret: {value}\n",
            )
            for name, value in FORMS.items()
        ]
        documents.append(secret_yaml("team", "regcred", registry.host, PASSWORD))
        documents.append(secret_yaml("other", "regcred", registry.host, "a-wrong-password"))
        (config / "plugins.yaml").write_text("---\n".join(documents))
        async with running_wasmxds([config], tmp_path / "cache", extra_args=ARGS) as wasmxds:
            bootstrap = ecds_bootstrap(
                xds_port=await wasmxds.port_of("xds.listening"),
                upstream_port=upstream.port,
                filters=tuple(f"team.{name}" for name in FORMS),
                node_id="envoy-team",
                namespace="team",
            )
            async with (
                running_envoy(bootstrap, tmp_path / "envoy") as envoy,
                httpx.AsyncClient(timeout=5.0) as client,
            ):
                await envoy.wait_live()
                port = await envoy.wait_listener_port("ingress")
                wanted = {f"x-form-{name}": value for name, value in FORMS.items()}
                loop = asyncio.get_running_loop()
                started = loop.time()
                seen: dict[str, str] = {}
                try:
                    async with asyncio.timeout(30.0):
                        while True:
                            response = await client.get(f"http://127.0.0.1:{port}/anything")
                            seen = {k: response.headers.get(k, "") for k in wanted}
                            if response.status_code == 200 and seen == wanted:
                                break
                            await asyncio.sleep(0.1)
                except TimeoutError:
                    states = {
                        name: entry.get("module")
                        for name, entry in (await debug_plugins(wasmxds)).items()
                    }
                    raise AssertionError(f"not all forms served: {seen}; {states}") from None
                print(f"all {len(FORMS)} forms served after {loop.time() - started:.2f} s")
                plugins = await debug_plugins(wasmxds)
                for name in FORMS:
                    entry = plugins[f"team.{name}"]
                    print(f"{FORMS[name]}: served={entry['served']}")
                    assert entry["module"]["state"] != "failed", entry["module"]
                logs = "\n".join(wasmxds.raw)
                assert PASSWORD not in logs
                assert "a-wrong-password" not in logs
        # The registry refused anonymous pulls; every blob came with team/regcred's password.
        assert registry.log_text().count("GET /v2/team/filter/blobs/") >= 1
