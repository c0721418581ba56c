"""The fake API server itself, checked with a plain HTTP client against the real protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.sources.kube.fakeapi import FakeKube, pull_secret, running_fake_kube, wasmplugin

PLUGINS = "/apis/extensions.istio.io/v1alpha1/wasmplugins"


class Api:
    """A bare aiohttp client for the fake: no Kubernetes library involved."""

    def __init__(self, fake: FakeKube, session: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.session = session
        self.headers = {"Authorization": f"Bearer {fake.token}"}

    async def get(self, path: str, **query: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(
            self.fake.url + path, params=query, headers=self.headers
        ) as response:
            return response.status, await response.json()

    async def events(self, path: str, count: int, **query: str) -> list[dict[str, Any]]:
        """The first ``count`` events of a watch (fewer if the server ends it)."""
        found: list[dict[str, Any]] = []
        async with self.session.get(
            self.fake.url + path, params={"watch": "1", **query}, headers=self.headers
        ) as response:
            assert response.status == 200
            assert response.headers["Transfer-Encoding"] == "chunked"
            async for line in response.content:
                found.append(json.loads(line))
                if len(found) == count:
                    break
        return found


@pytest.fixture(name="fake")
async def _fake() -> AsyncIterator[FakeKube]:
    async with running_fake_kube() as fake:
        yield fake


@contextlib.asynccontextmanager
async def api_for(fake: FakeKube) -> AsyncIterator[Api]:
    assert fake.ca is not None
    context = ssl.create_default_context()
    fake.ca.configure_trust(context)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield Api(fake, session)


@pytest.fixture(name="api")
async def _api(fake: FakeKube) -> AsyncIterator[Api]:
    async with api_for(fake) as api:
        yield api


async def test_requires_token(fake, api):
    """Requests without the bearer token get a 401 Status."""
    api.headers = {"Authorization": "Bearer nope"}
    status, body = await api.get(PLUGINS)
    assert status == 401
    assert (body["kind"], body["code"]) == ("Status", 401)


async def test_list_pages_and_expiry(fake, api):
    """limit/continue pages come from one snapshot; a continue token dies with compaction."""
    for name in "abc":
        fake.apply(wasmplugin(name))
    status, first = await api.get(PLUGINS, limit="2")
    assert status == 200
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["items"][0]["kind"] == "WasmPlugin"
    fake.apply(wasmplugin("d"))
    _, second = await api.get(PLUGINS, limit="2", **{"continue": first["metadata"]["continue"]})
    assert [i["metadata"]["name"] for i in second["items"]] == ["c"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    _, again = await api.get(PLUGINS, limit="1")
    fake.expire_history()
    status, body = await api.get(PLUGINS, limit="1", **{"continue": again["metadata"]["continue"]})
    assert (status, body["reason"]) == (410, "Expired")


async def test_secret_lists(fake, api):
    """Secret list items carry no kind/apiVersion; the type field selector filters."""
    fake.apply(pull_secret("pull"))
    fake.apply(pull_secret("tls", secret_type="kubernetes.io/tls"))
    _, body = await api.get(
        "/api/v1/namespaces/default/secrets", fieldSelector="type=kubernetes.io/dockerconfigjson"
    )
    assert [i["metadata"]["name"] for i in body["items"]] == ["pull"]
    assert "kind" not in body["items"][0]
    status, _ = await api.get("/api/v1/namespaces/default/secrets", fieldSelector="data=x")
    assert status == 400


async def test_watch_replays_and_starts_fresh(fake, api):
    """A watch from a version replays what followed; one without starts with ADDED of all."""
    version = fake.apply(wasmplugin("a"))["metadata"]["resourceVersion"]
    fake.apply(wasmplugin("a", config={"x": "1"}))
    fake.delete("WasmPlugin", "a")
    fake.apply(wasmplugin("b"))
    replay = await api.events(PLUGINS, 3, resourceVersion=version)
    assert [e["type"] for e in replay] == ["MODIFIED", "DELETED", "ADDED"]
    assert replay[0]["object"]["metadata"]["generation"] == 2
    fresh = await api.events(PLUGINS, 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in fresh] == [("ADDED", "b")]


@pytest.mark.parametrize("mode", ["event", "http"])
async def test_watch_too_old(mode):
    """A watch from a compacted version is refused with 410, in the stream or as HTTP."""
    async with running_fake_kube(watch_gone=mode) as fake, api_for(fake) as api:
        old = fake.apply(wasmplugin("a"))["metadata"]["resourceVersion"]
        fake.apply(wasmplugin("b"))
        fake.expire_history()
        if mode == "event":
            [event] = await api.events(PLUGINS, 2, resourceVersion=old)
            assert event["type"] == "ERROR"
            assert (event["object"]["kind"], event["object"]["code"]) == ("Status", 410)
        else:
            status, body = await api.get(PLUGINS, watch="true", resourceVersion=old)
            assert (status, body["code"]) == (410, 410)


async def test_bookmarks_only_when_asked(fake, api):
    """BOOKMARK events go only to watches that set allowWatchBookmarks."""
    version = str(fake.bump())
    fake.send_bookmark()  # nobody is watching yet: nothing to deliver
    await_events = api.events(PLUGINS, 1, resourceVersion=version, allowWatchBookmarks="true")

    task = asyncio.create_task(await_events)
    await fake.wait_for(lambda: bool(fake.open_watches()))
    fake.bump()
    fake.send_bookmark()
    [event] = await task
    assert event["type"] == "BOOKMARK"
    assert event["object"]["metadata"]["resourceVersion"] == str(fake.resource_version)


async def test_watch_timeout_and_label_moves(fake, api):
    """A label change out of a selector is a DELETED event; timeoutSeconds ends the stream."""
    version = fake.apply(wasmplugin("a", labels={"team": "x"}))["metadata"]["resourceVersion"]
    fake.apply(wasmplugin("a", labels={"team": "y"}))
    events = await api.events(
        PLUGINS, 5, resourceVersion=version, labelSelector="team=x", timeoutSeconds="1"
    )
    assert [e["type"] for e in events] == ["DELETED"]


async def test_status_patch(fake, api):
    """Only a merge patch on /status is taken; it changes status and resourceVersion only."""
    before = fake.apply(wasmplugin("a"))
    path = f"{fake.url}/apis/extensions.istio.io/v1alpha1/namespaces/default/wasmplugins/a/status"
    body = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}, "spec": {"url": "x"}}
    headers = {**api.headers, "Content-Type": "application/strategic-merge-patch+json"}
    async with api.session.patch(path, json=body, headers=headers) as response:
        assert response.status == 415
    headers["Content-Type"] = "application/merge-patch+json"
    async with api.session.patch(path, json=body, headers=headers) as response:
        assert response.status == 200
        after = await response.json()
    assert after["status"] == body["status"]
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert [p.body for p in fake.status_patches] == [body]


async def test_dropped_and_restarted(fake, api):
    """drop_watches cuts a stream mid-way; stop/start serves again on the same port."""

    task = asyncio.create_task(api.events(PLUGINS, 5, resourceVersion=str(fake.resource_version)))
    await fake.wait_for(lambda: bool(fake.open_watches()))
    fake.drop_watches()
    with pytest.raises(aiohttp.ClientPayloadError):
        await task
    port = fake.port
    await fake.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.get(PLUGINS)
    await fake.start()
    assert fake.port == port
    status, _ = await api.get(PLUGINS)
    assert status == 200
