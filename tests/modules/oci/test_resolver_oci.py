"""The resolver with the real OCI fetcher: pull secrets, pull policies, repulls, restarts."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog

from e2e.harness.images import artifact_image, compat_image
from e2e.harness.registry import Registry
from tests.modules.conftest import Signal
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher, settings
from wasmxds.api.objects import ObjectKey
from wasmxds.api.parse import parse_text
from wasmxds.api.secrets import PullSecret
from wasmxds.backoff import Backoff
from wasmxds.errors import FetchError, MissingPullSecretError, RegistryAuthError
from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, ModuleRequest, Pending, PullPolicy, Ready

SECRET = ObjectKey("team", "regcred")
# Long enough that only a prompt restart (not the backoff) can make a test pass.
SLOW_RETRY = Backoff(initial=600.0, max=600.0)
FAST_RETRY = Backoff(initial=0.05, max=0.2)
MODULE_DIGEST = hashlib.sha256(WASM).hexdigest()


def pull_secret(host: str, password: str) -> PullSecret:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    text = (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        "metadata:\n  name: regcred\n  namespace: team\n"
        f"stringData:\n  .dockerconfigjson: '{config}'\n"
    )
    (found,) = parse_text(text, "secret.yaml").secrets
    return found


class Harness:
    def __init__(self, resolver: ModuleResolver, changes: Signal, secrets: PullSecrets) -> None:
        self.resolver = resolver
        self.changes = changes
        self.secrets = secrets

    async def settle(self, request: ModuleRequest, done: Callable[[object], bool]) -> object:
        """Resolve until ``done(outcome)``; the deadline only guards against hangs."""
        self.resolver.resolve(request)
        await self.changes.wait_for(lambda: done(self.resolver.resolve(request)), deadline=15.0)
        return self.resolver.resolve(request)


@contextlib.asynccontextmanager
async def resolving(
    tmp_path: Path, *, retry: Backoff = FAST_RETRY, index: ModuleIndex | None = None
) -> AsyncIterator[Harness]:
    store = ModuleStore(tmp_path / "cache")
    index = index if index is not None else ModuleIndex.load(store.root / INDEX_FILE)
    secrets = PullSecrets()
    fetcher = OciFetcher(
        store=store,
        index=index,
        settings=settings(),
        pull_secrets=secrets,
        docker_config=lambda: tmp_path / "none" / "config.json",
    )
    changes = Signal()
    resolver = ModuleResolver(
        store=store,
        fetchers={"oci": fetcher},
        on_change=changes.notify,
        retry=retry,
        index=index,
        pull_secrets=secrets,
    )
    task = asyncio.create_task(resolver.run())
    try:
        yield Harness(resolver, changes, secrets)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fetcher.aclose()
        await index.flush()  # what the service does at shutdown


async def test_missing_secret_fails_then_recovers_when_it_appears(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """A missing pull secret fails at once naming it; once it appears the pull starts at once."""
    await asyncio.to_thread(
        pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", artifact_image(WASM)
    )
    request = ModuleRequest(url=auth_registry.url("p"), pull_secret=SECRET)
    async with resolving(tmp_path, retry=SLOW_RETRY) as h:
        outcome = h.resolver.resolve(request)
        assert isinstance(outcome, Failed)
        assert isinstance(outcome.error, MissingPullSecretError)
        assert "team/regcred" in str(outcome.error)
        h.secrets.update({SECRET: pull_secret(auth_registry.host, PASSWORD)})
        ready = await h.settle(request, lambda o: isinstance(o, Ready))
        assert isinstance(ready, Ready)
        assert ready.module.digest == MODULE_DIGEST  # type: ignore[union-attr]


async def test_fixed_secret_retries_without_waiting_for_backoff(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """A pull that failed with wrong credentials starts over as soon as the secret changes."""
    await asyncio.to_thread(
        pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", artifact_image(WASM)
    )
    request = ModuleRequest(url=auth_registry.url("p"), pull_secret=SECRET)
    async with resolving(tmp_path, retry=SLOW_RETRY) as h:
        h.secrets.update({SECRET: pull_secret(auth_registry.host, "wrong")})
        failed = await h.settle(request, lambda o: isinstance(o, Failed))
        assert isinstance(failed, Failed)
        assert isinstance(failed.error, RegistryAuthError)
        assert failed.next_retry_in > 60
        h.secrets.update({SECRET: pull_secret(auth_registry.host, PASSWORD)})
        assert isinstance(await h.settle(request, lambda o: isinstance(o, Ready)), Ready)


async def test_pull_policies(registry: Registry, tmp_path: Path) -> None:
    """A new plugin generation re-resolves the tag under Always but not under IfNotPresent."""
    push = pusher(registry).push
    await asyncio.to_thread(push, "policy", "v1", artifact_image(WASM))
    url = registry.url("policy")
    async with resolving(tmp_path) as h:
        for policy in PullPolicy:
            first = ModuleRequest(url=url, pull_policy=policy, generation="g1")
            await h.settle(first, lambda o: isinstance(o, Ready))
        other = WASM + b"\0"
        await asyncio.to_thread(push, "policy", "v1", compat_image(other))
        kept = h.resolver.resolve(ModuleRequest(url=url, generation="g2"))
        assert isinstance(kept, Ready)
        assert kept.module.digest == MODULE_DIGEST  # type: ignore[union-attr]
        always = ModuleRequest(url=url, pull_policy=PullPolicy.ALWAYS, generation="g2")
        moved = await h.settle(
            always,
            lambda o: isinstance(o, Ready) and o.module.digest != MODULE_DIGEST,  # type: ignore[union-attr]
        )
        assert moved.module.digest == hashlib.sha256(other).hexdigest()  # type: ignore[attr-defined]


async def test_repull_picks_up_a_moved_tag(registry: Registry, tmp_path: Path) -> None:
    """--repull-interval: an Always module whose tag moved is replaced with no plugin change."""
    push = pusher(registry).push
    await asyncio.to_thread(push, "repull", "latest", artifact_image(WASM))
    request = ModuleRequest(url=registry.url("repull", "latest"), pull_policy=PullPolicy.ALWAYS)
    async with resolving(tmp_path) as h:
        await h.settle(request, lambda o: isinstance(o, Ready))
        other = WASM + b"\0\0"
        await asyncio.to_thread(push, "repull", "latest", artifact_image(other))
        assert h.resolver.repull(0.0) == 1
        moved = await h.settle(
            request,
            lambda o: isinstance(o, Ready) and o.module.digest != MODULE_DIGEST,  # type: ignore[union-attr]
        )
        assert moved.module.digest == hashlib.sha256(other).hexdigest()  # type: ignore[attr-defined]


async def test_restart_with_warm_cache_and_registry_down(
    registry: Registry, tmp_path: Path
) -> None:
    """After a restart, with the registry stopped, known modules are served from the index."""
    await asyncio.to_thread(pusher(registry).push, "warm", "v1", artifact_image(WASM))
    url = registry.url("warm")
    requests = [ModuleRequest(url=url, pull_policy=policy) for policy in PullPolicy]
    async with resolving(tmp_path) as h:
        for request in requests:
            await h.settle(request, lambda o: isinstance(o, Ready))
    await registry.stop()
    index = ModuleIndex.load(tmp_path / "cache" / INDEX_FILE)
    async with resolving(tmp_path, index=index) as h:
        if_not_present, always = requests
        served = h.resolver.resolve(if_not_present)
        assert isinstance(served, Ready)
        assert served.stale is None
        assert isinstance(h.resolver.resolve(always), Pending)
        stale = await h.settle(always, lambda o: isinstance(o, Ready))
        assert isinstance(stale, Ready)
        assert stale.module == served.module
        assert isinstance(stale.stale, FetchError)
        assert "cannot reach registry" in str(stale.stale)


async def test_manifest_digest_pins_without_network(registry: Registry, tmp_path: Path) -> None:
    """A sha256 (or @sha256:) naming a manifest we pulled before is served with no request."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(registry).push, "pin", "v1", image)
    async with resolving(tmp_path) as h:
        await h.settle(ModuleRequest(url=registry.url("pin")), lambda o: isinstance(o, Ready))
    await registry.stop()
    index = ModuleIndex.load(tmp_path / "cache" / INDEX_FILE)
    async with resolving(tmp_path, index=index) as h:
        for request in (
            ModuleRequest(url=registry.url("pin", "other"), sha256=image.digest),
            ModuleRequest(url=f"oci://{registry.host}/pin@sha256:{image.digest}"),
        ):
            outcome = h.resolver.resolve(request)
            assert isinstance(outcome, Ready), request


async def test_credentials_never_reach_logs_errors_or_status(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """Passwords and auth strings appear in no log event, error, status row or repr."""
    await asyncio.to_thread(
        pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", artifact_image(WASM)
    )
    request = ModuleRequest(url=auth_registry.url("p"), pull_secret=SECRET)
    wrong, right = (
        pull_secret(auth_registry.host, "WrongPassw0rd"),
        pull_secret(auth_registry.host, PASSWORD),
    )
    with structlog.testing.capture_logs() as events:
        async with resolving(tmp_path, retry=SLOW_RETRY) as h:
            h.secrets.update({SECRET: wrong})
            failed = await h.settle(request, lambda o: isinstance(o, Failed))
            h.secrets.update({SECRET: right})
            ready = await h.settle(request, lambda o: isinstance(o, Ready))
            texts = [
                repr(events),
                str(failed),
                repr(failed),
                repr(ready),
                repr(h.secrets),
                repr(right),
            ]
    assert any(event["event"] == "module.fetch_failed" for event in events)
    forbidden = [
        PASSWORD,
        "WrongPassw0rd",
        base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    ]
    for text in texts:
        for secret in forbidden:
            assert secret not in text
