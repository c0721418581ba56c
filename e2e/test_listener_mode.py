"""Listener mode end to end: wasmxds owns the listeners and places plugins where istiod would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness.envoy import Envoy, running_envoy
from e2e.harness.listeners import (
    cluster_template,
    free_port,
    http_listener_template,
    listeners_bootstrap,
    tcp_listener_template,
    write_templates,
)
from e2e.harness.tcp import tcp_echo
from e2e.harness.wasmxds import WasmxdsProcess, running_wasmxds
from e2e.test_core import plugin_yaml, upstream_headers

pytestmark = pytest.mark.envoy


async def until(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll an async ``check`` until it returns a truthy value."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    last = await check()
                except (httpx.HTTPError, OSError) as exc:
                    last = exc
                else:
                    if last:
                        return last
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} not reached in {timeout}s; last: {last!r}") from None


@asynccontextmanager
async def control_plane(
    tmp_path: Path, plugins: Mapping[str, str], templates: Sequence[Mapping[str, Any]]
) -> AsyncIterator[tuple[WasmxdsProcess, Path, Path]]:
    config_dir, template_dir = tmp_path / "config", tmp_path / "templates"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in plugins.items():
        (config_dir / name).write_text(text)
    write_templates(template_dir, *templates)
    args = ("--listeners", str(template_dir), "--fetch-retry-max", "500ms")
    async with running_wasmxds([config_dir], tmp_path / "cache", extra_args=args) as wasmxds:
        yield wasmxds, config_dir, template_dir


@asynccontextmanager
async def proxy(
    tmp_path: Path, xds_port: int, name: str, *, api: str = "sotw", **node: Any
) -> AsyncIterator[Envoy]:
    bootstrap = listeners_bootstrap(xds_port=xds_port, node_id=name, api=api, **node)
    async with running_envoy(bootstrap, tmp_path / name) as envoy:
        await envoy.wait_live()
        yield envoy


def order_plugin(
    name: str, url: str, *, extra: str = "", config: Mapping[str, Any] | None = None
) -> str:
    merged = {"request_headers": {"x-order": name}, **(config or {})}
    return plugin_yaml(name, url, merged, extra=extra)


# -- JWT: the AUTHN plugin supplies the token jwt_authn requires --------------

_SECRET = b"wasmxds-e2e-secret-key-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token() -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(
        json.dumps({"iss": "wasmxds-e2e", "sub": "tester", "exp": int(time.time()) + 3600}).encode()
    )
    signature = hmac.new(_SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


JWT_FILTER = {
    "name": "envoy.filters.http.jwt_authn",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {
            "e2e": {
                "issuer": "wasmxds-e2e",
                "from_headers": [{"name": "x-token"}],
                "forward_payload_header": "x-jwt-payload",
                "local_jwks": {
                    "inline_string": json.dumps(
                        {"keys": [{"kty": "oct", "alg": "HS256", "k": _b64(_SECRET)}]}
                    )
                },
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "e2e"}}],
    },
}
RBAC_FILTER = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "marked-by-authz-plugin": {
                    "permissions": [{"any": True}],
                    "principals": [{"header": {"name": "x-authz-mark", "present_match": True}}],
                }
            },
        },
    },
}
STATS_FILTER = {
    "name": "envoy.filters.http.grpc_stats",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
    },
}


async def listener_filter_names(envoy: Envoy, listener: str) -> list[str]:
    dump = await envoy.config_dump("dynamic_listeners")
    for entry in dump["configs"]:
        state = entry.get("active_state") or {}
        if state.get("listener", {}).get("name") == listener:
            chain = state["listener"]["filter_chains"][0]["filters"][0]
            return [f["name"] for f in chain["typed_config"]["http_filters"]]
    return []


async def test_phases_and_priorities_around_jwt_and_rbac(tmp_path, upstream, modules):
    """All four phases and several priorities land in Istio's order around jwt, rbac and stats."""
    url = modules.url("header-filter.wasm")
    port = free_port()
    plugins = {
        "authn-lo.yaml": order_plugin("authn-lo", url, extra="phase: AUTHN\npriority: 1\n"),
        "authn-hi.yaml": order_plugin(
            "authn-hi", url, extra="phase: AUTHN\npriority: 10\n",
            config={"request_headers": {"x-order": "authn-hi", "x-token": hs256_token()}},
        ),
        "authz.yaml": order_plugin(
            "authz", url, extra="phase: AUTHZ\n",
            config={"request_headers": {"x-order": "authz", "x-authz-mark": "yes"}},
        ),
        "stats.yaml": order_plugin("stats", url, extra="phase: STATS\n"),
        "plain-unset.yaml": order_plugin("plain-unset", url),
        "plain-neg.yaml": order_plugin("plain-neg", url, extra="priority: -7\n"),
    }  # fmt: skip
    templates = [
        http_listener_template("main", port, http_filters=[JWT_FILTER, RBAC_FILTER, STATS_FILTER]),
        cluster_template("upstream", upstream.host, upstream.port),
    ]
    async with (
        control_plane(tmp_path, plugins, templates) as (wasmxds, _, _),
        AsyncExitStack() as stack,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        envoy = await stack.enter_async_context(proxy(tmp_path, xds_port, "gw"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))

        async def ordered() -> httpx.Response | None:
            response = await client.get(f"http://127.0.0.1:{port}/x")
            assert response.status_code == 200, (response.status_code, response.text)
            return response if len(upstream_headers(response, "x-order")) == 6 else None

        response = await until(ordered, what="all six plugins running")
        assert upstream_headers(response, "x-order") == [
            "authn-hi", "authn-lo", "authz", "stats", "plain-neg", "plain-unset",
        ]  # fmt: skip
        # jwt_authn ran after the AUTHN plugin that supplied the token...
        assert upstream_headers(response, "x-jwt-payload")
        # ...and rbac let the request through only because the AUTHZ plugin marked it first.
        assert await listener_filter_names(envoy, "main") == [
            "default.authn-hi", "default.authn-lo", "envoy.filters.http.jwt_authn",
            "default.authz", "envoy.filters.http.rbac",
            # Phase-less plugins follow the STATS ones, before the stats filter (istiod).
            "default.stats", "default.plain-neg", "default.plain-unset",
            "envoy.filters.http.grpc_stats", "envoy.filters.http.router",
        ]  # fmt: skip


async def test_scoping_across_two_proxies(tmp_path, upstream, modules):
    """Namespace and selector scoping: each proxy runs exactly the plugins meant for it."""
    url = modules.url("header-filter.wasm")
    port_a, port_b = free_port(), free_port()

    def tagged(name: str, namespace: str, extra: str = "") -> str:
        return plugin_yaml(
            name, url, {"response_headers": {f"x-{name}": "on"}}, namespace=namespace, extra=extra
        )

    plugins = {
        "edge-only.yaml": tagged("edge-only", "edge"),
        "web-only.yaml": tagged(
            "web-only", "istio-system", "selector:\n  matchLabels:\n    app: web\n"
        ),
        "default-ns.yaml": tagged("default-ns", "default"),
        "mesh-wide.yaml": tagged("mesh-wide", "istio-system"),
    }
    templates = [
        http_listener_template("edge", port_a, namespaces=["edge"]),
        http_listener_template("web", port_b, namespaces=["default"]),
        cluster_template("upstream", upstream.host, upstream.port),
    ]
    async with (
        control_plane(tmp_path, plugins, templates) as (wasmxds, _, _),
        AsyncExitStack() as stack,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        await stack.enter_async_context(
            proxy(tmp_path, xds_port, "gw", namespace="edge", labels={"app": "gateway"})
        )
        await stack.enter_async_context(
            proxy(
                tmp_path, xds_port, "web", namespace="default", labels={"app": "web"}, api="delta"
            )
        )
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))

        async def plugins_on(port: int, expected: int) -> set[str] | None:
            response = await client.get(f"http://127.0.0.1:{port}/")
            found = {
                h.removeprefix("x-")
                for h in response.headers
                if h.endswith(("-only", "-ns", "-wide"))
            }
            return found if len(found) == expected else None

        assert await until(lambda: plugins_on(port_a, 2)) == {"edge-only", "mesh-wide"}
        assert await until(lambda: plugins_on(port_b, 3)) == {"web-only", "default-ns", "mesh-wide"}


