"""A cached module is reused without a download only from a repository it was pulled from.

The real OCI fetcher and resolver, a real ``docker-registry`` with htpasswd
holding team-a's private image, and a copycat registry (a plugin author's own)
that serves the same manifest bytes but has none of the layers: a manifest is
no secret, so serving it must not count as being able to read the module.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from e2e.harness.copycat import running_copycat
from e2e.harness.images import artifact_image
from e2e.harness.registry import Registry
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher, settings
from tests.modules.oci.test_checks import SERVER, server_keys
from tests.modules.oci.test_resolver_oci import (
    MODULE_DIGEST,
    SLOW_RETRY,
    TEAM_A,
    TEAM_C,
    pull_secret,
    resolving,
)
from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import SignatureInvalidError
from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.modules.oci.checks import Resolved, SignatureChecks
from wasmxds.modules.oci.client import Credentials, RegistryClient
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import docker_reference, push_signature
from wasmxds.modules.types import Failed, ModuleRequest, PullPolicy, Ready, TrustedKeys


def blob_reads(registry: Registry, repository: str) -> int:
    return registry.log_text().count(f"GET /v2/{repository}/blobs/")


def settled(outcome: object) -> bool:
    """Settled (the assertions then say which way)."""
    return isinstance(outcome, Ready | Failed)


async def test_a_copied_manifest_gets_no_cached_module(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """A registry that only serves team-a's manifest gets nothing, however the plugin names it."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", image)
    async with (
        running_copycat([image]) as copycat,
        resolving(tmp_path, retry=SLOW_RETRY) as h,
    ):
        h.secrets.update({TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A)})
        owner = ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A)
        await h.settle(owner, lambda o: isinstance(o, Ready))
        # No secret (anonymous): the module's digest, or only a tag, on the copycat.
        unnamed = [
            ModuleRequest(url=copycat.url("anything"), sha256=MODULE_DIGEST),
            ModuleRequest(url=copycat.url("other", "v2")),
        ]
        for request in unnamed:
            outcome = await h.settle(request, settled)
            print(f"{request.url} sha256={request.sha256[:12]}: {outcome}")
            assert isinstance(outcome, Failed), outcome
        # The digest of team-a's manifest was never handed to the copycat.
        assert not copycat.asked_for(image.digest)
        # Naming the manifest digest itself (it learned it somewhere): still nothing.
        named = [
            ModuleRequest(url=copycat.url("anything", "v3"), sha256=image.digest),
            ModuleRequest(url=copycat.url("anything", f"sha256:{image.digest}")),
        ]
        for request in named:
            outcome = await h.settle(request, settled)
            print(f"{request.url} sha256={request.sha256[:12]}: {outcome}")
            assert isinstance(outcome, Failed), outcome
        # Each was a full pull: the layers were asked for where the plugin said, and missing.
        print(f"copycat: {len(copycat.requests)} requests, {copycat.blob_requests} for blobs")
        assert copycat.blob_requests >= len(unnamed) + len(named)
        assert isinstance(h.resolver.resolve(owner), Ready)
        index = h.resolver.index
        assert not index.pulled_by(MODULE_DIGEST, "server\n")
        assert not index.pulled_from(image.digest, f"{copycat.host}/anything")
        assert index.pulled_from(image.digest, f"{auth_registry.host}/p")
    # Nothing the copycat did reached the disk either.
    reloaded = ModuleIndex.load(tmp_path / "cache" / INDEX_FILE)
    assert not reloaded.pulled_by(MODULE_DIGEST, "server\n")
    assert reloaded.pulled_from(image.digest, f"{auth_registry.host}/p")
    assert reloaded.manifests_of(MODULE_DIGEST, f"{copycat.host}/anything") == ()


