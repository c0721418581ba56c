"""Signatures in the serve path: the resolver with the real OCI fetcher and a real registry.

Requirement groups, cache hits that must verify too, image indexes, the memo
that makes steady state free, and modules that cannot carry a signature.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e.harness.images import OrasPusher, artifact_image, compat_image, index_image
from e2e.harness.registry import Registry
from tests.modules.conftest import Signal
from tests.modules.oci.conftest import WASM, settings
from wasmxds.api.keys import SigningKey, parse_private_key
from wasmxds.backoff import Backoff
from wasmxds.errors import SignatureInvalidError
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import docker_reference, push_signature
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import (
    Failed,
    ModuleOutcome,
    ModuleRequest,
    PullPolicy,
    Ready,
    TrustedKeys,
)


def signing_key() -> SigningKey:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return parse_private_key(pem, source="test", password=None)


SERVER, PLUGIN, STRANGER = signing_key(), signing_key(), signing_key()


def server_keys(*keys: SigningKey) -> TrustedKeys:
    return TrustedKeys(tuple(key.public for key in keys), "--verification-key")


def plugin_key(key: SigningKey) -> TrustedKeys:
    return TrustedKeys((key.public,), "spec.verificationKey of team/p")


class Harness:
    def __init__(
        self, registry: Registry, fetcher: OciFetcher, resolver: ModuleResolver, changes: Signal
    ) -> None:
        self.registry = registry
        self.fetcher = fetcher
        self.resolver = resolver
        self.changes = changes

    def push(self, repository: str, tag: str, wasm: bytes = WASM) -> str:
        """Push an image; returns its manifest digest (hex)."""
        image = artifact_image(wasm)
        OrasPusher(self.registry.host).push(repository, tag, image)
        return image.digest

    async def sign(self, repository: str, digest: str, key: SigningKey) -> None:
        ref = parse_reference(f"oci://{self.registry.host}/{repository}@sha256:{digest}")
        repo = self.fetcher.client.repository(ref, Credentials(), push=True)
        await push_signature(repo, digest, key, docker_reference(ref))

    async def settle(self, request: ModuleRequest) -> ModuleOutcome:
        """Resolve until the outcome is Ready or Failed; the deadline only guards hangs."""

        def settled() -> bool:
            return isinstance(self.resolver.resolve(request), Ready | Failed)

        self.resolver.resolve(request)
        await self.changes.wait_for(settled, deadline=15.0)
        return self.resolver.resolve(request)

    def signature_reads(self, digest: str) -> int:
        return self.registry.log_text().count(f"/manifests/sha256-{digest}.sig")


@contextlib.asynccontextmanager
async def harness(
    registry: Registry, tmp_path: Path, *, ttl: float = 300.0
) -> AsyncIterator[Harness]:
    store = ModuleStore(tmp_path / "cache")
    index = ModuleIndex()
    fetcher = OciFetcher(
        store=store,
        index=index,
        settings=settings(),
        docker_config=lambda: tmp_path / "none" / "config.json",
        verified_ttl=ttl,
    )
    changes = Signal()
    resolver = ModuleResolver(
        store=store,
        fetchers={"oci": fetcher},
        on_change=changes.notify,
        retry=Backoff(initial=600.0, max=600.0),
        index=index,
        access_ttl=ttl,
    )
    h = Harness(registry, fetcher, resolver, changes)
    task = asyncio.create_task(resolver.run())
    try:
        yield h
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await fetcher.aclose()


def refused(outcome: ModuleOutcome, *phrases: str) -> None:
    assert isinstance(outcome, Failed), outcome
    assert isinstance(outcome.error, SignatureInvalidError), outcome.error
    assert outcome.error.reason == "signature_invalid"
    for phrase in phrases:
        assert phrase in str(outcome.error), outcome.error


async def test_every_requirement_group_must_be_met(registry: Registry, tmp_path: Path) -> None:
    """Server keys and the plugin's key are both required: the plugin cannot lift the first."""
    async with harness(registry, tmp_path) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        await h.sign("p", digest, PLUGIN)
        url = registry.url("p")
        # Signed by the plugin's own key only: the server's requirement is not met.
        both = (server_keys(SERVER), plugin_key(PLUGIN))
        refused(
            await h.settle(ModuleRequest(url=url, verify=both)),
            "(required by --verification-key)",
            "not signed by a trusted key",
        )
        await h.sign("p", digest, SERVER)
        # A new generation under Always is a new fetch (not waiting out the backoff).
        again = ModuleRequest(url=url, verify=both, pull_policy=PullPolicy.ALWAYS, generation="g2")
        ready = await h.settle(again)
        assert isinstance(ready, Ready)
        # Any one of the server's keys will do.
        either = ModuleRequest(url=url, verify=(server_keys(STRANGER, SERVER),))
        assert isinstance(await h.settle(either), Ready)
        stranger = ModuleRequest(url=url, verify=(plugin_key(STRANGER),))
        refused(await h.settle(stranger), "spec.verificationKey of team/p")


