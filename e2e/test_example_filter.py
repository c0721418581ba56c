"""The example header filter (examples/header-filter) in a real Envoy, no control plane.

Each HTTP test starts Envoy from a static bootstrap whose HTTP filter chain holds one
or two instances of the committed .wasm module in front of the router, and sends
requests through it to the echo upstream, which reports the headers it received.
The network (L4) tests put the same module in a TCP listener's filter chain in
front of tcp_proxy, whose upstream echoes the bytes it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.envoy import running_envoy
from e2e.harness.tcp import TcpEcho, tcp_echo
from e2e.harness.upstream import EchoUpstream, echo_upstream

pytestmark = pytest.mark.envoy

WASM = Path(__file__).resolve().parents[1] / "examples" / "header-filter" / "header-filter.wasm"
LISTENER = "ingress"
HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
TCP_TIMEOUT = 5.0


def _wasm_filter(
    name: str, configuration: str | None, filter_type: str = HTTP_WASM
) -> dict[str, Any]:
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
        "typed_config": {"@type": filter_type, "config": plugin},
    }


def _static_resources(
    filters: list[dict[str, Any]], upstream: EchoUpstream | TcpEcho
) -> dict[str, Any]:
    """One listener with the given network filter chain, and the "echo" cluster."""
    endpoint = {
        "address": {"socket_address": {"address": upstream.host, "port_value": upstream.port}}
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": LISTENER,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [{"filters": filters}],
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
    return _static_resources(
        [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}],
        upstream,
    )


def _tcp_bootstrap(upstream: TcpEcho, configuration: str | None) -> dict[str, Any]:
    """A TCP listener: the header filter as a network filter, then tcp_proxy to the echo."""
    tcp_proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp",
            "cluster": "echo",
        },
    }
    wasm = _wasm_filter("header-filter-0", configuration, NETWORK_WASM)
    return _static_resources([wasm, tcp_proxy], upstream)


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


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, expected: bytes
) -> bytes:
    """Send ``data`` and read back exactly as many bytes as ``expected`` has."""
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(TCP_TIMEOUT):
        return await reader.readexactly(len(expected))


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Half-close, return whatever else arrives before EOF, and close."""
    writer.write_eof()
    async with asyncio.timeout(TCP_TIMEOUT):
        rest = await reader.read()
    writer.close()
    await writer.wait_closed()
    return rest


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
        pytest.param(
            '{"tcp_prefix": ["PROXY"]}',
            '"tcp_prefix" must be a string at byte 15',
            id="prefix-list",
        ),
        pytest.param(
            _compact({"tcp_prefix": "x" * 4097}),
            '"tcp_prefix" longer than 4096 bytes at byte 14',
            id="prefix-too-long",
        ),
        pytest.param(
            '{"tcp_deny": "yes"}', '"tcp_deny" must be true or false at byte 13', id="deny-string"
        ),
        # Reserved even in another case, so it cannot turn into a "tcp_prefix" header.
        pytest.param(
            '{"TCP_Prefix": "x"}',
            'unknown network option (keys starting with "tcp_" are reserved) at byte 15',
            id="unknown-tcp-key",
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


async def test_http_filter_ignores_network_options(tmp_path: Path) -> None:
    """As an HTTP filter, tcp_* options change nothing and never become response headers."""
    config = _compact(
        {"tcp_prefix": "PRE ", "tcp_deny": True, "first-header": "v", "request_headers": {"x-a": 1}}
    )
    response, log = await _request(config, workdir=tmp_path)

    assert response.status_code == 200
    assert response.headers.get_list("first-header") == ["v"]
    assert _values(response.json()["headers"], "x-a") == ["1"]
    for name in ("tcp_prefix", "tcp_deny"):
        assert name not in response.headers
        assert not _values(response.json()["headers"], name)
    assert (
        "header-filter: configured 1 request header(s) and 1 response header(s), "
        "a 4-byte tcp_prefix, tcp_deny" in log
    )


async def test_tcp_prefix_starts_each_connection_once(tmp_path: Path) -> None:
    """As a network filter, tcp_prefix leads each connection's upstream bytes exactly once."""
    prefix = "PROXY é☃\r\n"
    # Header options are accepted but have no effect on a network filter.
    config = _compact({"tcp_prefix": prefix, "first-header": "v", "response_headers": {"x": 1}})
    expected_prefix = prefix.encode()
    async with (
        tcp_echo() as upstream,
        running_envoy(_tcp_bootstrap(upstream, config), tmp_path) as envoy,
    ):
        await envoy.wait_live()
        port = await envoy.wait_listener_port(LISTENER)

        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            expected = expected_prefix + b"hello"
            assert await _exchange(reader, writer, b"hello", expected) == expected
            assert await _finish(reader, writer) == b""

        # Chunks sent one at a time (each echoed before the next) reach the filter as
        # separate reads; only the first one is prefixed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        expected = expected_prefix + b"one"
        assert await _exchange(reader, writer, b"one", expected) == expected
        for chunk in (b"two", b"three"):
            assert await _exchange(reader, writer, chunk, chunk) == chunk
        assert await _finish(reader, writer) == b""

        # A client that half-closes without sending anything still starts the
        # upstream stream with the prefix (Envoy delivers the FIN as empty data).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _finish(reader, writer) == expected_prefix
        assert upstream.connections == 4
    log = (tmp_path / "envoy.log").read_text(errors="replace")
    assert (
        "header-filter: configured 0 request header(s) and 2 response header(s), "
        f"a {len(expected_prefix)}-byte tcp_prefix" in log
    )


async def test_network_filter_without_options_passes_bytes_through(tmp_path: Path) -> None:
    """As a network filter, a configuration without tcp_* options leaves the bytes untouched."""
    config = _compact({"first-header": "v"})
    async with (
        tcp_echo() as upstream,
        running_envoy(_tcp_bootstrap(upstream, config), tmp_path) as envoy,
    ):
        await envoy.wait_live()
        port = await envoy.wait_listener_port(LISTENER)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _exchange(reader, writer, b"hello", b"hello") == b"hello"
        assert await _finish(reader, writer) == b""
        assert upstream.connections == 1


async def test_tcp_deny_closes_every_connection(tmp_path: Path) -> None:
    """tcp_deny closes each new connection before tcp_proxy ever connects upstream."""
    config = _compact({"tcp_deny": True, "tcp_prefix": "unused"})
    async with (
        tcp_echo() as upstream,
        running_envoy(_tcp_bootstrap(upstream, config), tmp_path) as envoy,
    ):
        await envoy.wait_live()
        port = await envoy.wait_listener_port(LISTENER)
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The client sends nothing, so Envoy's close is a plain FIN: EOF, no data.
            async with asyncio.timeout(TCP_TIMEOUT):
                assert await reader.read() == b""
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        stats = await envoy.stats(r"^cluster\.echo\.upstream_cx_total$|downstream_cx_total$")
        assert upstream.connections == 0
    # Envoy accepted both connections, but tcp_proxy never opened one upstream.
    assert stats["listener.127.0.0.1_0.downstream_cx_total"] == 2
    assert stats["cluster.echo.upstream_cx_total"] == 0
    log = (tmp_path / "envoy.log").read_text(errors="replace")
    assert (
        "header-filter: configured 0 request header(s) and 0 response header(s), "
        "a 6-byte tcp_prefix, tcp_deny" in log
    )


@pytest.mark.parametrize(
    ("configuration", "reason"),
    [
        pytest.param('{"tcp_prefix": 5}', '"tcp_prefix" must be a string at byte 15', id="number"),
        pytest.param('{"tcp_deny": 1}', '"tcp_deny" must be true or false at byte 13', id="deny-1"),
    ],
)
async def test_invalid_network_configuration_is_rejected(
    tmp_path: Path, configuration: str, reason: str
) -> None:
    """A bad tcp_* option makes a statically configured Envoy refuse the network filter."""
    async with tcp_echo() as upstream:
        with pytest.raises(RuntimeError, match="exited"):
            await _start_until_live(_tcp_bootstrap(upstream, configuration), tmp_path)
    log = (tmp_path / "envoy.log").read_text(errors="replace")
    assert f"header-filter: invalid configuration: {reason}" in log
    # Same outcome as for the HTTP filter: Envoy 1.40 refuses the whole bootstrap.
    assert "Failed to configure base Wasm plugin" in log
    assert "error `Unable to create Wasm plugin header-filter-0` initializing config" in log