async def test_match_on_port_and_direction(tmp_path, upstream, modules):
    """`match` is per listener: mode against the template's direction, ports against its port."""
    url = modules.url("header-filter.wasm")
    inbound, gateway = free_port(), free_port()
    plugins = {
        "server-only.yaml": plugin_yaml(
            "server-only", url, {"response_headers": {"x-server-only": "on"}},
            extra="match:\n- mode: SERVER\n",
        ),
        "port-only.yaml": plugin_yaml(
            "port-only", url, {"response_headers": {"x-port-only": "on"}},
            extra=f"match:\n- ports:\n  - number: {gateway}\n",
        ),
    }  # fmt: skip
    templates = [
        http_listener_template("inbound", inbound, direction="INBOUND"),
        http_listener_template("gateway", gateway, direction="GATEWAY"),
        cluster_template("upstream", upstream.host, upstream.port),
    ]
    async with (
        control_plane(tmp_path, plugins, templates) as (wasmxds, _, _),
        AsyncExitStack() as stack,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        await stack.enter_async_context(proxy(tmp_path, xds_port, "p"))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=5))

        async def headers(port: int) -> set[str] | None:
            response = await client.get(f"http://127.0.0.1:{port}/")
            found = {h for h in response.headers if h.endswith("-only")}
            return found or None

        assert await until(lambda: headers(inbound)) == {"x-server-only"}
        assert await until(lambda: headers(gateway)) == {"x-port-only"}