async def test_cache_hits_verify_too(registry: Registry, tmp_path: Path) -> None:
    """A cached module named by digest is served under a requirement only if it is signed."""
    async with harness(registry, tmp_path) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        assert isinstance(await h.settle(ModuleRequest(url=registry.url("p"))), Ready)
        pinned = f"oci://{registry.host}/p@sha256:{digest}"
        refused(
            await h.settle(ModuleRequest(url=pinned, verify=(server_keys(SERVER),))),
            "not signed: no cosign signature",
        )
        await h.sign("p", digest, SERVER)
        signed = ModuleRequest(url=pinned, sha256=digest, verify=(server_keys(SERVER),))
        assert isinstance(await h.settle(signed), Ready)


async def test_a_moved_tag_is_verified_again(registry: Registry, tmp_path: Path) -> None:
    """Always re-pulls verify the manifest the tag names now; a refusal serves no stale copy."""
    async with harness(registry, tmp_path) as h:
        digest = await asyncio.to_thread(h.push, "p", "latest")
        await h.sign("p", digest, SERVER)
        request = ModuleRequest(
            url=registry.url("p", "latest"),
            pull_policy=PullPolicy.ALWAYS,
            verify=(server_keys(SERVER),),
        )
        assert isinstance(await h.settle(request), Ready)
        await asyncio.to_thread(h.push, "p", "latest", WASM + b"\0")
        assert h.resolver.repull(0.0) == 1
        await h.changes.wait_for(
            lambda: isinstance(h.resolver.resolve(request), Failed), deadline=15.0
        )
        refused(h.resolver.resolve(request), "not signed")


async def test_verified_signatures_are_remembered(registry: Registry, tmp_path: Path) -> None:
    """Steady state asks the registry for no signature: a success counts for the TTL."""
    async with harness(registry, tmp_path) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        await h.sign("p", digest, SERVER)
        verify = (server_keys(SERVER),)
        assert isinstance(
            await h.settle(ModuleRequest(url=registry.url("p"), verify=verify)), Ready
        )
        reads = h.signature_reads(digest)
        assert reads >= 1
        for generation in ("g2", "g3"):
            again = ModuleRequest(
                url=registry.url("p"),
                verify=verify,
                pull_policy=PullPolicy.ALWAYS,
                generation=generation,
            )
            assert isinstance(await h.settle(again), Ready)
        print(
            f"signature manifest reads: first pull {reads}, after two re-pulls"
            f" {h.signature_reads(digest)}"
        )
        assert h.signature_reads(digest) == reads


async def test_hits_check_the_signature_again_once_the_ttl_is_over(
    registry: Registry, tmp_path: Path
) -> None:
    """With --module-access-ttl 0s, a hit by digest or an IfNotPresent reuse asks again."""
    async with harness(registry, tmp_path, ttl=0.0) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        await h.sign("p", digest, SERVER)
        verify = (server_keys(SERVER),)
        tag = ModuleRequest(url=registry.url("p"), verify=verify)
        assert isinstance(await h.settle(tag), Ready)
        pinned = ModuleRequest(url=f"oci://{registry.host}/p@sha256:{digest}", verify=verify)
        assert isinstance(await h.settle(pinned), Ready)
        # The signature is taken away: its tag now names an image with no signature layer.
        await asyncio.to_thread(
            OrasPusher(registry.host).push, "p", f"sha256-{digest}.sig", compat_image(WASM)
        )
        hit = ModuleRequest(url=pinned.url, sha256=digest, verify=verify)
        refused(await h.settle(hit), "holds no cosign signature layer")
        # The tag's plugin goes away and comes back: IfNotPresent reuses what it fetched.
        h.resolver.retain([])
        refused(await h.settle(tag), "holds no cosign signature layer")


