"""`wasmxds migrate --to trafficextension`: WasmPlugins (and ServiceMeshExtensions) rewritten."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.test_cli_migrate import SEED_EXTENSION, run_migrate, values
from wasmxds.api.parse import parse_text

PLUGINS = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: openid
  namespace: istio-ingress
  labels: {team: edge}
spec:
  selector:
    matchLabels: {istio: ingressgateway}
  url: oci://ghcr.io/acme/openid:v1
  phase: AUTHN
  priority: 10
  match: [{mode: CLIENT}]
  failStrategy: FAIL_OPEN
  pluginConfig: {realm: ingress}
  vmConfig: {env: [{name: POD, valueFrom: HOST}]}
status: {anything: here}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: routed
spec:
  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}
  url: oci://ghcr.io/acme/x:v1
  phase: UNSPECIFIED_PHASE
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: broken
spec:
  url: ""
"""


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_wasmplugins_become_equivalent_trafficextensions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Module fields move under spec.wasm; targetRef becomes targetRefs (warned); bad ones stay."""
    path = tmp_path / "plugins.yaml"
    path.write_text(PLUGINS)
    assert run_migrate("--to", "trafficextension", str(path)) == 1
    out, err = capsys.readouterr()
    first, second = values(out)
    assert first == {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": {"name": "openid", "namespace": "istio-ingress", "labels": {"team": "edge"}},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "phase": "AUTHN",
            "priority": 10,
            "match": [{"mode": "CLIENT"}],
            "wasm": {
                "url": "oci://ghcr.io/acme/openid:v1",
                "failStrategy": "FAIL_OPEN",
                "pluginConfig": {"realm": "ingress"},
                "vmConfig": {"env": [{"name": "POD", "valueFrom": "HOST"}]},
            },
        },
    }
    assert second["spec"] == {  # type: ignore[index]
        "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}],
        "phase": "UNSPECIFIED",
        "wasm": {"url": "oci://ghcr.io/acme/x:v1"},
    }
    assert f"{path}:24: warning: spec.targetRef: became spec.targetRefs[0]" in err
    assert f"{path}:33: spec.url: required" in err
    assert "1 file, 2 of 3 objects converted, 1 error, 1 warning" in err
    # What it prints is what wasmxds (and Istio) accept, and means the same.
    parsed = parse_text(out, "out.yaml")
    assert [str(p) for p in parsed.problems] == []
    openid = next(p for p in parsed.plugins if p.key.name == "openid")
    assert openid.resource_name == "istio-ingress.openid"
    assert openid.spec.plugin_config.fields["realm"].string_value == "ingress"


def test_servicemeshextensions_go_all_the_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ServiceMeshExtension becomes a TrafficExtension by way of its WasmPlugin."""
    path = tmp_path / "extension.yaml"
    path.write_text(SEED_EXTENSION)
    assert run_migrate("--to", "trafficextension", str(path)) == 0
    out, _ = capsys.readouterr()
    (document,) = values(out)
    assert document["kind"] == "TrafficExtension"  # type: ignore[index]
    assert document["spec"]["wasm"]["url"].startswith("oci://")  # type: ignore[index]
    assert parse_text(out, "out.yaml").problems == ()
