"""The example header filter (examples/header-filter) in a real Envoy, no control plane.

Each test starts Envoy from a static bootstrap whose HTTP filter chain holds one or
two instances of the committed .wasm module in front of the router, and sends
requests through it to the echo upstream, which reports the headers it received.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.envoy import running_envoy
from e2e.harness.upstream import EchoUpstream, echo_upstream

pytestmark = pytest.mark.envoy

WASM = Path(__file__).resolve().parents[1] / "examples" / "header-filter" / "header-filter.wasm"
LISTENER = "ingress"


def _wasm_filter(name: str, configuration: str | None) -> dict[str, Any]:
    plugin: dict[str, Any] = {
        "name": name,
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(WASM)}},
        },
    }
    if configuration is not None:
        plugin["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": configuration,
        }
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": plugin,
        },
    }


def _bootstrap(upstream: EchoUpstream, *configurations: str | None) -> dict[str, Any]:
    """A listener whose filter chain is one header filter per configuration, then the router."""
    http_filters = [
        _wasm_filter(f"header-filter-{index}", configuration)
        for index, configuration in enumerate(configurations)
    ]
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": LISTENER,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                }
            ]
        },
        "http_filters": http_filters,
    }
    endpoint = {
        "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ],
        }
    }


def _compact(config: dict[str, Any]) -> str:
    """Compact JSON with raw UTF-8, as a control plane would put in the StringValue."""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False)


def _values(pairs: list[list[str]] | list[tuple[bytes, bytes]], name: str | bytes) -> list[Any]:
    return [value for key, value in pairs if key == name]


def _names(pairs: list[list[str]] | list[tuple[str, str]]) -> list[str]:
    return sorted(name.lower() for name, _ in pairs)


async def _request(*configurations: str | None, workdir: Path) -> tuple[httpx.Response, str]:
    """Send one GET through an Envoy running the given filter chain; return it and Envoy's log."""
    async with (
        echo_upstream() as upstream,
        running_envoy(_bootstrap(upstream, *configurations), workdir) as envoy,
    ):
        await envoy.wait_live()
        port = await envoy.wait_listener_port(LISTENER)
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(f"http://127.0.0.1:{port}/hello")
    # Envoy buffers its log file; it is complete only once Envoy has stopped.
    return response, (workdir / "envoy.log").read_text(errors="replace")


async def _start_until_live(bootstrap: dict[str, Any], workdir: Path) -> None:
    """Start Envoy and wait for it to become live (the harness raises if it exits first)."""
    async with running_envoy(bootstrap, workdir) as envoy:
        await envoy.wait_live()


async def test_request_and_response_headers_are_appended(tmp_path: Path) -> None:
    """Configured request headers reach the upstream and response headers reach the client."""
    config = _compact(
        {
            "request_headers": {"x-req-one": "first", "x-req-number": 42, "x-req-flag": True},
            "response_headers": {"x-resp-one": "hello", "x-resp-float": -1.5e3},
        }
    )
    response, log = await _request(config, workdir=tmp_path)

    assert response.status_code == 200
    upstream_headers = response.json()["headers"]
    assert _values(upstream_headers, "x-req-one") == ["first"]
    assert _values(upstream_headers, "x-req-number") == ["42"]
    assert _values(upstream_headers, "x-req-flag") == ["true"]
    assert not _values(upstream_headers, "x-resp-one")
    assert response.headers.get_list("x-resp-one") == ["hello"]
    assert response.headers.get_list("x-resp-float") == ["-1500.0"]
    assert "x-req-one" not in response.headers
    assert "header-filter: configured 3 request header(s) and 2 response header(s)" in log


async def test_config_header_returns_configuration_verbatim(tmp_path: Path) -> None:
    """config_header echoes the configuration byte for byte; escapes and UTF-8 decode right."""
    # Raw non-ASCII (é, ☃) must pass through untouched; the escapes in the greeting
    # (quote, backslash, slash, \u00e9, a surrogate pair for 😀) must be decoded.
    config = (
        '{"config_header":"x-wasm-config",'
        '"response_headers":{"x-greeting":"h\\u00e9llo \\"w\\u00F6rld\\" \\ud83d\\ude00 \\\\ \\/"},'
        '"note":"café ☃",'
        '"nested":{"ignored":[1,{"deep":null}],"also":"ignored"}}'
    )
    response, _ = await _request(config, workdir=tmp_path)

    assert response.status_code == 200
    raw = response.headers.raw
    assert _values(raw, b"x-wasm-config") == [config.encode()]
    assert _values(raw, b"x-greeting") == ['héllo "wörld" 😀 \\ /'.encode()]
    assert _values(raw, b"note") == ["café ☃".encode()]
    assert not _values(raw, b"nested")
    assert not _values(raw, b"ignored")


