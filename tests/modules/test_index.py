"""The persistent module index: round trips, atomic writes, corruption, no secrets on disk."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import structlog

from wasmxds.modules.index import ModuleIndex, ref_key

A, B, M = "a" * 64, "b" * 64, "c" * 64
SIGNED = "https://bucket.example/m.wasm?X-Amz-Signature=topsecret"


async def test_round_trip(tmp_path: Path) -> None:
    """Refs, manifests and last use survive a save and a load."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path, clock=lambda: 1000.0)
    index.record("oci://r/f:v1", "", A, 10, manifest=M, layout="wasm-artifact")
    index.record_manifest(M, A, 10, "wasm-artifact")
    index.record(SIGNED, B.upper(), B, 20, secret="ns/s")
    await index.flush()
    loaded = ModuleIndex.load(path)
    ref = loaded.ref("oci://r/f:v1", "")
    assert ref is not None
    assert (ref.digest, ref.manifest, ref.layout) == (A, M, "wasm-artifact")
    assert loaded.manifest_module(M) == A
    assert loaded.manifest_layout(M) == "wasm-artifact"
    assert loaded.ref(SIGNED, B, "ns/s") is not None
    assert loaded.ref(SIGNED, B) is None  # the secret is part of the key
    assert loaded.last_used(A) == 1000.0


async def test_file_is_private_and_holds_no_url_secrets(tmp_path: Path) -> None:
    """The index is owner-only and stores URLs redacted (keys are hashes)."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    index.record(SIGNED, "", A, 1)
    await index.flush()
    assert "topsecret" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".index-")]


def test_corrupt_index_is_ignored_with_a_warning(tmp_path: Path) -> None:
    """Garbage, a wrong version or bad entries never crash the load."""
    path = tmp_path / "index.json"
    for content in ("{not json", json.dumps({"version": 99}), json.dumps([1, 2])):
        path.write_text(content)
        with structlog.testing.capture_logs() as events:
            index = ModuleIndex.load(path)
        assert len(index) == 0
        assert [e["event"] for e in events] == ["modules.index_corrupt"]


def test_bad_entries_are_skipped_and_good_ones_kept(tmp_path: Path) -> None:
    """One bad entry does not cost the others."""
    path = tmp_path / "index.json"
    good = {"digest": A, "manifest": "", "layout": "", "fetched_at": 1.0, "url": "u"}
    document = {
        "version": 1,
        "refs": {"k1": good, "k2": {"digest": "nope"}, "k3": {"unknown": 1}},
        "manifests": {M: {"module": A, "layout": "x"}, "zz": {"module": A}},
        "modules": {A: {"size": 1, "last_used": 2.0}},
    }
    path.write_text(json.dumps(document))
    with structlog.testing.capture_logs() as events:
        index = ModuleIndex.load(path)
    assert len(index) == 1
    assert index.manifest_module(M) == A
    assert events[0]["event"] == "modules.index_entries_skipped"
    assert events[0]["count"] == 3


def test_missing_file_is_an_empty_index(tmp_path: Path) -> None:
    """A first start has no index yet: that is not an error."""
    with structlog.testing.capture_logs() as events:
        assert len(ModuleIndex.load(tmp_path / "absent.json")) == 0
    assert events == []


def test_forget_drops_everything_pointing_at_a_module() -> None:
    """Forgetting a module removes its refs and manifest entries."""
    index = ModuleIndex()
    index.record("oci://r/f:v1", "", A, 1)
    index.record_manifest(M, A, 1)
    index.forget(A)
    assert index.ref("oci://r/f:v1", "") is None
    assert index.manifest_module(M) is None
    assert index.last_used(A) is None


async def test_pulls_and_requirements_round_trip(tmp_path: Path) -> None:
    """Who pulled a module (names only) is kept; a requirement separates refs; forget drops it."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    index.record("oci://r/f:v1", "", A, 10, secret="team-a/regcred", puller="secret:team-a/x\n")
    index.record("oci://r/f:v1", "", B, 10, requirement="f1|f2", puller="server\nf1|f2")
    index.record_manifest(M, A, 10)
    await index.flush()
    loaded = ModuleIndex.load(path)
    assert loaded.pulled_by(A, "secret:team-a/x\n")
    assert not loaded.pulled_by(A, "server\n")
    assert loaded.pulled_by(B, "server\nf1|f2")
    ref = loaded.ref("oci://r/f:v1", "", "team-a/regcred")
    assert ref is not None
    assert ref.digest == A
    signed = loaded.ref("oci://r/f:v1", "", requirement="f1|f2")
    assert signed is not None
    assert signed.digest == B
    assert loaded.ref("oci://r/f:v1", "") is None
    assert loaded.manifests_of(A, "r/f") == ()  # recorded without a repository
    loaded.forget(A)
    assert not loaded.pulled_by(A, "secret:team-a/x\n")


def test_refs_without_requirement_keep_their_old_keys() -> None:
    """Indexes written before signatures existed still resolve: "" adds nothing to the key."""
    assert (
        ref_key("oci://r/f:v1", "", "ns/s", "")
        == hashlib.sha256(b"oci://r/f:v1\n\nns/s").hexdigest()
    )


async def test_repositories_a_manifest_was_pulled_from_round_trip(tmp_path: Path) -> None:
    """Where each manifest was pulled from is kept; old entries without it load as nowhere."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    index.record_manifest(M, A, 10, "wasm-artifact", source="r:5000/team-a/f")
    index.record_manifest(M, A, 10, "wasm-artifact", source="mirror/f")
    index.record_manifest(B, A, 10, "wasm-artifact")
    await index.flush()
    loaded = ModuleIndex.load(path)
    assert loaded.pulled_from(M, "r:5000/team-a/f")
    assert loaded.pulled_from(M, "mirror/f")
    assert not loaded.pulled_from(M, "evil/f")
    assert not loaded.pulled_from(B, "r:5000/team-a/f")
    assert loaded.manifests_of(A, "mirror/f") == (M,)
    assert loaded.manifests_of(A, "evil/f") == ()
    loaded.forget(A)
    assert not loaded.pulled_from(M, "mirror/f")
    # An index written before repositories were recorded.
    document = json.loads(path.read_text())
    for entry in document["manifests"].values():
        entry.pop("pulled_from", None)
    path.write_text(json.dumps(document))
    old = ModuleIndex.load(path)
    assert old.manifest_module(M) == A
    assert not old.pulled_from(M, "r:5000/team-a/f")
