"""deploy/: the Kubernetes manifests, checked offline.

No cluster runs here. Instead: every object is validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields are
errors), every kustomization is rendered with kustomize (kubectl), and the
command lines in the manifests are parsed by wasmxds's real argument parsers,
so the manifests cannot drift from the CLI.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from e2e.harness.envoy import envoy_binary
from tests.packaging.helpers import (
    DEPLOY,
    Manifest,
    container,
    expand_env,
    find,
    kustomize,
    manifests,
    parse_cli,
)
from wasmxds.api.templates import parse_templates
from wasmxds.cli.bootstrap import options_from_args, render

# The oldest Kubernetes minor still commonly run, and the newest schemas shipped.
K8S_VERSIONS = ("1.30", latest_version())
NAMESPACE = "wasmxds"
EXAMPLE_NAMESPACE = "wasmxds-demo"

_KUBERNETES_OBJECTS = [m for m in manifests() if m.kind != "WasmPlugin"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", _KUBERNETES_OBJECTS, ids=lambda m: m.label)
def test_manifest_matches_the_kubernetes_schema(manifest: Manifest, version: str):
    """Each object in deploy/ is valid for the Kubernetes API, unknown fields included."""
    kubernetes_validate.validate(manifest.doc, version, strict=True)


def test_schema_check_catches_a_misspelt_field():
    """The schema check has teeth: a misspelt container field is an error."""
    deployment = copy.deepcopy(find("Deployment", "wasmxds"))
    container(deployment, "wasmxds")["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolice"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def _keys(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def _with_write_status(tmp_path: Path) -> list[dict[str, Any]]:
    """deploy/wasmxds rendered with the write-status component, as a user would enable it."""
    base = os.path.relpath(DEPLOY, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}/crd, {base}/wasmxds]\ncomponents: [{base}/write-status]\n"
    )
    return kustomize(tmp_path)


def _wasmxds_args(objects: list[dict[str, Any]]) -> list[str]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args: list[str] = container(deployment, "wasmxds")["args"]
    return args


def test_kustomizations_render_every_manifest(tmp_path: Path):
    """Every kustomization renders, all objects are listed, and write-status adds only its parts."""
    everything = _keys(kustomize(DEPLOY)) | _keys(kustomize(DEPLOY / "example"))
    status_rbac = {("ClusterRole", "wasmxds-status"), ("ClusterRoleBinding", "wasmxds-status")}
    shipped = {(m.kind, m.name) for m in manifests()}
    assert everything == shipped - status_rbac
    assert _keys(kustomize(DEPLOY / "wasmxds")) == everything - _keys(kustomize(DEPLOY / "crd")) - (
        _keys(kustomize(DEPLOY / "example"))
    )
    assert "--write-status" not in _wasmxds_args(kustomize(DEPLOY))

    with_status = _with_write_status(tmp_path)
    assert _keys(with_status) == _keys(kustomize(DEPLOY)) | status_rbac
    assert _wasmxds_args(with_status) == [*_wasmxds_args(kustomize(DEPLOY)), "--write-status"]


def test_rbac_is_least_privilege():
    """wasmxds may list/watch WasmPlugins and TrafficExtensions and read Secrets; only the
    optional role patches (their status)."""
    reader = find("ClusterRole", "wasmxds")
    istio = ["extensions.istio.io"]
    assert reader["rules"] == [
        {
            "apiGroups": istio,
            "resources": ["wasmplugins", "trafficextensions"],
            "verbs": ["list", "watch"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    ]
    status = find("ClusterRole", "wasmxds-status")
    assert status["rules"] == [
        {
            "apiGroups": istio,
            "resources": ["wasmplugins/status", "trafficextensions/status"],
            "verbs": ["patch"],
        }
    ]
    account = find("ServiceAccount", "wasmxds")["metadata"]
    for name in ("wasmxds", "wasmxds-status"):
        binding = find("ClusterRoleBinding", name)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": name,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]
    pod = find("Deployment", "wasmxds")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]


def _deployments() -> list[Manifest]:
    return [m for m in manifests() if m.kind == "Deployment"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda m: m.label)
def test_pods_are_hardened(deployment: Manifest):
    """Every container is non-root, read-only, capability-less, seccomp'd and resource-bounded."""
    pod = deployment.doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for spec in [*pod.get("initContainers", []), *pod["containers"]]:
        security = spec["securityContext"]
        uid = security.get("runAsUser", pod["securityContext"].get("runAsUser"))
        assert isinstance(uid, int), spec["name"]
        assert uid > 0, spec["name"]
        assert security["allowPrivilegeEscalation"] is False, spec["name"]
        assert security["readOnlyRootFilesystem"] is True, spec["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, spec["name"]
        assert {"cpu", "memory"} <= set(spec["resources"]["requests"]), spec["name"]
        assert {"cpu", "memory"} <= set(spec["resources"]["limits"]), spec["name"]


def _service_address(host_port: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``NAME.NAMESPACE.svc[.cluster.local]:PORT`` → the deploy/ Service and its port."""
    host, _, port = host_port.rpartition(":")
    name, namespace, *rest = host.split(".")
    assert rest in (["svc"], ["svc", "cluster", "local"]), host_port
    service = find("Service", name)
    assert service["metadata"]["namespace"] == namespace, host_port
    ports = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert ports, f"{host_port}: Service {name} has no port {port}"
    return service, ports[0]


def _mounts(pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Mount path → volume, for one container."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in spec.get("volumeMounts", [])}


def _volume_at(pod: dict[str, Any], spec: dict[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    """The volume holding ``path`` in a container, and the path inside that volume."""
    for mount_path, volume in _mounts(pod, spec).items():
        if path.startswith(mount_path.rstrip("/") + "/"):
            return path[len(mount_path.rstrip("/")) + 1 :], volume
    raise AssertionError(f"{path} is on no volume of container {spec['name']}")


def test_wasmxds_deployment_args_are_accepted_by_serve():
    """The wasmxds Deployment's args parse with `wasmxds serve` and match its ports and Services."""
    deployment = find("Deployment", "wasmxds")
    pod = deployment["spec"]["template"]["spec"]
    spec = container(deployment, "wasmxds")
    assert spec["args"][0] == "serve"
    args = parse_cli("serve", spec["args"][1:])
    parse_cli("serve", [*spec["args"][1:], "--write-status"])
    assert args.kubernetes is True
    assert deployment["spec"]["replicas"] == 2

    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert args.xds_address == f"0.0.0.0:{ports['grpc-xds']}"
    assert args.admin_address == f"0.0.0.0:{ports['http-admin']}"
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-admin"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-admin"}

    mounts = _mounts(pod, spec)
    assert "emptyDir" in mounts[str(args.cache_dir)]
    (listeners,) = args.listeners
    assert mounts[str(listeners)]["configMap"]["name"] == "wasmxds-listeners"

    # Envoy pods cannot read this pod's cache: modules go through the admin Service.
    assert args.module_delivery == "remote"
    base = args.module_base_url.removeprefix("http://")
    service, port = _service_address(base)
    assert service["metadata"]["name"] == "wasmxds-admin"
    assert port["targetPort"] == "http-admin"


def test_services_select_the_deployment_ports():
    """The xDS (gRPC) and admin Services select the wasmxds pods and target their named ports."""
    deployment = find("Deployment", "wasmxds")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container(deployment, "wasmxds")["ports"]}
    for name, protocol in (("wasmxds-xds", "grpc"), ("wasmxds-admin", "http")):
        service = find("Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] in port_names
        assert port["appProtocol"] == protocol


def test_listener_templates_parse_and_select_the_example_envoy():
    """The listener-template ConfigMap parses and its templates apply to the example Envoy pods."""
    config_map = find("ConfigMap", "wasmxds-listeners")
    envoy = find("Deployment", "envoy-example")
    labels = envoy["spec"]["template"]["metadata"]["labels"]
    namespace = envoy["metadata"]["namespace"]
    for key, text in config_map["data"].items():
        parsed = parse_templates(text.encode(), key)
        assert parsed.problems == ()
        assert parsed.listeners
        assert parsed.clusters
        for template in parsed.listeners:
            assert template.nodes.matches(namespace, labels), template.name
        for cluster in parsed.clusters:
            assert cluster.nodes.matches(namespace, labels), cluster.name


def _downward_api_labels(labels: dict[str, str]) -> str:
    """What the kubelet writes for ``fieldPath: metadata.labels``: sorted key="value" lines."""
    return "".join(f'{key}="{value}"\n' for key, value in sorted(labels.items()))


@pytest.mark.envoy
def test_envoy_example_bootstrap_is_accepted_by_bootstrap_and_envoy(tmp_path: Path):
    """The example's init container args parse, read downward API labels, and Envoy validates."""
    deployment = find("Deployment", "envoy-example")
    pod = deployment["spec"]["template"]["spec"]
    init = container(deployment, "bootstrap")
    envoy = container(deployment, "envoy")
    assert init["image"] == container(find("Deployment", "wasmxds"), "wasmxds")["image"]
    assert init["args"][0] == "bootstrap"
    pod_name = "envoy-example-5d9f7c6b8-x2x7q"
    namespace = deployment["metadata"]["namespace"]
    args = parse_cli(
        "bootstrap",
        expand_env(init["args"][1:], init, {"POD_NAME": pod_name, "POD_NAMESPACE": namespace}),
    )
    assert args.mode == "listeners"
    for env in init["env"]:
        assert env["valueFrom"]["fieldRef"]["fieldPath"] in ("metadata.name", "metadata.namespace")

    # The labels file is the downward API's rendering of the pod's labels.
    item, volume = _volume_at(pod, init, str(args.labels_file))
    assert {"path": item, "fieldRef": {"fieldPath": "metadata.labels"}} in volume["downwardAPI"][
        "items"
    ]
    # The bootstrap lands on a volume that the Envoy container reads it from.
    assert envoy["args"][:2] == ["--config-path", str(args.output)]
    written, shared = _volume_at(pod, init, str(args.output))
    assert (written, shared) == _volume_at(pod, envoy, str(args.output))
    # wasmxds is reached through its Services.
    assert _service_address(args.xds_address)[0]["metadata"]["name"] == "wasmxds-xds"
    assert _service_address(args.modules_address)[0]["metadata"]["name"] == "wasmxds-admin"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    labels_file = tmp_path / "labels"
    labels_file.write_text(_downward_api_labels(labels))
    args.labels_file = labels_file
    bootstrap = render(options_from_args(args))
    assert yaml.safe_load(bootstrap)["node"] == {
        "id": pod_name,
        "cluster": pod_name,
        "metadata": {"NAMESPACE": namespace, "LABELS": labels},
    }
    config = tmp_path / "envoy.yaml"
    config.write_text(bootstrap)
    assert envoy["command"] == ["envoy"]
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--config-path", str(config), *envoy["args"][2:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
