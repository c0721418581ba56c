"""Access to cached modules: the answer memo, whose credentials pulled what, cache hits."""

from __future__ import annotations

from pathlib import Path

from tests.modules.conftest import WASM
from wasmxds.api.objects import ObjectKey
from wasmxds.modules.access import ModuleAccess, TtlMemo, find_hit, puller, with_manifests
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import CacheHit, ModuleRequest

MANIFEST, INDEX = "1" * 64, "2" * 64
SECRET = ObjectKey("team-b", "regcred")


def test_memo_forgets_after_ttl_and_stays_bounded() -> None:
    """An answer counts for ttl seconds; the oldest go first; ttl 0 remembers nothing."""
    now = [0.0]
    memo = TtlMemo(10.0, clock=lambda: now[0], max_entries=2)
    memo.add("a")
    now[0] = 9.9
    assert "a" in memo
    now[0] = 10.0
    assert "a" not in memo
    for key in ("x", "y", "z"):
        memo.add(key)
    assert len(memo) == 2
    assert "x" not in memo
    assert "z" in memo
    never = TtlMemo(0.0)
    never.add("a")
    assert "a" not in never


def test_answers_are_per_repository_credentials_and_requirement() -> None:
    """A yes for one repository, secret content or requirement says nothing about another."""
    access = ModuleAccess(60.0)
    request = ModuleRequest(url="oci://r.example/team/p:v1", pull_secret=SECRET)
    access.grant(request, "v1", "d")
    assert access.allowed(request, "v1", "d")
    assert not access.allowed(request, "v2", "d")  # the secret changed
    assert not access.allowed(request, "v1", "other")
    other_repo = ModuleRequest(url="oci://r.example/team/q:v1", pull_secret=SECRET)
    assert not access.allowed(other_repo, "v1", "d")
    no_secret = ModuleRequest(url="oci://r.example/team/p:v1")
    assert not access.allowed(no_secret, None, "d")
    # Tag or digest: the same repository.
    pinned = ModuleRequest(url="oci://r.example/team/p@sha256:" + "3" * 64, pull_secret=SECRET)
    assert access.allowed(pinned, "v1", "d")
    assert not ModuleAccess(60.0).allowed(request, "v1", "d")  # nothing shared between servers


def test_credentials_fingerprint_is_keyed() -> None:
    """The memo key holds an HMAC under a per-process key: no secret content, no plain hash."""
    request = ModuleRequest(url="oci://r.example/p:v1", pull_secret=SECRET)
    first = ModuleAccess(60.0)._key(request, "content-hash", "d")
    second = ModuleAccess(60.0)._key(request, "content-hash", "d")
    assert first is not None
    assert second is not None
    assert first[2] != second[2]
    assert "content-hash" not in repr(first)


def test_puller_names_origin_and_requirement() -> None:
    """The persisted puller names the secret (or the server) and the requirement only."""
    assert puller(ModuleRequest(url="oci://r/p:v1")) == "server\n"
    assert puller(ModuleRequest(url="oci://r/p:v1", pull_secret=SECRET)) == (
        "secret:team-b/regcred\n"
    )


async def test_hits_by_digest(tmp_path: Path) -> None:
    """OCI hits come with the manifests to ask for; http hits only for the URL's own ref."""
    store = ModuleStore(tmp_path / "cache")
    index = ModuleIndex()
    module = await store.put(WASM)
    index.record_manifest(MANIFEST, module.digest, module.size, source="r.example/p")
    index.record_manifest(INDEX, module.digest, module.size, source="r.example/p")
    tag = "oci://r.example/p:v1"
    assert find_hit(ModuleRequest(url=tag), index, store) is None
    by_manifest = find_hit(ModuleRequest(url=tag, sha256=MANIFEST), index, store)
    assert by_manifest == CacheHit(module, (MANIFEST,))
    pinned_url = f"oci://r.example/p@sha256:{INDEX}"
    pinned = find_hit(ModuleRequest(url=pinned_url), index, store)
    assert pinned == CacheHit(module, (INDEX,))
    by_module = find_hit(ModuleRequest(url=tag, sha256=module.digest), index, store)
    assert by_module == CacheHit(module)
    both = CacheHit(module, tuple(sorted((MANIFEST, INDEX))))
    assert with_manifests(by_module, index, tag) == both
    assert with_manifests(pinned, index, pinned_url) == pinned
    http = ModuleRequest(url="https://m.example/f.wasm", sha256=module.digest)
    assert find_hit(http, index, store) is None
    index.record(http.url, http.sha256, module.digest, module.size)
    assert find_hit(http, index, store) == CacheHit(module)


async def test_manifests_are_only_named_to_repositories_they_came_from(tmp_path: Path) -> None:
    """A module named by digest in another repository gets no manifest digest to ask for."""
    store = ModuleStore(tmp_path / "cache")
    index = ModuleIndex()
    module = await store.put(WASM)
    index.record_manifest(MANIFEST, module.digest, module.size, source="r.example/team-a/p")
    by_module = CacheHit(module)
    for elsewhere in (
        "oci://evil.example/team-a/p:v1",  # another host
        "oci://r.example/team-b/p:v1",  # another repository on the same host
        "oci://r.example/team-a/p/more:v1",
    ):
        assert with_manifests(by_module, index, elsewhere) == by_module, elsewhere
    own = with_manifests(by_module, index, "oci://r.example/team-a/p@sha256:" + "9" * 64)
    assert own == CacheHit(module, (MANIFEST,))
