"""The Wasm filter and RBAC stand-ins, checked field by field against istiod's shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2 as envoy_wasm_pb2
from google.protobuf import wrappers_pb2

from tests.factories import make_plugin
from wasmxds.errors import FetchError
from wasmxds.modules.types import Failed, LocalFile, Module, Ready
from wasmxds.translate.filters import (
    FilterKind,
    LocalCode,
    RemoteCode,
    StandIn,
    standin_config,
    wasm_filter_config,
)
from wasmxds.translate.plugins import LocalDelivery, RemoteDelivery, plugin_resources
from wasmxds.translate.typeurls import HTTP_RBAC, HTTP_WASM, NETWORK_RBAC, NETWORK_WASM

V8 = "envoy.wasm.runtime.v8"


def _http_wasm(config) -> envoy_wasm_pb2.PluginConfig:
    assert config.typed_config.type_url == HTTP_WASM
    wasm = http_wasm_pb2.Wasm()
    config.typed_config.Unpack(wasm)
    return wasm.config


def test_filter_has_istiod_shape():
    """name, root_id, runtime, code and failure policy follow the DESIGN contract."""
    plugin = make_plugin("hdr", "edge", pluginName="my_root", url="http://m/x.wasm")
    config = wasm_filter_config(plugin, LocalCode("/cache/x.wasm"), runtime=V8)
    assert config.name == "edge.hdr"
    pc = _http_wasm(config)
    assert pc.name == "edge.hdr"
    assert pc.root_id == "my_root"
    assert pc.vm_config.runtime == V8
    assert pc.vm_config.code.local.filename == "/cache/x.wasm"
    assert not pc.vm_config.vm_id
    assert pc.failure_policy == envoy_wasm_pb2.FAIL_CLOSED


def test_plugin_config_is_compact_json_string_value():
    """pluginConfig reaches the filter as a StringValue holding compact, key-sorted JSON."""
    plugin = make_plugin(pluginConfig={"b": {"y": [1, "two"]}, "a": True})
    pc = _http_wasm(wasm_filter_config(plugin, LocalCode("/m"), runtime=V8))
    value = wrappers_pb2.StringValue()
    assert pc.configuration.Unpack(value)
    assert value.value == '{"a":true,"b":{"y":[1,"two"]}}'
    assert json.loads(value.value) == {"a": True, "b": {"y": [1, "two"]}}


def test_empty_plugin_config_leaves_configuration_unset():
    """An empty pluginConfig gives the module an empty configuration."""
    pc = _http_wasm(wasm_filter_config(make_plugin(pluginConfig={}), LocalCode("/m"), runtime=V8))
    assert not pc.HasField("configuration")


@pytest.mark.parametrize(
    ("strategy", "policy"),
    [
        ("FAIL_CLOSE", envoy_wasm_pb2.FAIL_CLOSED),
        ("FAIL_OPEN", envoy_wasm_pb2.FAIL_OPEN),
        ("FAIL_RELOAD", envoy_wasm_pb2.FAIL_RELOAD),
    ],
)
def test_fail_strategy_maps_to_failure_policy(strategy, policy):
    """failStrategy becomes Envoy's failure_policy, value for value."""
    pc = _http_wasm(
        wasm_filter_config(make_plugin(failStrategy=strategy), LocalCode("/m"), runtime=V8)
    )
    assert pc.failure_policy == policy


