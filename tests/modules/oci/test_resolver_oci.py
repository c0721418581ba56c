"""The resolver with the real OCI fetcher: pull secrets, pull policies, repulls, restarts,
and access to cached modules per credentials."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
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
from wasmxds.errors import (
    FetchError,
    MissingPullSecretError,
    ModuleAccessDeniedError,
    RegistryAuthError,
)
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


def pull_secret(host: str, password: str, key: ObjectKey = SECRET) -> PullSecret:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    text = (
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        f"metadata:\n  name: {key.name}\n  namespace: {key.namespace}\n"
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
    tmp_path: Path,
    *,
    retry: Backoff = FAST_RETRY,
    index: ModuleIndex | None = None,
    access_ttl: float = 300.0,
    clock: Callable[[], float] = time.monotonic,
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
        access_ttl=access_ttl,
        clock=clock,
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


# ------------------------------------------------------------ access per credentials

TEAM_A, TEAM_B, TEAM_C = (ObjectKey(ns, "regcred") for ns in ("team-a", "team-b", "team-c"))


def _requests(registry: Registry, digest: str) -> int:
    """How many times the registry was asked for manifest ``digest`` (hex) by digest."""
    return registry.log_text().count(f"/manifests/sha256:{digest}")


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition``; the deadline only guards against hangs."""
    async with asyncio.timeout(15.0):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


async def test_cached_digest_needs_this_plugins_own_credentials(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """Naming a cached private digest without credentials that can read it gets nothing."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", image)
    pinned = f"oci://{auth_registry.host}/p@sha256:{image.digest}"
    host = auth_registry.host
    async with resolving(tmp_path, retry=SLOW_RETRY) as h:
        h.secrets.update(
            {
                TEAM_A: pull_secret(host, PASSWORD, TEAM_A),
                TEAM_B: pull_secret(host, "wrong-password", TEAM_B),
                TEAM_C: pull_secret(host, PASSWORD, TEAM_C),
            }
        )
        owner = ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A)
        await h.settle(owner, lambda o: isinstance(o, Ready))
        blobs = auth_registry.log_text().count("/blobs/")
        borrowers = [
            ModuleRequest(url=auth_registry.url("p"), sha256=image.digest, pull_secret=TEAM_B),
            ModuleRequest(url=pinned, pull_secret=TEAM_B),
            ModuleRequest(url=pinned),
            ModuleRequest(url=auth_registry.url("p"), sha256=MODULE_DIGEST),
        ]
        for request in borrowers:
            assert isinstance(h.resolver.resolve(request), Pending), request
            failed = await h.settle(request, lambda o: isinstance(o, Failed))
            assert isinstance(failed, Failed), request
            assert isinstance(failed.error, ModuleAccessDeniedError), failed.error
            assert failed.error.reason == "module_access_denied"
            assert f"{host}/p@sha256:{image.digest}" in str(failed.error)
            assert "this plugin may not use it" in str(failed.error)
        denied = h.resolver.resolve(borrowers[0])
        assert isinstance(denied, Failed)
        assert "pull secret team-b/regcred" in str(denied.error)
        assert "no pull secret and no docker config" in str(h.resolver.resolve(borrowers[2]))
        # The owner keeps its module; a namespace whose own secret can read it gets it too.
        assert isinstance(h.resolver.resolve(owner), Ready)
        allowed = ModuleRequest(url=pinned, pull_secret=TEAM_C)
        ready = await h.settle(allowed, lambda o: isinstance(o, Ready))
        assert ready.module.digest == MODULE_DIGEST  # type: ignore[attr-defined]
    # Re-authorising is a manifest request: no layer was downloaded again.
    assert auth_registry.log_text().count("/blobs/") == blobs


async def test_access_answers_expire_and_follow_the_secret(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """A yes is reused for the TTL, asked again after it, and a changed secret asks at once."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", image)
    pinned = f"oci://{auth_registry.host}/p@sha256:{image.digest}"
    now = [1000.0]
    async with resolving(tmp_path, retry=SLOW_RETRY, access_ttl=60.0, clock=lambda: now[0]) as h:
        h.secrets.update(
            {
                TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A),
                TEAM_C: pull_secret(auth_registry.host, PASSWORD, TEAM_C),
            }
        )
        await h.settle(
            ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A),
            lambda o: isinstance(o, Ready),
        )
        borrower = ModuleRequest(url=pinned, pull_secret=TEAM_C)
        await h.settle(borrower, lambda o: isinstance(o, Ready))
        asked = _requests(auth_registry, image.digest)
        now[0] += 59.0
        assert isinstance(h.resolver.resolve(borrower), Ready)
        await asyncio.sleep(0.2)  # room for a request that must not happen
        assert _requests(auth_registry, image.digest) == asked
        now[0] += 2.0
        # Expired: still served while the registry is asked again in the background.
        assert isinstance(h.resolver.resolve(borrower), Ready)
        await _eventually(lambda: _requests(auth_registry, image.digest) > asked, "re-checked")
        # Credentials revoked by a changed secret: asked at once, refused.
        h.secrets.update(
            {
                TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A),
                TEAM_C: pull_secret(auth_registry.host, "revoked", TEAM_C),
            }
        )
        failed = await h.settle(borrower, lambda o: isinstance(o, Failed))
        assert isinstance(failed, Failed)
        assert isinstance(failed.error, ModuleAccessDeniedError)


async def test_same_credentials_need_no_registry_after_restart(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """The secret that pulled a module uses it by digest with the registry down; others wait."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", image)
    pinned = f"oci://{auth_registry.host}/p@sha256:{image.digest}"
    secrets = {
        TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A),
        TEAM_C: pull_secret(auth_registry.host, PASSWORD, TEAM_C),
    }
    async with resolving(tmp_path) as h:
        h.secrets.update(secrets)
        await h.settle(
            ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A),
            lambda o: isinstance(o, Ready),
        )
    await auth_registry.stop()
    index = ModuleIndex.load(tmp_path / "cache" / INDEX_FILE)
    async with resolving(tmp_path, index=index, retry=SLOW_RETRY) as h:
        h.secrets.update(secrets)
        assert isinstance(h.resolver.resolve(ModuleRequest(url=pinned, pull_secret=TEAM_A)), Ready)
        other = ModuleRequest(url=pinned, pull_secret=TEAM_C)
        failed = await h.settle(other, lambda o: isinstance(o, Failed))
        assert isinstance(failed, Failed)
        # Unreachable is not a refusal: an ordinary fetch failure, retried.
        assert not isinstance(failed.error, ModuleAccessDeniedError)
        assert failed.error.reason == "fetch_failed"
        assert "cannot reach registry" in str(failed.error)


async def test_a_url_fetched_with_one_secret_is_not_reused_for_another(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """IfNotPresent reuse is per secret: the same tag with another secret, or none, is pulled."""
    await asyncio.to_thread(
        pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", artifact_image(WASM)
    )
    url = auth_registry.url("p")
    async with resolving(tmp_path, retry=SLOW_RETRY) as h:
        h.secrets.update(
            {
                TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A),
                TEAM_B: pull_secret(auth_registry.host, "wrong-password", TEAM_B),
            }
        )
        await h.settle(ModuleRequest(url=url, pull_secret=TEAM_A), lambda o: isinstance(o, Ready))
        for request in (ModuleRequest(url=url, pull_secret=TEAM_B), ModuleRequest(url=url)):
            assert isinstance(h.resolver.resolve(request), Pending)
            failed = await h.settle(request, lambda o: isinstance(o, Failed))
            assert isinstance(failed, Failed)
            assert isinstance(failed.error, RegistryAuthError)
