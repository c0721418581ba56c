"""The Kubernetes source against the fake API server: real HTTPS, real list/watch protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.sources.kube.fakeapi import FakeKube, pull_secret, running_fake_kube, wasmplugin
from wasmxds.api.objects import ObjectKey
from wasmxds.backoff import Backoff
from wasmxds.sources.kube import client as kube_client
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.protocol import ClientConfig
from wasmxds.sources.kubernetes import KubernetesSource
from wasmxds.sources.state import SourceState

FAST = Backoff(initial=0.02, factor=2.0, max=0.2, jitter=0.1)
KEY = ObjectKey("default", "one")


def value_of(state: SourceState, key: ObjectKey = KEY) -> str | None:
    found = state.plugins.get(key)
    if found is None:
        return None
    return found.spec.plugin_config.fields["value"].string_value


def plugin(
    name: str, value: str = "v1", namespace: str = "default", **extra: Any
) -> dict[str, Any]:
    return wasmplugin(
        name, namespace, url=f"http://modules.example/{name}.wasm", config={"value": value}, **extra
    )


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll client-side state (the fake cannot wake us for it)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def password_of(state: SourceState, key: ObjectKey) -> str | None:
    secret = state.secrets.get(key)
    found = secret.config.lookup("registry.example") if secret is not None else None
    return found.password if found is not None else None


@dataclass
class Running:
    """A running KubernetesSource and ways to wait for it."""

    source: KubernetesSource
    fake: FakeKube
    changes: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_change(self) -> None:
        self.changes += 1
        self.changed.set()

    async def until(
        self, check: Callable[[SourceState], bool], timeout: float = 10.0
    ) -> SourceState:
        async with asyncio.timeout(timeout):
            while not check(self.source.state):
                await self.changed.wait()
                self.changed.clear()
        return self.source.state

    async def watching(self, count: int, resource: str = "wasmplugins") -> None:
        """Until the client has opened ``count`` watches of ``resource`` in all."""
        await self.fake.wait_for(lambda: len(self.fake.watch_requests(resource)) >= count)
        await self.fake.wait_for(lambda: bool(self.fake.open_watches(resource)))

    async def failing(self, at_least: int = 2) -> None:
        """Until every plugin list/watch has failed ``at_least`` times in a row."""
        await eventually(lambda: min(r.failures for r in self.source.reflectors) >= at_least)


@contextlib.asynccontextmanager
async def running_source(
    fake: FakeKube,
    tmp_path: Path,
    *,
    config: ClientConfig | None = None,
    wait: bool = True,
    **options: Any,
) -> AsyncIterator[Running]:
    client = KubeClient(config or ClientConfig(kubeconfig=fake.kubeconfig(tmp_path / "kubeconfig")))
    running: Running
    source = KubernetesSource(
        client, on_change=lambda: running.on_change(), backoff=FAST, **options
    )
    running = Running(source, fake)
    task = asyncio.create_task(source.run())
    try:
        if wait:
            async with asyncio.timeout(10):
                await source.loaded.wait()
        yield running
    finally:
        task.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            await client.aclose()


@pytest.fixture(name="fake")
async def _fake() -> AsyncIterator[FakeKube]:
    async with running_fake_kube() as fake:
        yield fake


async def test_initial_list(fake, tmp_path):
    """The first list, in pages, brings every plugin with its resourceVersion and creation time."""
    for index in range(5):
        fake.apply(plugin(f"p{index}", namespace="default" if index % 2 else "team-a"))
    async with running_source(fake, tmp_path, page_size=2) as running:
        state = running.source.state
        assert sorted(str(key) for key in state.plugins) == [
            "default/p1", "default/p3", "team-a/p0", "team-a/p2", "team-a/p4",
        ]  # fmt: skip
        stored = fake.objects[("wasmplugins", "default", "p1")]["metadata"]
        found = state.plugins[ObjectKey("default", "p1")]
        assert found.resource_version == stored["resourceVersion"]
        assert found.creation_timestamp == stored["creationTimestamp"]
        assert found.generation == 1
        assert found.origin.path == "kubernetes:default/p1"
        assert state.problems == ()
        lists = fake.list_requests()
        assert [r.query.get("limit") for r in lists] == ["2", "2", "2"]
        assert all(r.authorized for r in fake.requests)
        assert running.changes == 1  # one notification for the whole initial list


async def test_added_modified_deleted(fake, tmp_path):
    """Watch events add, change and remove plugins."""
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        fake.apply(plugin("one", "v1"))
        await running.until(lambda s: value_of(s) == "v1")
        fake.apply(plugin("one", "v2"))
        state = await running.until(lambda s: value_of(s) == "v2")
        assert state.plugins[KEY].generation == 2
        fake.delete("WasmPlugin", "one")
        await running.until(lambda s: KEY not in s.plugins)


async def test_bookmark_advances_resource_version(fake, tmp_path):
    """A BOOKMARK moves the resume point forward without any object changing."""
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        assert fake.open_watches()[0].query["allowWatchBookmarks"] in ("true", "True")
        for _ in range(3):
            fake.bump()  # changes elsewhere move the resourceVersion on
        fake.send_bookmark()
        bookmark = str(fake.resource_version)
        await eventually(lambda: running.source.reflectors[0].resource_version == bookmark)
        fake.drop_watches()
        await running.watching(2)
        assert fake.watch_requests()[-1].query["resourceVersion"] == bookmark
        assert running.changes == 1


async def test_resume_after_dropped_connection(fake, tmp_path):
    """After a dropped connection the watch resumes from the last resourceVersion, no relist."""
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        seen = fake.apply(plugin("one", "v1"))["metadata"]["resourceVersion"]
        await running.until(lambda s: value_of(s) == "v1")
        fake.drop_watches()
        fake.apply(plugin("one", "v2"))  # while disconnected: replayed on resume
        await running.watching(2)
        assert fake.watch_requests()[-1].query["resourceVersion"] == seen
        await running.until(lambda s: value_of(s) == "v2")
        assert len(fake.list_requests()) == 1


@pytest.mark.parametrize("how", ["error-event", "error-event-on-resume", "http-410-on-resume"])
async def test_gone_relists(tmp_path, how):
    """410 Gone, in the stream or on resume, leads to a relist; deletions missed meanwhile show."""
    async with running_fake_kube(watch_gone="http" if how.startswith("http") else "event") as fake:
        fake.apply(plugin("one"))
        fake.apply(plugin("two"))
        async with running_source(fake, tmp_path) as running:
            await running.watching(1)
            if how == "error-event":
                fake.send_error(410)  # ends the watch: the delete below is not sent in it
                fake.delete("WasmPlugin", "two")
                fake.expire_history()
            else:
                # All in one step: the drop is queued before the delete reaches the watch.
                fake.drop_watches()
                fake.delete("WasmPlugin", "two")
                fake.apply(plugin("three"))
                fake.expire_history()
            await fake.wait_for(lambda: len(fake.list_requests()) == 2)
            state = await running.until(lambda s: ObjectKey("default", "two") not in s.plugins)
            assert KEY in state.plugins
            if how != "error-event":
                assert ObjectKey("default", "three") in state.plugins
            await running.watching(3 if how != "error-event" else 2)
            assert fake.watch_requests()[-1].query["resourceVersion"] == str(fake.resource_version)


async def test_server_down_keeps_last_state(fake, tmp_path):
    """While the API server is down nothing is removed; after it is back, changes flow again."""
    fake.apply(plugin("one", "v1"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        before = running.source.state
        await fake.stop()
        await running.failing(at_least=3)
        assert running.source.state.plugins.keys() == before.plugins.keys()
        assert value_of(running.source.state) == "v1"
        fake.apply(plugin("one", "v2"))  # changed while we could not see it
        await fake.start()
        await running.until(lambda s: value_of(s) == "v2")
        assert running.source.reflectors[0].failures == 0


async def test_server_errors_are_retried(fake, tmp_path):
    """5xx answers (to list and watch) are retried with backoff until they pass."""
    fake.apply(plugin("one", "v1"))
    fake.fail_next(503, count=2)
    async with running_source(fake, tmp_path) as running:
        assert value_of(running.source.state) == "v1"
        await running.watching(1)
        fake.fail_next(500, count=3)
        fake.drop_watches()
        fake.apply(plugin("one", "v2"))
        await running.until(lambda s: value_of(s) == "v2")
        assert len(fake.list_requests()) == 3  # two refused, one served; the watch resumed


async def test_invalid_object_reported_and_skipped(fake, tmp_path):
    """An invalid plugin is logged with namespace/name and field, and the others are unaffected."""
    fake.apply(plugin("good"))
    fake.apply(wasmplugin("bad", spec={"url": "http://modules.example/x.wasm", "phase": "LATER"}))
    with capture_logs() as logs:
        async with running_source(fake, tmp_path) as running:
            state = running.source.state
    assert list(state.plugins) == [ObjectKey("default", "good")]
    [problem] = state.problems
    assert problem.path == "kubernetes:default/bad"
    assert problem.message.startswith("spec.phase:")
    [logged] = [e for e in logs if e["event"] == "kubernetes.invalid_object"]
    assert logged["log_level"] == "warning"
    assert logged["object"] == "default/bad"
    assert logged["field"] == "spec.phase"


async def test_object_turning_invalid_keeps_last_good(fake, tmp_path):
    """A plugin that stops validating keeps serving its last valid version until fixed."""
    fake.apply(plugin("one", "v1"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        broken = plugin("one", "v2")
        broken["spec"]["sha256"] = "not-a-digest"
        fake.apply(broken)
        state = await running.until(lambda s: bool(s.problems))
        assert value_of(state) == "v1"
        messages = [p.message for p in state.problems]
        assert messages[0].startswith("spec.sha256:")
        assert "keeping the last valid version of WasmPlugin default/one" in messages[1]
        observed = running.source.observed()[KEY]
        assert observed.generation == 2
        assert observed.served
        assert observed.problems
        fake.apply(plugin("one", "v3"))
        state = await running.until(lambda s: value_of(s) == "v3")
        assert state.problems == ()


async def test_namespace_restriction(fake, tmp_path):
    """With --namespace, only those namespaces are listed and watched."""
    fake.apply(plugin("a", namespace="team-a"))
    fake.apply(plugin("b", namespace="team-b"))
    fake.apply(plugin("c", namespace="team-c"))
    async with running_source(fake, tmp_path, namespaces=("team-a", "team-c")) as running:
        assert sorted(k.namespace for k in running.source.state.plugins) == ["team-a", "team-c"]
        await running.watching(2)
        paths = {r.path for r in fake.requests}
        assert not any(p.endswith("/v1alpha1/wasmplugins") for p in paths)
        fake.apply(plugin("b2", namespace="team-b"))
        fake.apply(plugin("c2", namespace="team-c"))
        state = await running.until(lambda s: ObjectKey("team-c", "c2") in s.plugins)
        assert ObjectKey("team-b", "b2") not in state.plugins


async def test_pull_secrets_followed(fake, tmp_path):
    """Secrets named by plugins are picked up, followed, and dropped when no longer named."""
    fake.apply(pull_secret("creds", "team-a", password="first"))
    fake.apply(pull_secret("unnamed", "team-a"))
    fake.apply(pull_secret("tls", "team-a", secret_type="kubernetes.io/tls"))
    fake.apply(pull_secret("creds", "team-b"))
    oci = {"url": "oci://registry.example/filter:v1", "imagePullSecret": "creds"}
    fake.apply(wasmplugin("uses-creds", "team-a", spec=oci))
    creds = ObjectKey("team-a", "creds")
    async with running_source(fake, tmp_path) as running:
        state = running.source.state
        assert list(state.secrets) == [creds]
        assert password_of(state, creds) == "first"
        secret_lists = fake.list_requests("secrets")
        assert [r.path for r in secret_lists] == ["/api/v1/namespaces/team-a/secrets"]
        assert secret_lists[0].query["fieldSelector"] == "type=kubernetes.io/dockerconfigjson"
        await running.watching(1, "secrets")
        fake.apply(pull_secret("creds", "team-a", password="second"))
        await running.until(lambda s: password_of(s, creds) == "second")
        fake.delete("WasmPlugin", "uses-creds", "team-a")
        await running.until(lambda s: not s.secrets)
        await fake.wait_for(lambda: not fake.open_watches("secrets"))


async def test_secret_named_later_is_watched(fake, tmp_path):
    """A plugin that starts naming a Secret brings its namespace's secrets in."""
    fake.apply(pull_secret("creds", "team-a"))
    async with running_source(fake, tmp_path) as running:
        assert not fake.list_requests("secrets")
        await running.watching(1)
        spec = {"url": "oci://registry.example/filter:v1", "imagePullSecret": "creds"}
        fake.apply(wasmplugin("p", "team-a", spec=spec))
        await running.until(lambda s: ObjectKey("team-a", "creds") in s.secrets)