async def test_a_copied_manifest_is_not_signed_by_anothers_check(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """Under a signature requirement, team-a's verified signature does not vouch for the copy."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(auth_registry, basic=(USER, PASSWORD)).push, "p", "v1", image)
    client = RegistryClient(settings=settings())
    try:
        ref = parse_reference(f"oci://{auth_registry.host}/p@sha256:{image.digest}")
        basic = Credentials(RegistryCredentials(username=USER, password=PASSWORD))
        await push_signature(
            client.repository(ref, basic, push=True),
            image.digest,
            SERVER,
            docker_reference(ref),
        )
    finally:
        await client.aclose()
    verify = (server_keys(SERVER),)
    async with (
        running_copycat([image]) as copycat,
        resolving(tmp_path, retry=SLOW_RETRY) as h,
    ):
        h.secrets.update({TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A)})
        owner = ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A, verify=verify)
        await h.settle(owner, lambda o: isinstance(o, Ready))
        for request in (
            ModuleRequest(url=copycat.url("anything"), sha256=MODULE_DIGEST, verify=verify),
            ModuleRequest(url=copycat.url("anything", f"sha256:{image.digest}"), verify=verify),
        ):
            outcome = await h.settle(request, settled)
            print(f"{request.url}: {outcome}")
            assert isinstance(outcome, Failed), outcome
        assert isinstance(h.resolver.resolve(owner), Ready)


async def test_signature_memo_is_per_repository(registry: Registry) -> None:
    """A signature verified in one repository is looked up again in another (and missing)."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(registry).push, "p", "v1", image)
    checks = SignatureChecks(300.0)
    groups: tuple[TrustedKeys, ...] = (server_keys(SERVER),)
    resolved = Resolved("", image.digest)
    client = RegistryClient(settings=settings())
    try:
        async with running_copycat([image]) as copycat:
            ref = parse_reference(f"oci://{registry.host}/p@sha256:{image.digest}")
            owner = client.repository(ref, Credentials(), push=True)
            await push_signature(owner, image.digest, SERVER, docker_reference(ref))
            await checks.require(owner, f"{registry.host}/p", groups, resolved, "oci://owner")
            copy_ref = parse_reference(copycat.url("p", f"sha256:{image.digest}"))
            copy = client.repository(copy_ref, Credentials())
            try:
                await checks.require(copy, f"{copycat.host}/p", groups, resolved, "oci://copy")
            except SignatureInvalidError as exc:
                print(f"copy: {exc}")
            else:
                raise AssertionError("the copy's signature was taken from the memo")
            assert any(".sig" in path for path in copycat.requests)
            # The owner's check is still remembered: nothing is asked again there.
            reads = registry.log_text().count(".sig")
            await checks.require(owner, f"{registry.host}/p", groups, resolved, "oci://owner")
            assert registry.log_text().count(".sig") == reads
    finally:
        await client.aclose()


async def test_other_repositories_pull_in_full_once(
    auth_registry: Registry, tmp_path: Path
) -> None:
    """A real mirror of the image downloads its layers once; then it is re-authorised cheaply."""
    image = artifact_image(WASM)
    push = pusher(auth_registry, basic=(USER, PASSWORD)).push
    await asyncio.to_thread(push, "p", "v1", image)
    await asyncio.to_thread(push, "mirror", "v1", image)
    async with resolving(tmp_path, retry=SLOW_RETRY) as h:
        h.secrets.update(
            {
                TEAM_A: pull_secret(auth_registry.host, PASSWORD, TEAM_A),
                TEAM_C: pull_secret(auth_registry.host, PASSWORD, TEAM_C),
            }
        )
        owner = ModuleRequest(url=auth_registry.url("p"), pull_secret=TEAM_A)
        await h.settle(owner, lambda o: isinstance(o, Ready))
        mirror = f"oci://{auth_registry.host}/mirror@sha256:{image.digest}"
        first = ModuleRequest(url=mirror, pull_secret=TEAM_C)
        assert isinstance(await h.settle(first, lambda o: isinstance(o, Ready)), Ready)
        downloads = blob_reads(auth_registry, "mirror")
        assert downloads >= 1
        # Another request naming it in the mirror: a manifest request, no download.
        again = ModuleRequest(url=auth_registry.url("mirror"), sha256=MODULE_DIGEST)
        other = ModuleRequest(url=again.url, sha256=MODULE_DIGEST, pull_secret=TEAM_C)
        assert isinstance(await h.settle(other, lambda o: isinstance(o, Ready)), Ready)
        print(
            f"mirror layer downloads: {downloads}, after a second request:"
            f" {blob_reads(auth_registry, 'mirror')}"
        )
        assert blob_reads(auth_registry, "mirror") == downloads


async def test_an_index_without_repositories_pulls_in_full_once(
    registry: Registry, tmp_path: Path
) -> None:
    """Manifests from an index written before repositories were recorded are re-pulled once."""
    image = artifact_image(WASM)
    await asyncio.to_thread(pusher(registry).push, "p", "v1", image)
    async with resolving(tmp_path) as h:
        await h.settle(ModuleRequest(url=registry.url("p")), lambda o: isinstance(o, Ready))
    path = tmp_path / "cache" / INDEX_FILE
    document = json.loads(path.read_text())
    for entry in document["manifests"].values():
        del entry["pulled_from"]  # as written before this change
    path.write_text(json.dumps(document))
    before = blob_reads(registry, "p")
    index = ModuleIndex.load(path)
    assert index.manifest_module(image.digest) == MODULE_DIGEST
    assert not index.pulled_from(image.digest, f"{registry.host}/p")
    async with resolving(tmp_path, index=index) as h:
        for generation in ("g2", "g3"):
            request = ModuleRequest(
                url=registry.url("p"), pull_policy=PullPolicy.ALWAYS, generation=generation
            )
            await h.settle(request, lambda o: isinstance(o, Ready))
    print(f"layer downloads: first pull {before}, after two re-pulls {blob_reads(registry, 'p')}")
    assert blob_reads(registry, "p") == before + 1
    assert index.pulled_from(image.digest, f"{registry.host}/p")
