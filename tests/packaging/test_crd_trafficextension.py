"""deploy/crd: the TrafficExtension CRD accepts our examples and agrees with wasmxds's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.packaging.helpers import DEPLOY, REPO, load_yaml_documents
from tests.packaging.test_crd import _convert
from wasmxds.api.trafficextension import MAX_LUA_BYTES

CRD_FILE = DEPLOY / "crd" / "trafficextensions.extensions.istio.io.yaml"
EXAMPLES = sorted((REPO / "examples" / "trafficextension").glob("*.yaml"))


def _crd() -> dict[str, Any]:
    (crd,) = load_yaml_documents(CRD_FILE)
    return crd


def _spec_schema() -> dict[str, Any]:
    (version,) = _crd()["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def _errors(spec: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_convert(_spec_schema()))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(spec)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_crd_accepts_the_examples(path: Path) -> None:
    """Each TrafficExtension of examples/ passes the CRD's schema."""
    (document,) = load_yaml_documents(path)
    assert document["kind"] == "TrafficExtension"
    assert _errors(document["spec"]) == []


def test_crd_names_and_the_limits_wasmxds_enforces() -> None:
    """Istio's CRD, credited: its kind, Lua's 64 KiB and the CEL rules wasmxds implements."""
    crd = _crd()
    assert crd["metadata"]["name"] == "trafficextensions.extensions.istio.io"
    assert crd["spec"]["names"]["kind"] == "TrafficExtension"
    assert "Copyright Istio Authors" in CRD_FILE.read_text()
    spec = _spec_schema()
    assert spec["properties"]["lua"]["properties"]["inlineCode"]["maxLength"] == MAX_LUA_BYTES
    rules = {rule["message"] for rule in spec["x-kubernetes-validations"]}
    assert rules == {
        "only one of targetRefs or selector can be set",
        "exactly one of wasm or lua must be set",
    }
    assert spec["properties"]["phase"]["enum"] == ["UNSPECIFIED", "AUTHN", "AUTHZ", "STATS"]
    assert _errors({"wasm": {"url": "oci://r/f:v1", "phase": "AUTHN"}}) != []