async def test_istio_secret_forms_follow_the_plugin_namespace_secret(fake, tmp_path):
    """`kubernetes://team-b/creds` in team-a follows team-a's creds, never team-b's."""
    fake.apply(pull_secret("creds", "team-a"))
    fake.apply(pull_secret("creds", "team-b"))
    spec = {
        "url": "oci://registry.example/filter:v1",
        "imagePullSecret": "kubernetes://team-b/creds",
    }
    fake.apply(wasmplugin("p", "team-a", spec=spec))
    async with running_source(fake, tmp_path) as running:
        state = await running.until(lambda s: bool(s.secrets))
        assert list(state.secrets) == [ObjectKey("team-a", "creds")]
        assert [r.path for r in fake.list_requests("secrets")] == [
            "/api/v1/namespaces/team-a/secrets"
        ]


async def test_status_only_change_is_not_a_change(fake, tmp_path):
    """A status write (ours or anyone's) updates resourceVersion but triggers no push."""
    fake.apply(plugin("one"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        before = running.source.state.plugins[KEY]
        await running.source.client.patch_status(KEY, {"status": {"proxies": 1}})
        version = fake.objects[("wasmplugins", "default", "one")]["metadata"]["resourceVersion"]
        await eventually(lambda: running.source.reflectors[0].resource_version == version)
        after = running.source.state.plugins[KEY]
        assert after.resource_version == version != before.resource_version
        assert after.fingerprint == before.fingerprint
        assert running.source.observed()[KEY].status == {"proxies": 1}
        assert running.changes == 1


async def test_large_object(fake, tmp_path):
    """An event far larger than aiohttp's 128 KiB line limit still arrives."""
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        big = "x" * (600 << 10)
        fake.apply(plugin("one", big))
        await running.until(lambda s: value_of(s) == big)


async def test_in_cluster_config(fake, tmp_path, monkeypatch):
    """Without a kubeconfig the pod's service account token, CA and service address are used."""
    token, ca, env = fake.service_account(tmp_path / "serviceaccount")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fake.apply(plugin("one"))
    config = ClientConfig(kubeconfig=None, token_file=token, ca_file=ca)
    async with running_source(fake, tmp_path, config=config) as running:
        assert KEY in running.source.state.plugins
        assert all(r.authorized for r in fake.requests)


async def test_refused_credentials_reported(fake, tmp_path):
    """A token the server refuses is logged with an RBAC hint, and the source is not loaded."""
    config = ClientConfig(kubeconfig=fake.kubeconfig(tmp_path / "kubeconfig", token="wrong"))
    with capture_logs() as logs:
        async with running_source(fake, tmp_path, config=config, wait=False) as running:
            await running.failing(at_least=2)
            assert not running.source.loaded.is_set()
    failure = next(e for e in logs if e["event"] == "kubernetes.request_failed")
    assert "HTTP 401" in failure["error"]
    assert "RBAC" in failure["hint"]
    assert "wrong" not in repr(logs)


async def test_rotated_token_reloaded(fake, tmp_path, monkeypatch):
    """After a 401 the kubeconfig is read again, so a rotated token (exec plugins, OIDC) works."""
    monkeypatch.setattr(kube_client, "_RELOAD_AFTER", 0.0)
    fake.apply(plugin("one", "v1"))
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    async with running_source(
        fake, tmp_path, config=ClientConfig(kubeconfig=kubeconfig)
    ) as running:
        await running.watching(1)
        fake.token = "rotated"
        fake.kubeconfig(kubeconfig)
        fake.drop_watches()
        fake.apply(plugin("one", "v2"))
        await running.until(lambda s: value_of(s) == "v2")
        assert any(not r.authorized for r in fake.requests)


async def test_object_past_the_input_limits_keeps_last_good(fake, tmp_path):
    """A plugin edited past the value limit is logged as invalid; its last version stays."""
    fake.apply(plugin("one", "v1"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        huge = plugin("one", "v2")
        huge["spec"]["pluginConfig"]["rules"] = [0] * 300_000
        with capture_logs() as logs:
            fake.apply(huge)
            state = await running.until(lambda s: bool(s.problems))
        assert value_of(state) == "v1"
        error, note = state.problems
        assert error.path == "kubernetes:default/one"
        assert error.message.startswith("the object expands to more than 250000 values")
        assert "keeping the last valid version of WasmPlugin default/one" in note.message
        logged = [e for e in logs if e["event"] == "kubernetes.invalid_object"]
        assert any("more than 250000 values" in e["message"] for e in logged), logs
        assert running.source.observed()[KEY].problems


async def test_large_object_is_validated_off_the_event_loop(fake, tmp_path):
    """A 1.7 MB WasmPlugin within the limits is checked in a thread: the loop keeps ticking."""
    items = [{"name": f"item{i}", "weight": i, "tags": ["a", "b"]} for i in range(30_000)]
    async with running_source(fake, tmp_path) as running:
        await running.watching(1)
        big = plugin("one", "big")
        big["spec"]["pluginConfig"]["items"] = items
        worst = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                before = loop.time()
                await asyncio.sleep(0.005)
                worst = max(worst, loop.time() - before - 0.005)

        ticking = asyncio.create_task(ticker())
        started = asyncio.get_running_loop().time()
        fake.apply(big)
        state = await running.until(lambda s: value_of(s) == "big", timeout=60)
        took = asyncio.get_running_loop().time() - started
        stop.set()
        await ticking
        print(
            f"1.7 MB plugin served after {took:.2f} s; worst event-loop stall {worst * 1000:.0f} ms"
        )
        assert not state.problems
        assert worst < 0.5, "the event loop stalled while the object was validated"
