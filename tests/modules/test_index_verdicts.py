"""The module index keeps pre-flight verdicts across restarts, per digest and rules version."""

from __future__ import annotations

import json
from pathlib import Path

from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.types import PREFLIGHT_RULES, ModuleAbi, Verdict

GOOD = "a" * 64
BAD = "b" * 64


def test_verdicts_round_trip_through_the_file(tmp_path: Path) -> None:
    """Passing and failing verdicts are read back as they were written."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    passed = Verdict(ModuleAbi("0.2.1", ("proxy_on_new_connection", "proxy_on_request_headers")))
    failed = Verdict(None, "has no memory (exported or imported), so Envoy cannot pass it any data")
    index.record_verdict(GOOD, 10, passed)
    index.record_verdict(BAD, 20, failed)
    index.flush_sync()
    loaded = ModuleIndex.load(path)
    assert loaded.verdict(GOOD) == passed
    assert loaded.verdict(BAD) == failed
    # Known to the purge (with a size), even though no ref points at the refused module.
    assert loaded.totals() == (2, 30)


def test_verdicts_of_other_rules_are_not_used(tmp_path: Path) -> None:
    """A verdict written under older rules is ignored, so the module is checked again."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    index.record_verdict(GOOD, 10, Verdict(None, "old reason", rules=PREFLIGHT_RULES - 1))
    index.flush_sync()
    assert ModuleIndex.load(path).verdict(GOOD) is None


def test_forgetting_a_module_drops_its_verdict() -> None:
    """A module that leaves the disk loses its verdict with everything else."""
    index = ModuleIndex()
    index.record_verdict(GOOD, 10, Verdict(ModuleAbi("0.2.0")))
    index.forget(GOOD)
    assert index.verdict(GOOD) is None


def test_broken_verdict_entries_are_skipped(tmp_path: Path) -> None:
    """A hand-edited entry that is not a verdict is skipped, the others kept."""
    path = tmp_path / "index.json"
    index = ModuleIndex(path)
    index.record_verdict(GOOD, 10, Verdict(ModuleAbi("0.2.1")))
    index.flush_sync()
    document = json.loads(path.read_text())
    document["checks"][BAD] = {"rules": PREFLIGHT_RULES, "abi": 7}
    document["checks"]["not-a-digest"] = {"rules": PREFLIGHT_RULES, "problem": "x"}
    path.write_text(json.dumps(document))
    loaded = ModuleIndex.load(path)
    assert loaded.verdict(GOOD) == Verdict(ModuleAbi("0.2.1"))
    assert loaded.verdict(BAD) is None


def test_an_index_without_verdicts_loads(tmp_path: Path) -> None:
    """Indexes written before the check have no "checks": every module is simply unchecked."""
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"version": 1, "refs": {}, "manifests": {}, "modules": {}}))
    assert ModuleIndex.load(path).verdict(GOOD) is None
