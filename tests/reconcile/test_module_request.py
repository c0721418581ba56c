"""What a plugin asks of the module stage: scheme defaulting, pull policy, pull-secret reference."""

from __future__ import annotations

from wasmxds.api.objects import ObjectKey
from wasmxds.api.parse import parse_text
from wasmxds.modules.types import ModuleRequest, PullPolicy
from wasmxds.reconcile import module_request


def request_for(spec: str, namespace: str = "team") -> ModuleRequest:
    text = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        f"metadata:\n  name: p\n  namespace: {namespace}\nspec:\n{spec}"
    )
    (plugin,) = parse_text(text, "p.yaml").plugins
    return module_request(plugin)


def test_secret_is_a_reference_in_the_plugin_namespace() -> None:
    """imagePullSecret becomes namespace/name of the plugin's namespace; no credentials travel."""
    request = request_for("  url: r.example/f:v1\n  imagePullSecret: regcred\n")
    assert request.url == "oci://r.example/f:v1"
    assert request.pull_secret == ObjectKey("team", "regcred")


def test_http_urls_carry_no_secret() -> None:
    """Istio sends no credentials to http(s) module hosts, so no secret is referenced."""
    request = request_for("  url: https://m.example/f.wasm\n  imagePullSecret: regcred\n")
    assert request.pull_secret is None


def test_latest_defaults_to_always() -> None:
    """Unset pull policy means Always only for :latest (Istio)."""
    assert request_for("  url: oci://r.example/f:latest\n").pull_policy is PullPolicy.ALWAYS
    assert request_for("  url: oci://r.example/f\n").pull_policy is PullPolicy.IF_NOT_PRESENT
