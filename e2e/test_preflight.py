"""A module without the proxy-wasm ABI never reaches a real Envoy (the pre-flight check).

An empty but valid Wasm module is fetched by the real ``wasmxds serve``, refused
by its pre-flight check (``module_incompatible``), and never sent: a plugin
without a good version gets its failStrategy stand-in, an edit keeps the last
good version. What Envoy holds and logs shows it never saw the module. With
``--preflight off`` a set of small modules reaches Envoy, to show that the
check refuses what Envoy 1.40 rejects (for the reason Envoy logs) and passes
what it loads.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from e2e.harness.envoy import Envoy
from e2e.harness.modules import ModuleServer
from e2e.harness.upstream import EchoUpstream
from e2e.test_core import HEADER, plugin_yaml
from e2e.test_last_good import header_is, plugin_view, tagged
from e2e.test_listener_mode import until
from e2e.test_operability import admin_json, running
from tests.modules.wat import EMPTY, proxy_module
from wasmxds.modules.preflight import check_wasm

pytestmark = pytest.mark.envoy

EMPTY_DIGEST = hashlib.sha256(EMPTY).hexdigest()


async def envoy_never_saw_the_module(envoy: Envoy, client: httpx.AsyncClient, admin: str) -> None:
    """No Wasm load failure in Envoy's log, no NACK, and no ECDS config naming the module."""
    log = envoy.log_text()
    for failure in ("Proxy-Wasm ABI", "Failed to load Wasm", "Unable to create Wasm"):
        assert failure not in log, log[-3000:]
    (proxy,) = await admin_json(client, admin, "/debug/syncz")
    assert proxy["types"]["ECDS"]["nacks"] == 0
    assert EMPTY_DIGEST not in json.dumps(await envoy.config_dump("ecds_filters"))


def refused(event: dict[str, Any]) -> bool:
    return event.get("reason") == "module_incompatible" and "empty.wasm" in event.get("url", "")


