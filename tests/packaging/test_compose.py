"""docker-compose.yml, checked offline (no Docker engine here).

Debian's docker-compose (v1) validates the file against the Compose
specification; the commands in it are parsed by wasmxds's real parsers, and
Envoy validates the bootstrap the compose Envoy runs with the same flags.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.harness.envoy import envoy_binary
from scripts.envoy_configs import COMPOSE_BOOTSTRAP
from scripts.envoy_configs import OUT as ENVOY_CONFIGS
from tests.packaging.helpers import COMPOSE_FILE, REPO, parse_cli, tool
from wasmxds.cli import main
from wasmxds.cli.serve import settings_from_args


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def _binds(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (a repository path for bind mounts, else the volume name)."""
    binds = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        binds[target] = str((REPO / source).resolve()) if source.startswith(".") else source
    return binds


def _host_path(service: dict[str, Any], path: str) -> Path:
    """Where a path inside a container comes from in the repository (bind mounts only)."""
    for target, source in _binds(service).items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return Path(source) / path[len(target) :].lstrip("/")
    raise AssertionError(f"{path} is not bind-mounted from the repository")


def test_compose_file_is_valid():
    """`docker-compose config` (Debian's docker-compose) accepts docker-compose.yml."""
    compose = tool("docker-compose", "apt-get install docker-compose (.ci/run installs it)")
    result = subprocess.run(
        [compose, "--file", str(COMPOSE_FILE), "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_compose_wasmxds_commands_are_accepted(capsys: pytest.CaptureFixture[str]):
    """The push job's and wasmxds's commands parse, and wasmxds serves the plugin the job pushes."""
    services = _services()
    push_service, serve_service = services["push-module"], services["wasmxds"]
    assert push_service["command"][0] == "push"
    push = parse_cli("push", push_service["command"][1:])
    assert _host_path(push_service, str(push.file)).is_file()
    assert push.ref == "oci://registry:5000/header-filter:v1"

    assert serve_service["command"][0] == "serve"
    serve = parse_cli("serve", serve_service["command"][1:])
    (config_dir,) = serve.config_dir
    plugins = _host_path(serve_service, str(config_dir))
    assert plugins == REPO / "compose" / "plugins"
    assert main(["validate", str(plugins)]) == 0, capsys.readouterr().out
    serve.config_dir = [plugins]
    settings_from_args(serve)  # the flags make sense together, not only one by one
    (plugin,) = yaml.safe_load_all((plugins / "header-filter.yaml").read_text())
    assert plugin["spec"]["url"] == push.ref
    assert serve.insecure_registry == push.insecure_registry == ["registry:5000"]
    assert serve_service["depends_on"]["push-module"] == {
        "condition": "service_completed_successfully"
    }


@pytest.mark.envoy
def test_compose_envoy_runs_the_generated_bootstrap():
    """The compose Envoy's bootstrap and flags pass Envoy's validation; it shares the cache."""
    services = _services()
    envoy, wasmxds = services["envoy"], services["wasmxds"]
    command = envoy["command"]
    assert command[:2] == ["envoy", "--config-path"]
    config = _host_path(envoy, command[2])
    assert config == ENVOY_CONFIGS / COMPOSE_BOOTSTRAP

    serve = parse_cli("serve", wasmxds["command"][1:])
    # Module delivery `local`: the paths wasmxds serves are the paths Envoy opens.
    assert serve.module_delivery == "local"
    assert serve.proxy_cache_dir is None
    cache = str(serve.cache_dir)
    assert _binds(envoy)[cache] == _binds(wasmxds)[cache] == "modules"
    assert f"modules:{cache}:ro" in envoy["volumes"]

    bootstrap = yaml.safe_load(config.read_text())
    addresses = {
        cluster["name"]: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
            "address"
        ]["socket_address"]
        for cluster in bootstrap["static_resources"]["clusters"]
    }
    xds_port = int(serve.xds_address.rpartition(":")[2])
    assert addresses["wasmxds"] == {"address": "wasmxds", "port_value": xds_port}
    assert addresses["upstream"]["address"] == "httpbin"
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert envoy["ports"] == [f"127.0.0.1:{listener['port_value']}:{listener['port_value']}"]

    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(config), *command[3:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
