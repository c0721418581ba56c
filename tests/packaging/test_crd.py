"""deploy/crd: the WasmPlugin CRD, checked against the WasmPlugins we ship and wasmxds's schema.

The CRD's openAPIV3Schema is turned into a JSON Schema the way the API server
applies it: ``nullable`` allows null, and unknown fields are errors (kubectl's
default strict field validation) except under ``x-kubernetes-preserve-unknown-fields``.
The CEL rules (``x-kubernetes-validations``) need an API server and are not
evaluated here; wasmxds's own validation covers them (tests/api).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.protobuf.descriptor import Descriptor

from tests.packaging.helpers import CRD_FILE, DEPLOY, REPO, load_yaml_documents
from wasmxds.api.proto import wasm_pb2

API_DATA = REPO / "tests" / "api" / "data"


def _crd() -> dict[str, Any]:
    (crd,) = load_yaml_documents(CRD_FILE)
    return crd


def _convert(schema: dict[str, Any]) -> dict[str, Any]:
    """One OpenAPI v3 (Kubernetes structural) schema node → JSON Schema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_convert(sub) for sub in value]
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema and "additionalProperties" not in schema and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def _object_schema() -> dict[str, Any]:
    """The JSON Schema of a whole WasmPlugin object (apiVersion, kind and metadata included)."""
    crd = _crd()
    (version,) = crd["spec"]["versions"]
    schema = _convert(version["schema"]["openAPIV3Schema"])
    schema["properties"] |= {
        "apiVersion": {"const": f"{crd['spec']['group']}/{version['name']}"},
        "kind": {"const": crd["spec"]["names"]["kind"]},
        "metadata": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}},
            "required": ["name"],
        },
    }
    schema["required"] = [*schema.get("required", []), "apiVersion", "kind", "metadata"]
    return schema


def _wasmplugins(path: Path) -> dict[str, dict[str, Any]]:
    """WasmPlugins in a file (``kind: List`` items too), by name."""
    found: dict[str, dict[str, Any]] = {}
    for doc in load_yaml_documents(path):
        for item in doc["items"] if doc.get("kind") == "List" else [doc]:
            if item.get("kind") == "WasmPlugin":
                found[item["metadata"]["name"]] = item
    return found


def _errors(plugin: dict[str, Any]) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft202012Validator(_object_schema())
    return list(validator.iter_errors(plugin))


VALID = [
    (REPO / "examples" / "plugins" / "header-filter.yaml", "header-filter"),
    (REPO / "compose" / "plugins" / "header-filter.yaml", "header-filter"),
    (DEPLOY / "example" / "wasmplugin.yaml", "header-filter"),
    (API_DATA / "header-append.yaml", "header-append"),
    (API_DATA / "openid-connect-file.yaml", "openid-connect"),
    (API_DATA / "openid-connect-oci.yaml", "openid-connect"),
    (API_DATA / "tsb-wasm-add-header.yaml", "tier2-gateway-wasm-add-header0"),
    (API_DATA / "list.yaml", "header-append"),
]

INVALID = [
    (API_DATA / "helloworld-invalid.yaml", "helloworld", "Selector"),
    (API_DATA / "openid-connect-invalid.yaml", "openid-connect", "sha256"),
    (API_DATA / "openid-connect-invalid.yaml", "openid-connect-policy", "image_pull_policy"),
    (API_DATA / "list.yaml", "broken", "url"),
]


@pytest.mark.parametrize(
    ("path", "name"), VALID, ids=[f"{p.relative_to(REPO)}:{n}" for p, n in VALID]
)
def test_crd_accepts_the_wasmplugins_we_ship_and_test(path: Path, name: str):
    """The CRD schema accepts every valid WasmPlugin of examples/, deploy/ and tests/api/data."""
    errors = _errors(_wasmplugins(path)[name])
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


@pytest.mark.parametrize(
    ("path", "name", "field"),
    INVALID,
    ids=[f"{p.relative_to(REPO)}:{n}" for p, n, _ in INVALID],
)
def test_crd_rejects_invalid_wasmplugins(path: Path, name: str, field: str):
    """The CRD schema rejects a misspelt field, a bad checksum and an empty url, naming each."""
    errors = _errors(_wasmplugins(path)[name])
    assert errors
    assert any(field in map(str, e.absolute_path) or field in e.message for e in errors), errors


def _compare(schema: dict[str, Any], message: Descriptor, where: str) -> list[str]:
    fields = {f.json_name: f for f in message.fields}
    properties: dict[str, Any] = schema.get("properties", {})
    problems = []
    if set(properties) != set(fields):
        problems.append(f"{where}: CRD {sorted(properties)} != wasmxds {sorted(fields)}")
    for name in sorted(set(properties) & set(fields)):
        field, sub = fields[name], properties[name]
        if sub.get("type") == "array":
            sub = sub["items"]
        if field.enum_type is not None:
            values = [value.name for value in field.enum_type.values]
            if sub.get("enum") != values:
                problems.append(f"{where}.{name}: CRD {sub.get('enum')} != wasmxds {values}")
        elif field.message_type is not None and "properties" in sub:
            problems += _compare(sub, field.message_type, f"{where}.{name}")
    return problems


def test_crd_spec_has_the_fields_and_enums_wasmxds_reads():
    """The CRD's spec and wasmxds's WasmPlugin schema have the same fields and enum values."""
    (version,) = _crd()["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _compare(spec, wasm_pb2.WasmPlugin.DESCRIPTOR, "spec") == []


def test_crd_is_the_istio_api_with_attribution():
    """The CRD serves and stores extensions.istio.io/v1alpha1 with status, and credits Istio."""
    crd = _crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
    assert (crd["spec"]["group"], names["kind"], crd["spec"]["scope"]) == (
        "extensions.istio.io",
        "WasmPlugin",
        "Namespaced",
    )
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    header = CRD_FILE.read_text().split("apiVersion:", 1)[0]
    assert "Istio Authors" in header
    assert "Apache License, Version 2.0" in header