async def test_plugin_without_a_good_version_gets_its_standin(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """An empty module from the start: refused, the deny-all stand-in serves, the reason shown."""
    modules.files["empty.wasm"] = EMPTY
    files = {"p.yaml": plugin_yaml("header-filter", modules.url("empty.wasm"))}
    async with running(tmp_path, upstream, files) as (wasmxds, envoy, client, admin):
        port = await envoy.wait_listener_port("ingress")
        event = await wasmxds.wait_event("module.fetch_failed", refused)
        assert "exports no proxy-wasm ABI version function" in event["error"]

        async def denied() -> bool:
            response = await client.get(f"http://127.0.0.1:{port}/anything")
            return response.status_code == 403

        await until(denied, what="deny-all stand-in")
        view = await plugin_view(client, admin)
        assert (view["served"], view["standin"]["kind"]) == ("stand-in", "deny-all")
        assert view["module"]["state"] == "failed"
        assert view["module"]["reason"] == "module_incompatible"
        assert (
            "cannot run in Envoy: it exports no proxy-wasm ABI version" in view["module"]["error"]
        )
        assert modules.hits["empty.wasm"] >= 1
        await envoy_never_saw_the_module(envoy, client, admin)


async def test_edit_to_an_empty_module_keeps_the_last_good_version(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """v1 runs; an edit to an empty module is refused and every request keeps running v1."""
    modules.files["empty.wasm"] = EMPTY
    config = {"p.yaml": tagged(modules.url("header-filter.wasm"), "v1")}
    async with running(tmp_path, upstream, config) as (wasmxds, envoy, client, admin):
        port = await envoy.wait_listener_port("ingress")
        await until(lambda: header_is(client, port, "v1"), what="v1 filter running")

        mark = len(wasmxds.events)
        (tmp_path / "config" / "p.yaml").write_text(tagged(modules.url("empty.wasm"), "v2"))
        seen: collections.Counter[tuple[int, str | None]] = collections.Counter()

        # Until the refusal was retried once (--fetch-retry-max 500ms), or Envoy rejected
        # the module (what happened before the check existed); bounded against a hang.
        def settled(event: dict[str, Any]) -> bool:
            retried = refused(event) and event.get("attempt", 0) >= 2
            return retried or event.get("event") == "xds.nack"

        async with asyncio.timeout(30):
            while not any(settled(e) for e in wasmxds.events[mark:]):
                response = await client.get(f"http://127.0.0.1:{port}/anything")
                seen[(response.status_code, response.headers.get(HEADER))] += 1
        print(f"\n{sum(seen.values())} requests while the edit was refused: {dict(seen)}")
        assert set(seen) == {(200, "v1")}, seen
        view = await plugin_view(client, admin)
        assert (view["served"], view["module"]["state"]) == ("last_good", "failed")
        assert view["module"]["reason"] == "module_incompatible"
        assert "exports no proxy-wasm ABI version function" in view["last_good"]["reason"]
        await envoy_never_saw_the_module(envoy, client, admin)

        # Fixing the edit applies it; /debug/plugins shows what the check found in the
        # example filter: a C module with both HTTP and network callbacks.
        (tmp_path / "config" / "p.yaml").write_text(tagged(modules.url("header-filter.wasm"), "v3"))
        await until(lambda: header_is(client, port, "v3"), what="v3 applied after the fix")
        view = await plugin_view(client, admin)
        implements = view["module"]["implements"]
        assert (implements["abi"], implements["http"], implements["network"]) == (
            "0.2.1",
            True,
            True,
        )
        assert view["type_warning"] is None


PATH_LINK_AS_SPECIFIED = " ".join(["i32"] * 7)
WASI_IMPORTS = (
    '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))'
    '(import "wasi_unstable" "clock_time_get" (func (param i32 i64 i32) (result i32)))'
)
CONTINUE_REQUEST = '(import "env" "proxy_continue_request" (func (result i32)))'
MAGIC_IMPORT = '(import "env" "proxy_get_magic" (func (param i32) (result i32)))'
PATH_LINK_7 = (
    f'(import "wasi_snapshot_preview1" "path_link" (func (param {PATH_LINK_AS_SPECIFIED})'
    " (result i32)))"
)
TWO_PARAM_HEADERS = (
    '(func (export "proxy_on_request_headers") (param i32 i32) (result i32) i32.const 0)'
)
GLOBAL_IMPORT = '(import "env" "__stack_pointer" (global (mut i32)))'
# (name, module, what Envoy 1.40 logs when it rejects it; "" when it loads it). Where
# wasmxds is stricter than Envoy on purpose (a plugin Envoy loads, but that could never
# get a context or any data), the case is in STRICTER.
AGREEMENT: list[tuple[str, Callable[[], bytes], str]] = [
    ("http-only", lambda: proxy_module(), ""),
    ("network-only", lambda: proxy_module(http=False, network=True), ""),
    ("wasi-imports", lambda: proxy_module(imports=WASI_IMPORTS), ""),
    ("abi-0.1.0", lambda: proxy_module(abi="0_1_0", http=False, imports=CONTINUE_REQUEST), ""),
    ("empty", lambda: EMPTY, "Missing or unknown Proxy-Wasm ABI version"),
    ("no-malloc", lambda: proxy_module(malloc=False), "missing malloc"),
    ("unknown-import", lambda: proxy_module(imports=MAGIC_IMPORT), "import: env.proxy_get_magic"),
    (
        "other-abi-import",
        lambda: proxy_module(imports=CONTINUE_REQUEST),
        "import: env.proxy_continue_request",
    ),
    (
        "wasi-path-link-7",
        lambda: proxy_module(imports=PATH_LINK_7),
        "import type mismatch: wasi_snapshot_preview1.path_link",
    ),
    (
        "bad-callback-type",
        lambda: proxy_module(http=False, body=TWO_PARAM_HEADERS),
        "Bad function signature for: proxy_on_request_headers",
    ),
    ("global-import", lambda: proxy_module(imports=GLOBAL_IMPORT), "import: env.__stack_pointer"),
    ("no-context-create", lambda: proxy_module(context=False), ""),
    ("no-memory", lambda: proxy_module(memory=False), ""),
]
STRICTER = {"no-context-create", "no-memory"}


async def envoy_answer(client: httpx.AsyncClient, admin: str, before: str | None) -> str:
    """Wait for Envoy to ACK or NACK the first ECDS version sent after ``before``."""

    async def answered() -> str | None:
        proxies = await admin_json(client, admin, "/debug/syncz")
        state = proxies[0]["types"]["ECDS"] if proxies and "ECDS" in proxies[0]["types"] else None
        if state is None or state["version_sent"] in (None, before):
            return None
        return state["state"] if state["state"] in ("SYNCED", "NACKED") else None

    answer: str = await until(answered, what="Envoy's answer")
    return answer


async def test_verdicts_agree_with_what_envoy_does(
    tmp_path: Any, upstream: EchoUpstream, modules: ModuleServer
) -> None:
    """With --preflight off each module reaches Envoy: it loads what the check passes and
    rejects what the check refuses, for that reason (save the two cases, STRICTER, where
    the check refuses on purpose what Envoy would load and never be able to call)."""
    first = "http-only"
    modules.files[f"{first}.wasm"] = proxy_module()
    files = {"p.yaml": plugin_yaml("header-filter", modules.url(f"{first}.wasm"))}
    args = ("--preflight", "off")
    rows = []
    async with running(tmp_path, upstream, files, args=args) as (_, envoy, client, admin):
        before = None
        for name, build, rejection in AGREEMENT:
            data = build()
            modules.files[f"{name}.wasm"] = data
            if name != first:
                text = plugin_yaml("header-filter", modules.url(f"{name}.wasm"), {"case": name})
                (tmp_path / "config" / "p.yaml").write_text(text)
            answer = await envoy_answer(client, admin, before)
            (proxy,) = await admin_json(client, admin, "/debug/syncz")
            before = proxy["types"]["ECDS"]["version_sent"]
            verdict = check_wasm(data)
            nack = proxy["types"]["ECDS"]["last_nack"] if answer == "NACKED" else ""
            rows.append((name, answer, verdict.problem or "passes", nack))
            assert answer == ("NACKED" if rejection else "SYNCED"), (name, proxy)
            if rejection:
                assert rejection in envoy.log_text(), (name, envoy.log_text()[-3000:])
            assert (verdict.problem == "") == (not rejection and name not in STRICTER), name
    print()
    for name, answer, problem, nack in rows:
        print(f"{name:18} envoy={answer:7} {nack[:60]:60} check: {problem[:70]}")
