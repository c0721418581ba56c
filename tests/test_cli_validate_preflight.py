"""``wasmxds validate --fetch`` runs the pre-flight check ``serve`` runs on every module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.modules.wat import EMPTY, proxy_module
from tests.test_cli_validate import plugin, run_validate
from tests.test_cli_validate_fetch import WASM, ModuleHost


@pytest.fixture
def host() -> Iterator[ModuleHost]:
    files = {
        "/both.wasm": WASM,
        "/empty.wasm": EMPTY,
        "/network.wasm": proxy_module(http=False, network=True),
    }
    with ModuleHost(files) as server:
        yield server


def test_a_module_envoy_cannot_run_is_a_problem_at_its_plugin(
    host: ModuleHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty Wasm module fails --fetch with the reason, at the plugin's path:line."""
    documents = [
        plugin("good", url=host.url("/both.wasm")),
        plugin("empty", url=host.url("/empty.wasm")),
    ]
    (tmp_path / "p.yaml").write_text("---\n".join(documents))
    assert run_validate("--fetch", str(tmp_path / "p.yaml")) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{tmp_path / 'p.yaml'}:8: spec.url: module unavailable: {host.url('/empty.wasm')}:"
        " the module cannot run in Envoy: it exports no proxy-wasm ABI version function"
        " (proxy_abi_version_0_1_0, proxy_abi_version_0_2_0, proxy_abi_version_0_2_1):"
        " Envoy refuses it as not a proxy-wasm module"
    ]


def test_a_type_mismatch_is_a_warning(
    host: ModuleHost, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An HTTP plugin on a network-only module is a warning: exit 0, or 1 with --strict."""
    (tmp_path / "p.yaml").write_text(plugin("tcp", url=host.url("/network.wasm")))
    assert run_validate("--fetch", str(tmp_path / "p.yaml")) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"{tmp_path / 'p.yaml'}:1: warning: spec.type: HTTP, but the module implements network"
        " callbacks and no HTTP ones, so Envoy would never call it for requests"
    ]
    assert run_validate("--fetch", "--strict", str(tmp_path / "p.yaml")) == 1
    capsys.readouterr()
    (tmp_path / "p.yaml").write_text(
        plugin("tcp", url=host.url("/network.wasm"), extra="  type: NETWORK\n")
    )
    assert run_validate("--fetch", "--strict", str(tmp_path / "p.yaml")) == 0