async def test_two_filters_append_in_filter_order(tmp_path: Path) -> None:
    """Two instances adding the same header name are seen by the upstream in filter order."""
    # Both instances load the same module with the same VM config, so Envoy runs
    # them as two root contexts in one VM: this also proves the configuration is
    # kept per root context rather than globally.
    first = _compact({"request_headers": {"x-order": "first"}, "response_headers": {"x-back": "1"}})
    second = _compact(
        {"request_headers": {"x-order": "second"}, "response_headers": {"x-back": "2"}}
    )
    response, _ = await _request(first, second, workdir=tmp_path)

    assert response.status_code == 200
    assert _values(response.json()["headers"], "x-order") == ["first", "second"]
    # Encoder filters run in reverse order, so on the way back the second filter adds first.
    assert response.headers.get_list("x-back") == ["2", "1"]


async def test_flat_header_append_configuration(tmp_path: Path) -> None:
    """A Maistra header-append style flat map adds each entry as a response header."""
    config = _compact(
        {"first-header": "some-value", "another-header": "another-value", "x-null": None}
    )
    response, log = await _request(config, workdir=tmp_path)

    assert response.status_code == 200
    assert response.headers.get_list("first-header") == ["some-value"]
    assert response.headers.get_list("another-header") == ["another-value"]
    assert "x-null" not in response.headers
    assert not _values(response.json()["headers"], "first-header")
    assert "header-filter: configured 0 request header(s) and 2 response header(s)" in log


@pytest.mark.parametrize(
    ("configuration", "reason"),
    [
        pytest.param(
            '{"request_headers": 5}',
            '"request_headers" must be a JSON object at byte 20',
            id="section-not-object",
        ),
        pytest.param(
            '{"request_headers": {"x-a": "1"',
            "expected ',' or '}' in object at byte 31",
            id="truncated-json",
        ),
        pytest.param('["x-a", "1"]', "configuration must be a JSON object at byte 0", id="array"),
        pytest.param(
            '{"response_headers": {"x-a": "line\\nbreak"}}',
            'control character in the value of header "x-a"',
            id="newline-in-value",
        ),
    ],
)
async def test_invalid_configuration_is_rejected(
    tmp_path: Path, configuration: str, reason: str
) -> None:
    """A configuration the filter cannot use makes a statically configured Envoy refuse to start."""
    async with echo_upstream() as upstream:
        with pytest.raises(RuntimeError, match="exited"):
            await _start_until_live(_bootstrap(upstream, configuration), tmp_path)
    log = (tmp_path / "envoy.log").read_text(errors="replace")
    assert f"header-filter: invalid configuration: {reason}" in log
    # Envoy 1.40 reports the failed proxy_on_configure, then refuses the whole bootstrap.
    assert "Failed to configure base Wasm plugin" in log
    assert "error `Unable to create Wasm plugin header-filter-0` initializing config" in log


@pytest.mark.parametrize(
    "configuration",
    [pytest.param("", id="empty-string"), pytest.param(None, id="absent")],
)
async def test_empty_configuration_does_nothing(tmp_path: Path, configuration: str | None) -> None:
    """An empty configuration is accepted and adds no header compared to no filter at all."""
    response, log = await _request(configuration, workdir=tmp_path / "filter")
    baseline, _ = await _request(workdir=tmp_path / "baseline")

    assert response.status_code == 200
    assert baseline.status_code == 200
    assert _names(response.json()["headers"]) == _names(baseline.json()["headers"])
    assert _names(response.headers.multi_items()) == _names(baseline.headers.multi_items())
    assert "header-filter: configured 0 request header(s) and 0 response header(s)" in log