async def test_network_plugin_in_a_tcp_chain(tmp_path, modules):
    """A NETWORK plugin runs as a network filter before tcp_proxy."""
    url = modules.url("header-filter.wasm")
    port = free_port()
    plugins = {
        "tcp.yaml": plugin_yaml("tcp", url, {"tcp_prefix": "via-wasm:"}, extra="type: NETWORK\n"),
    }
    async with tcp_echo() as echo:
        templates = [
            tcp_listener_template("tcp", port, cluster="echo"),
            cluster_template("echo", echo.host, echo.port),
        ]
        async with control_plane(tmp_path, plugins, templates) as (wasmxds, _, _):
            xds_port = await wasmxds.port_of("xds.listening")
            async with proxy(tmp_path, xds_port, "tcp-proxy"):

                async def exchange() -> bytes | None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    try:
                        writer.write(b"hello")
                        await writer.drain()
                        writer.write_eof()
                        async with asyncio.timeout(3):
                            data = await reader.read()
                    finally:
                        writer.close()
                    return data if data.startswith(b"via-wasm:") else None

                assert await until(exchange, what="the prefix") == b"via-wasm:hello"


async def test_no_failed_request_through_add_edit_remove(tmp_path, upstream, modules):
    """A steady stream of requests sees zero non-2xx while plugins are added, edited and removed."""
    url = modules.url("header-filter.wasm")
    port = free_port()
    templates = [
        http_listener_template("main", port),
        cluster_template("upstream", upstream.host, upstream.port),
    ]
    async with (
        control_plane(tmp_path, {}, templates) as (wasmxds, config_dir, _),
        AsyncExitStack() as stack,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        await stack.enter_async_context(proxy(tmp_path, xds_port, "p"))
        statuses: list[int] = []
        failures: list[str] = []
        keepalive_races: list[str] = []
        last_headers: dict[str, str] = {}
        stop = asyncio.Event()

        async def load(client: httpx.AsyncClient, *, reuses_connections: bool) -> None:
            while not stop.is_set():
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/")
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # Envoy drains a listener it replaced: it closes idle keep-alive
                    # connections, and a request sent on one at that instant gets no
                    # response (a clean close or a reset, depending on timing). HTTP/1.1
                    # clients retry idempotent requests then (RFC 9112 9.3.1); a
                    # request on a fresh connection must never see it.
                    if not reuses_connections:
                        failures.append(repr(exc))
                    keepalive_races.append(repr(exc))
                    continue
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                statuses.append(response.status_code)
                last_headers.clear()
                last_headers.update(response.headers)

        keepalive = await stack.enter_async_context(httpx.AsyncClient(timeout=5))
        fresh = await stack.enter_async_context(
            httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
        )
        await until(lambda: keepalive.get(f"http://127.0.0.1:{port}/"), what="listener up")
        workers = [
            asyncio.create_task(load(keepalive, reuses_connections=True)),
            asyncio.create_task(load(keepalive, reuses_connections=True)),
            asyncio.create_task(load(fresh, reuses_connections=False)),
        ]

        async def header_is(value: str | None) -> bool:
            await asyncio.sleep(0.05)
            return last_headers.get("x-live") == value

        plugin = config_dir / "live.yaml"
        plugin.write_text(plugin_yaml("live", url, {"response_headers": {"x-live": "one"}}))
        await until(lambda: header_is("one"), what="plugin added")
        plugin.write_text(plugin_yaml("live", url, {"response_headers": {"x-live": "two"}}))
        await until(lambda: header_is("two"), what="plugin edited")
        other = config_dir / "other.yaml"
        other.write_text(
            plugin_yaml(
                "other", url, {"response_headers": {"x-other": "on"}}, extra="phase: AUTHN\n"
            )
        )
        await until(lambda: header_is("two"), what="second plugin added")
        plugin.unlink()
        await until(lambda: header_is(None), what="plugin removed")
        other.unlink()
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
        assert failures == []
        assert len(statuses) > 100
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        races = len(keepalive_races)
        print(f"{len(statuses)} responses, all 200; {races} keep-alive close races retried")
