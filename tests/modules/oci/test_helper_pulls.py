"""Pulls from a real htpasswd registry with credentials a docker credential helper answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from e2e.harness.images import artifact_image
from e2e.harness.registry import Registry
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher, settings
from tests.modules.oci.helperscripts import HelperScripts, path_with
from wasmxds.errors import RegistryAuthError
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperScripts:
    found = HelperScripts(tmp_path / "bin")
    monkeypatch.setenv("PATH", path_with(found.path_entry))
    return found


@pytest.fixture
async def private(auth_registry: Registry) -> Registry:
    push = pusher(auth_registry, basic=(USER, PASSWORD)).push
    await asyncio.to_thread(push, "one", "v1", artifact_image(WASM))
    await asyncio.to_thread(push, "two", "v1", artifact_image(WASM + b"\x00"))
    return auth_registry


@pytest.fixture
async def helper_fetcher(
    store: ModuleStore, index: ModuleIndex, tmp_path: Path, private: Registry
) -> AsyncIterator[OciFetcher]:
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"credHelpers": {private.host: "vault"}}))
    fetcher = OciFetcher(
        store=store,
        index=index,
        settings=settings(credential_helpers=frozenset({"vault"})),
        docker_config=lambda: config,
    )
    try:
        yield fetcher
    finally:
        await fetcher.aclose()


async def test_pulls_use_the_helpers_answer_and_share_it(
    scripts: HelperScripts, private: Registry, helper_fetcher: OciFetcher
) -> None:
    """Two images from the helper's registry pull with one helper run between them."""
    scripts.answering("vault", USER, PASSWORD)
    one = await helper_fetcher.fetch(ModuleRequest(url=private.url("one")))
    two = await helper_fetcher.fetch(ModuleRequest(url=private.url("two")))
    assert one.module.path.read_bytes() == WASM
    assert two.module.path.read_bytes() == WASM + b"\x00"
    assert scripts.calls("vault") == [private.host]


async def test_refused_helper_answer_is_asked_for_again(
    scripts: HelperScripts, private: Registry, helper_fetcher: OciFetcher
) -> None:
    """A 401 with the helper's (stale) password drops it; the next pull asks again and works."""
    scripts.from_file("vault")
    scripts.set_answer("vault", USER, "stale-password")
    with pytest.raises(RegistryAuthError, match="credential helper docker-credential-vault") as e:
        await helper_fetcher.fetch(ModuleRequest(url=private.url("one")))
    assert "stale-password" not in str(e.value)
    scripts.set_answer("vault", USER, PASSWORD)
    fetched = await helper_fetcher.fetch(ModuleRequest(url=private.url("one")))
    assert fetched.module.path.read_bytes() == WASM
    assert len(scripts.calls("vault")) == 2
