"""``/debug/rollouts`` and the steering POSTs: what they answer, and who may steer (real aiohttp
server, real TLS, a real rollout engine driven by protocol-level proxies)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
import trustme

from tests.rollout.harness import Fleet, staged_plugin
from tests.xds.certs import client_cert
from tests.xds.helpers import snapshot_of
from wasmxds.admin.server import AdminServer, AdminState, AdminTls, Pulse
from wasmxds.admin.views import Readiness
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.rollout import Rollouts
from wasmxds.settings import HostPort
from wasmxds.xds.identity import parse_identity_pattern

PLUGIN = "/rollouts/default/p"


def rolling() -> Fleet:
    """A fleet whose plugin default/p is at the first step of a staged change."""
    fleet = Fleet()
    fleet.push(staged_plugin(pluginConfig={"v": 1}))
    fleet.push(staged_plugin(pluginConfig={"v": 2}))
    assert fleet.engine.view("default/p")["phase"] == "Progressing"
    return fleet


@contextlib.asynccontextmanager
async def admin(
    tmp_path: Path,
    rollouts: Rollouts | None,
    *,
    host: str = "127.0.0.1",
    tls: AdminTls | None = None,
    debug_public: bool = False,
    debug_identities: Sequence[str] = (),
) -> AsyncIterator[str]:
    """The admin server bound to ``host`` steering ``rollouts``; yields its base URL."""
    state = AdminState(
        readiness=lambda: Readiness(sources_loaded=True, first_push=True, xds_listening=True),
        sessions=list,
        snapshot=snapshot_of,
        plugins=dict,
        problems=list,
        delivery="remote",
        store=ModuleStore(tmp_path / "cache"),
        metrics=Metrics(),
        module_arrived=Pulse(),
        rollouts=rollouts,
    )
    server = AdminServer(
        address=HostPort(host, 0),
        state=state,
        tls=tls,
        debug_public=debug_public,
        debug_identities=[parse_identity_pattern(text) for text in debug_identities],
    )
    started = asyncio.Event()
    task = asyncio.create_task(server.run(started))
    await started.wait()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_debug_rollouts_shows_each_rollout_and_the_posts_steer_it(tmp_path):
    """On loopback: the page lists the rollout; pause, resume, promote answer its view; a
    finished rollout is a 409 with the engine's sentence, an unknown plugin a 404."""
    fleet = rolling()
    async with (
        admin(tmp_path, fleet.engine) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        listed = (await client.get("/debug/rollouts")).json()
        assert [(v["plugin"], v["phase"], v["step"]) for v in listed] == [
            ("default/p", "Progressing", 0)
        ]
        for action, phase in (("pause", "Paused"), ("resume", "Progressing")):
            response = await client.post(f"{PLUGIN}/{action}")
            assert (response.status_code, response.json()["phase"]) == (200, phase), action
        fleet.engine.pause("default/p")
        fleet.tick(60)
        assert (await client.get("/debug/rollouts")).json()[0]["step"] == 0
        promoted = await client.post(f"{PLUGIN}/promote")
        assert promoted.json()["phase"] == "Complete"
        assert promoted.json()["history"][-1]["event"] == "promoted"
        refused = await client.post(f"{PLUGIN}/abort")
        print(refused.text.strip())
        assert refused.status_code == 409
        assert "it is Complete" in refused.text
        missing = await client.post("/rollouts/other/q/pause")
        assert missing.status_code == 404
        assert "no staged rollout for 'other/q'" in missing.text
        unknown = await client.post(f"{PLUGIN}/explode")
        assert unknown.status_code == 404
        assert "pause, resume, promote, abort" in unknown.text


async def test_abort_answers_the_rolled_back_view(tmp_path):
    """POST abort rolls the rollout back with the operator's reason."""
    fleet = rolling()
    async with (
        admin(tmp_path, fleet.engine) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        view = (await client.post(f"{PLUGIN}/abort")).json()
        assert (view["phase"], view["reason"]) == ("RolledBack", "aborted by an operator")


async def test_a_get_or_a_web_page_cannot_steer(tmp_path):
    """GET on a steering path is a 405; a POST carrying a browser's Origin header is a 403
    naming the command to use; neither changes the rollout."""
    fleet = rolling()
    async with (
        admin(tmp_path, fleet.engine) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        for action in ("pause", "resume", "promote", "abort"):
            assert (await client.get(f"{PLUGIN}/{action}")).status_code == 405, action
        page = await client.post(f"{PLUGIN}/abort", headers={"Origin": "https://evil.example"})
        assert page.status_code == 403
        assert "wasmxds rollout" in page.text
    assert fleet.engine.view("default/p")["phase"] == "Progressing"


async def test_debug_public_opens_reading_but_never_steering(tmp_path):
    """On 0.0.0.0 the page follows the debug rules (403, then 200 with --debug-public), and a
    POST is a 403 naming --debug-identity even with --debug-public."""
    fleet = rolling()
    for public in (False, True):
        async with (
            admin(tmp_path, fleet.engine, host="0.0.0.0", debug_public=public) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as client,
        ):
            page = await client.get("/debug/rollouts")
            assert page.status_code == (200 if public else 403)
            refused = await client.post(f"{PLUGIN}/pause")
            print(refused.text.strip())
            assert refused.status_code == 403
            assert "--debug-identity" in refused.text
            assert "never steering" in refused.text
    assert fleet.engine.view("default/p")["phase"] == "Progressing"


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, AdminTls, ssl.SSLContext]:
    """A CA, the admin server's TLS files (client certificates from the same CA), and a client
    context that trusts the server but presents no certificate."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "admin.pem", tmp_path / "admin-key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(cert)
    server.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return ca, AdminTls(cert, key, ca_file), ssl.create_default_context(cafile=ca_file)


def client_context(ca: trustme.CA, tmp_path: Path, namespace: str) -> ssl.SSLContext:
    """A client context presenting a SPIFFE certificate of ``namespace`` from ``ca``."""
    uri = f"spiffe://cluster.local/ns/{namespace}/sa/envoy"
    cert, key = client_cert(ca, uri).write(tmp_path, f"client-{namespace}")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.load_cert_chain(cert, key)
    return context


async def test_off_loopback_only_a_debug_identity_certificate_steers(tmp_path, pki):
    """With an admin client CA on 0.0.0.0: no certificate, or a proxy's, is a 403 saying
    why; the certificate --debug-identity names pauses the rollout."""
    ca, tls, anonymous = pki
    fleet = rolling()
    proxy = client_context(ca, tmp_path, "team-a")
    ops = client_context(ca, tmp_path, "ops")
    async with admin(
        tmp_path,
        fleet.engine,
        host="0.0.0.0",
        tls=tls,
        debug_public=True,
        debug_identities=["spiffe://cluster.local/ns/ops/*"],
    ) as base:
        for context, expected in (
            (anonymous, "this connection presented none"),
            (proxy, "spiffe://cluster.local/ns/team-a/sa/envoy is not one that may steer"),
        ):
            async with httpx.AsyncClient(base_url=base, verify=context, timeout=10) as client:
                refused = await client.post(f"{PLUGIN}/pause")
                print(refused.text.strip())
                assert refused.status_code == 403
                assert expected in refused.text
        assert fleet.engine.view("default/p")["phase"] == "Progressing"
        async with httpx.AsyncClient(base_url=base, verify=ops, timeout=10) as client:
            response = await client.post(f"{PLUGIN}/pause")
            assert (response.status_code, response.json()["phase"]) == (200, "Paused")


async def test_without_a_rollout_engine_the_page_is_empty_and_posts_find_nothing(tmp_path):
    """An admin server given no engine lists no rollouts and answers a steering POST with 404."""
    async with (
        admin(tmp_path, None) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        assert (await client.get("/debug/rollouts")).json() == []
        assert (await client.post(f"{PLUGIN}/pause")).status_code == 404