async def test_a_hit_that_cannot_be_checked_is_served_stale(
    registry: Registry, tmp_path: Path
) -> None:
    """With the registry down, a reused signed module stays served, marked stale, not refused."""
    async with harness(registry, tmp_path, ttl=0.0) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        await h.sign("p", digest, SERVER)
        tag = ModuleRequest(url=registry.url("p"), verify=(server_keys(SERVER),))
        assert isinstance(await h.settle(tag), Ready)
        await registry.stop()
        h.resolver.retain([])
        outcome = await h.settle(tag)
        assert isinstance(outcome, Ready), outcome
        assert outcome.stale is not None
        assert outcome.stale.reason == "fetch_failed"
        print(f"served stale: {outcome.stale}")


async def test_hits_within_the_ttl_ask_nothing(registry: Registry, tmp_path: Path) -> None:
    """Steady state: hits by digest and IfNotPresent reuse within the TTL read no signature."""
    async with harness(registry, tmp_path) as h:
        digest = await asyncio.to_thread(h.push, "p", "v1")
        await h.sign("p", digest, SERVER)
        verify = (server_keys(SERVER),)
        assert isinstance(
            await h.settle(ModuleRequest(url=registry.url("p"), verify=verify)), Ready
        )
        reads = h.signature_reads(digest)
        h.resolver.retain([])  # IfNotPresent reuse from the index, not the same entry
        for request in (
            ModuleRequest(url=f"oci://{registry.host}/p@sha256:{digest}", verify=verify),
            ModuleRequest(url=registry.url("p"), sha256=digest, verify=verify),
            ModuleRequest(url=registry.url("p"), verify=verify),
        ):
            assert isinstance(h.resolver.resolve(request), Ready), request
        print(f"signature reads: first pull {reads}, after three hits {h.signature_reads(digest)}")
        assert h.signature_reads(digest) == reads


@pytest.mark.parametrize("signed", ["index", "platform manifest"])
async def test_an_index_may_be_signed_on_either_digest(
    registry: Registry, tmp_path: Path, signed: str
) -> None:
    """For an image index, a signature on the index or on the chosen manifest is accepted,
    on a pull and on a cache hit by the module's digest (either digest may be asked first)."""
    child = compat_image(WASM)
    index = index_image([(child, "linux", "amd64")])
    async with harness(registry, tmp_path, ttl=0.0) as h:
        pusher = OrasPusher(registry.host)
        await asyncio.to_thread(pusher.push_index, "multi", "v1", [child], index)
        await h.sign("multi", index.digest if signed == "index" else child.digest, SERVER)
        request = ModuleRequest(url=registry.url("multi"), verify=(server_keys(SERVER),))
        assert isinstance(await h.settle(request), Ready)
        module_digest = hashlib.sha256(WASM).hexdigest()
        hit = ModuleRequest(url=request.url, sha256=module_digest, verify=request.verify)
        assert isinstance(await h.settle(hit), Ready)
        unsigned = ModuleRequest(url=registry.url("multi"), verify=(server_keys(STRANGER),))
        refused(await h.settle(unsigned), "neither the image index nor its platform manifest")


@pytest.mark.parametrize(
    "url", ["https://example.com/f.wasm", "http://example.com/f.wasm", "file:///m/f.wasm"]
)
async def test_modules_that_cannot_be_signed_are_refused(
    registry: Registry, tmp_path: Path, url: str
) -> None:
    """Under a requirement, non-OCI modules fail at once (no download), not retried."""
    async with harness(registry, tmp_path) as h:
        outcome: Any = h.resolver.resolve(ModuleRequest(url=url, verify=(server_keys(SERVER),)))
        refused(outcome, "cannot carry a signature", "--verification-key")
        assert outcome.next_retry_in == math.inf
        assert not outcome.error.retryable


def test_requirement_is_part_of_the_cache_key() -> None:
    """Requests that differ only in their keys never share an outcome or an index ref."""
    plain = ModuleRequest(url="oci://r.example/p:v1")
    keyed = ModuleRequest(url="oci://r.example/p:v1", verify=(server_keys(SERVER),))
    other = ModuleRequest(url="oci://r.example/p:v1", verify=(server_keys(STRANGER),))
    assert len({plain.cache_key, keyed.cache_key, other.cache_key}) == 3
    assert plain.requirement == ""
    assert keyed.requirement == SERVER.public.fingerprint