def test_env_inline_and_host():
    """INLINE env vars become key_values, HOST ones host_env_keys."""
    plugin = make_plugin(
        vmConfig={"env": [{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": "HOST"}]}
    )
    env = _http_wasm(
        wasm_filter_config(plugin, LocalCode("/m"), runtime=V8)
    ).vm_config.environment_variables
    assert dict(env.key_values) == {"A": "1"}
    assert list(env.host_env_keys) == ["POD"]


def test_network_plugin_uses_network_wasm_type():
    """type: NETWORK produces the network Wasm filter."""
    config = wasm_filter_config(make_plugin(type="NETWORK"), LocalCode("/m"), runtime=V8)
    assert config.typed_config.type_url == NETWORK_WASM
    assert config.typed_config.Unpack(network_wasm_pb2.Wasm())


def test_remote_code_carries_sha256_and_retries():
    """Remote delivery sets the URI, cluster and sha256 Envoy enforces."""
    code = RemoteCode(uri="http://cp/modules/sha256/ab", cluster="wasmxds", sha256="ab")
    remote = _http_wasm(wasm_filter_config(make_plugin(), code, runtime=V8)).vm_config.code.remote
    assert remote.http_uri.uri == "http://cp/modules/sha256/ab"
    assert remote.http_uri.cluster == "wasmxds"
    assert remote.sha256 == "ab"
    assert remote.retry_policy.num_retries.value >= 1


@pytest.mark.parametrize(
    ("kind", "standin", "type_url", "denies"),
    [
        (FilterKind.HTTP, StandIn.DENY_ALL, HTTP_RBAC, True),
        (FilterKind.HTTP, StandIn.ALLOW_ALL, HTTP_RBAC, False),
        (FilterKind.HTTP, StandIn.NOT_SELECTED, HTTP_RBAC, False),
        (FilterKind.NETWORK, StandIn.DENY_ALL, NETWORK_RBAC, True),
        (FilterKind.NETWORK, StandIn.ALLOW_ALL, NETWORK_RBAC, False),
    ],
)
def test_standins(kind, standin, type_url, denies):
    """Deny-all has empty rules, allow-all has none; network RBAC always has a stat_prefix."""
    config = standin_config("ns.p", kind, standin)
    assert config.name == "ns.p"
    assert config.typed_config.type_url == type_url
    if kind is FilterKind.HTTP:
        rbac = http_rbac_pb2.RBAC()
        config.typed_config.Unpack(rbac)
        assert rbac.rules_stat_prefix == standin.value
    else:
        rbac = network_rbac_pb2.RBAC()
        config.typed_config.Unpack(rbac)
        assert rbac.stat_prefix == standin.value
    assert rbac.HasField("rules") is denies
    assert not rbac.rules.policies


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("FAIL_CLOSE", StandIn.DENY_ALL),
        ("FAIL_RELOAD", StandIn.DENY_ALL),
        ("FAIL_OPEN", StandIn.ALLOW_ALL),
    ],
)
def test_failed_module_gets_fail_strategy_standin(strategy, expected):
    """An unavailable module is replaced by deny-all, or allow-all for FAIL_OPEN."""
    outcome = Failed(FetchError("404 from http://m/x.wasm"), attempts=1, next_retry_in=1.0)
    delivery = LocalDelivery(Path("/c"), Path("/c"))
    resources = plugin_resources(make_plugin(failStrategy=strategy), outcome, delivery, runtime=V8)
    assert resources.standin is expected
    assert "404" in resources.reason
    assert resources.config.typed_config.type_url == HTTP_RBAC


def test_local_delivery_rebases_path_for_proxies():
    """The cached path is rebased from wasmxds's cache dir onto the proxies' mount."""
    module = Module(digest="ab" * 32, path=Path("/var/cache/w/modules/sha256/x.wasm"), size=8)
    delivery = LocalDelivery(Path("/var/cache/w"), Path("/shared/wasm"))
    resources = plugin_resources(make_plugin(), Ready(module), delivery, runtime=V8)
    pc = _http_wasm(resources.config)
    assert pc.vm_config.code.local.filename == "/shared/wasm/modules/sha256/x.wasm"
    assert resources.standin is None


def test_file_url_passes_through():
    """file:// modules keep their path on the proxy."""
    delivery = RemoteDelivery("http://cp:18001", "wasmxds")
    resources = plugin_resources(
        make_plugin(), Ready(LocalFile("/opt/f.wasm")), delivery, runtime=V8
    )
    assert _http_wasm(resources.config).vm_config.code.local.filename == "/opt/f.wasm"


def test_remote_delivery_points_at_module_endpoint():
    """Remote delivery uses /modules/sha256/<hex> with the digest enforced."""
    module = Module(digest="cd" * 32, path=Path("/c/m.wasm"), size=8)
    delivery = RemoteDelivery("http://cp:18001/", "wasmxds")
    pc = _http_wasm(plugin_resources(make_plugin(), Ready(module), delivery, runtime=V8).config)
    assert pc.vm_config.code.remote.http_uri.uri == f"http://cp:18001/modules/sha256/{'cd' * 32}"
    assert pc.vm_config.code.remote.sha256 == "cd" * 32
