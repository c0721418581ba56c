"""Secrets for plugin configuration from the fake API server: the labelled Secrets of each
namespace whose plugins reference any, one list/watch per namespace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.sources.kube.fakeapi import FakeKube, running_fake_kube, wasmplugin
from tests.sources.test_kubernetes import running_source
from wasmxds.api.configsecrets import ANNOTATION
from wasmxds.api.objects import ObjectKey
from wasmxds.sources.state import SourceState

API_KEYS = ObjectKey("team-a", "api-keys")
LABEL = "secrets.wasmxds.io/plugin-config"
SELECTOR = f"{LABEL}=true"


@pytest.fixture(name="fake")
async def _fake() -> AsyncIterator[FakeKube]:
    async with running_fake_kube() as fake:
        yield fake


def opaque(
    name: str, namespace: str, value: str, *, labelled: bool = True, **extra: Any
) -> dict[str, Any]:
    """An Opaque Secret, opted in to plugin configuration unless not ``labelled``."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labelled:
        metadata["labels"] = {LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {"primary": value},
        **extra,
    }


def referencing(name: str, namespace: str, refs: str) -> dict[str, Any]:
    manifest = wasmplugin(name, namespace, config={"headers": {"x-fixed": "1"}})
    manifest["metadata"]["annotations"] = {ANNOTATION: refs}
    return manifest


def value_of(state: SourceState, key: ObjectKey = API_KEYS) -> bytes | None:
    secret = state.config_secrets.get(key)
    return None if secret is None else secret.data.get("primary")


async def test_referenced_secret_is_watched_by_label_and_followed(fake, tmp_path):
    """The labelled Secrets of the plugin's namespace are listed and watched (labelSelector,
    no per-name selector); only the referenced one is handed on; edits arrive; the watch
    stops with the last reference."""
    fake.apply(opaque("api-keys", "team-a", "first"))
    fake.apply(opaque("labelled-unreferenced", "team-a", "not-referenced"))
    fake.apply(opaque("api-keys", "team-b", "other-namespace"))
    fake.apply(referencing("p", "team-a", "headers.x-api-key=api-keys/primary"))
    async with running_source(fake, tmp_path) as running:
        state = running.source.state
        assert list(state.config_secrets) == [API_KEYS]
        assert value_of(state) == b"first"
        (listed,) = fake.list_requests("secrets")
        assert listed.path == "/api/v1/namespaces/team-a/secrets"
        assert listed.query["labelSelector"] == SELECTOR
        assert "fieldSelector" not in listed.query
        await running.watching(1, "secrets")
        (watch,) = fake.open_watches("secrets")
        assert watch.query["labelSelector"] == SELECTOR
        assert "first" not in repr(state)

        fake.apply(opaque("api-keys", "team-a", "second"))
        await running.until(lambda s: value_of(s) == b"second")

        fake.delete("WasmPlugin", "p", "team-a")
        await running.until(lambda s: not s.config_secrets)
        await fake.wait_for(lambda: not fake.open_watches("secrets"))


async def test_secret_created_later_arrives_and_a_wrong_type_is_reported(fake, tmp_path):
    """A Secret named before it exists arrives when created; one of another type is a
    problem naming the Secret and its type, never its content."""
    fake.apply(referencing("p", "team-a", "token=api-keys/primary"))
    async with running_source(fake, tmp_path) as running:
        assert not running.source.state.config_secrets
        await running.watching(1, "secrets")
        fake.apply(opaque("api-keys", "team-a", "tls-content", type="kubernetes.io/basic-auth"))
        state = await running.until(lambda s: bool(s.problems))
        (problem,) = state.problems
        assert problem.path == "kubernetes:team-a/api-keys"
        assert "of type 'kubernetes.io/basic-auth'" in problem.message
        assert "tls-content" not in repr(state)
        fake.apply(opaque("api-keys", "team-a", "good"))
        await running.until(lambda s: value_of(s) == b"good" and not s.problems)


async def test_unlabelled_secret_is_never_received_until_labelled(fake, tmp_path):
    """A referenced Secret without the opt-in label stays on the API server (not listed
    to wasmxds, not handed on); adding the label brings it in."""
    fake.apply(opaque("api-keys", "team-a", "private", labelled=False))
    fake.apply(referencing("p", "team-a", "token=api-keys/primary"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(1, "secrets")
        assert not running.source.state.config_secrets
        fake.apply(opaque("api-keys", "team-a", "shared"))
        await running.until(lambda s: value_of(s) == b"shared")


async def test_watches_are_bounded_by_namespaces_not_references(fake, tmp_path):
    """Ten plugins with thirty distinct references each in one namespace, and one in
    another, make two lists and two watches (one per namespace), not three hundred."""
    for number in range(10):
        refs = "\n".join(f"k{i}=s-{number}-{i}/primary" for i in range(30))
        fake.apply(referencing(f"p{number}", "team-a", refs))
    fake.apply(referencing("q", "team-b", "k=other/primary"))
    fake.apply(opaque("s-3-7", "team-a", "value"))
    async with running_source(fake, tmp_path) as running:
        await running.watching(2, "secrets")
        watches = fake.open_watches("secrets")
        lists = fake.list_requests("secrets")
        print(f"{len(lists)} lists, {len(watches)} watches for 301 references")
        assert sorted(w.path for w in watches) == [
            "/api/v1/namespaces/team-a/secrets",
            "/api/v1/namespaces/team-b/secrets",
        ]
        assert len(lists) == 2
        assert list(running.source.state.config_secrets) == [ObjectKey("team-a", "s-3-7")]
