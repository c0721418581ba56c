"""TrafficExtensions (Istio 1.30) on a real Envoy: Wasm and Lua, ordered with WasmPlugins."""

from __future__ import annotations

import json
import textwrap
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from e2e.harness.listeners import cluster_template, free_port, http_listener_template
from e2e.test_core import plugin_yaml, stack, upstream_headers
from e2e.test_listener_mode import control_plane, listener_filter_names, proxy, until

pytestmark = pytest.mark.envoy


def wasm_extension(name: str, url: str, config: dict[str, Any], extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: TrafficExtension
        metadata:
          name: {name}
          namespace: default
        spec:
          wasm:
            url: {url}
            pluginConfig: {json.dumps(config)}
        """
    ) + textwrap.indent(textwrap.dedent(extra), "  ")


def lua_extension(name: str, body: str, extra: str = "") -> str:
    head = textwrap.dedent(
        f"""\
        apiVersion: extensions.istio.io/v1alpha1
        kind: TrafficExtension
        metadata:
          name: {name}
          namespace: default
        spec:
        """
    )
    code = textwrap.indent(textwrap.dedent(body), "      ")
    return (
        head + textwrap.indent(textwrap.dedent(extra), "  ") + "  lua:\n    inlineCode: |\n" + code
    )


def order_lua(tag: str) -> str:
    return f"""\
        function envoy_on_request(request_handle)
          request_handle:headers():add("x-order", "{tag}")
        end
        """


async def test_wasm_and_lua_extensions_ordered_with_wasmplugins(tmp_path, upstream, modules):
    """Listener mode: phase, then priority, across both kinds; Lua edits flow; bad ones do not."""
    url = modules.url("header-filter.wasm")
    port = free_port()
    plugins = {
        "wp-authn.yaml": plugin_yaml(
            "wp-authn", url, {"request_headers": {"x-order": "wp-authn"}},
            extra="phase: AUTHN\npriority: 10\n",
        ),
        "te-wasm.yaml": wasm_extension(
            "te-wasm", url, {"request_headers": {"x-order": "te-wasm"}},
            extra="phase: AUTHN\npriority: 5\n",
        ),
        "te-lua.yaml": lua_extension("te-lua", order_lua("te-lua-v1"), extra="phase: AUTHZ\n"),
        "wp-plain.yaml": plugin_yaml("wp-plain", url, {"request_headers": {"x-order": "wp-plain"}}),
    }  # fmt: skip
    templates = [
        http_listener_template("main", port),
        cluster_template("upstream", upstream.host, upstream.port),
    ]
    async with (
        control_plane(tmp_path, plugins, templates) as (wasmxds, config_dir, _),
        AsyncExitStack() as stack_,
    ):
        xds_port = await wasmxds.port_of("xds.listening")
        envoy = await stack_.enter_async_context(proxy(tmp_path, xds_port, "gw"))
        client = await stack_.enter_async_context(httpx.AsyncClient(timeout=5))

        async def order(last: str) -> list[str] | None:
            response = await client.get(f"http://127.0.0.1:{port}/x")
            assert response.status_code == 200, (response.status_code, response.text)
            found = upstream_headers(response, "x-order")
            return found if len(found) == 4 and last in found else None

        assert await until(lambda: order("te-lua-v1"), what="four filters") == [
            "wp-authn", "te-wasm", "te-lua-v1", "wp-plain",
        ]  # fmt: skip
        assert await listener_filter_names(envoy, "main") == [
            "default.wp-authn", "default.te-wasm",
            "default.te-lua", "default.wp-plain", "envoy.filters.http.router",
        ]  # fmt: skip

        # An edit of the Lua body reaches Envoy.
        (config_dir / "te-lua.yaml").write_text(
            lua_extension("te-lua", order_lua("te-lua-v2"), extra="phase: AUTHZ\n")
        )
        assert (await until(lambda: order("te-lua-v2"), what="the edited Lua"))[2] == "te-lua-v2"

        # An invalid edit (both wasm and lua) is reported with its line; v2 stays.
        after = len(wasmxds.events)
        broken = lua_extension(
            "te-lua", order_lua("te-lua-v3"), extra=f"phase: AUTHZ\nwasm: {{url: {url}}}\n"
        )
        (config_dir / "te-lua.yaml").write_text(broken)
        problem = await wasmxds.wait_event(
            "source.problem", lambda e: "exactly one of wasm or lua" in e["message"], after=after
        )
        assert problem["path"].endswith("te-lua.yaml")
        assert problem["line"] == 6
        assert problem["message"] == (
            "spec: exactly one of wasm or lua must be set (the CRD's rule), not both"
        )
        for _ in range(10):
            assert await order("te-lua-v2") is not None


async def test_lua_extension_in_ecds_mode(tmp_path, upstream, modules):
    """ECDS mode: a bootstrap filter named <ns>.<name> (as for a WasmPlugin) runs the Lua."""
    body = """\
        function envoy_on_response(response_handle)
          response_handle:headers():add("x-lua", "hello from Lua")
        end
        """
    files = {
        "plugin.yaml": plugin_yaml(
            "header-filter", modules.url("header-filter.wasm"),
            {"response_headers": {"x-wasm": "on"}},
        ),
        "lua.yaml": lua_extension("lua-header", body),
    }  # fmt: skip
    filters = ("default.header-filter", "default.lua-header")
    async with stack(tmp_path, upstream, files, filters=filters) as s:
        response = await s.eventually(lambda r: "x-lua" in r.headers and "x-wasm" in r.headers)
        assert response.status_code == 200
        assert response.headers["x-lua"] == "hello from Lua"


async def test_extension_supersedes_the_wasmplugin_of_its_name(tmp_path, upstream, modules):
    """One ns/name of both kinds: Envoy runs the TrafficExtension, the WasmPlugin is warned."""
    body = """\
        function envoy_on_response(response_handle)
          response_handle:headers():add("x-lua", "hello from Lua")
        end
        """
    files = {
        "plugin.yaml": plugin_yaml(
            "header-filter", modules.url("header-filter.wasm"),
            {"response_headers": {"x-wasm": "on"}},
        ),
        "lua.yaml": lua_extension("header-filter", body),
    }  # fmt: skip
    async with stack(tmp_path, upstream, files) as s:
        response = await s.eventually(lambda r: "x-lua" in r.headers)
        assert "x-wasm" not in response.headers
        warning = await s.wasmxds.wait_event("reconcile.superseded")
        assert warning["plugin"] == "default/header-filter"
        assert warning["error"].startswith(
            "WasmPlugin default/header-filter is not served: TrafficExtension"
            " default/header-filter (at "
        )
        # Deleting the TrafficExtension serves the WasmPlugin under the same name.
        (s.config_dir / "lua.yaml").unlink()
        response = await s.eventually(lambda r: "x-wasm" in r.headers)
        assert "x-lua" not in response.headers
        superseded = [e for e in s.wasmxds.events if e["event"] == "reconcile.superseded"]
        print(f"reconcile.superseded logged {len(superseded)} time(s)")
        assert len(superseded) == 1


async def test_broken_lua_is_nacked_and_the_proxy_keeps_the_last_good(tmp_path, upstream, modules):
    """A Lua body that does not load is NACKed (reported); the proxy keeps the previous one."""

    def body(value: str) -> str:
        return f"""\
            function envoy_on_response(response_handle)
              response_handle:headers():add("x-lua", "{value}")
            end
            """

    files = {"lua.yaml": lua_extension("lua-header", body("v1"))}
    filters = ("default.lua-header",)
    async with stack(tmp_path, upstream, files, filters=filters) as s:
        await s.eventually(lambda r: r.headers.get("x-lua") == "v1")
        after = len(s.wasmxds.events)
        (s.config_dir / "lua.yaml").write_text(
            lua_extension("lua-header", body("v2") + "  end end (\n")
        )
        nack = await s.wasmxds.wait_event("xds.nack", after=after)
        print("Envoy's NACK:", nack["error"])
        assert nack["error"].startswith("script load error:")
        for _ in range(10):
            assert (await s.get()).headers.get("x-lua") == "v1"
