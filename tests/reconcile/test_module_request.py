"""What a plugin asks of the module stage: scheme defaulting, pull policy, pull-secret
reference, and the signature requirements."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wasmxds.api.keys import VerificationKey, parse_verification_key
from wasmxds.api.objects import ObjectKey
from wasmxds.api.parse import parse_text
from wasmxds.modules.types import ModuleRequest, PullPolicy
from wasmxds.reconcile import module_request


def request_for(
    spec: str, namespace: str = "team", server_keys: Sequence[VerificationKey] = ()
) -> ModuleRequest:
    text = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        f"metadata:\n  name: p\n  namespace: {namespace}\nspec:\n{spec}"
    )
    (plugin,) = parse_text(text, "p.yaml").plugins
    return module_request(plugin, server_keys)


def public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def test_secret_is_a_reference_in_the_plugin_namespace() -> None:
    """imagePullSecret becomes namespace/name of the plugin's namespace; no credentials travel."""
    request = request_for("  url: r.example/f:v1\n  imagePullSecret: regcred\n")
    assert request.url == "oci://r.example/f:v1"
    assert request.pull_secret == ObjectKey("team", "regcred")


@pytest.mark.parametrize(
    "value",
    [
        "regcred",
        "team/regcred",
        "other/regcred",
        "kubernetes://regcred",
        "kubernetes://team/regcred",
        "kubernetes://other/regcred",
    ],
)
def test_every_istio_secret_form_names_the_secret_in_the_plugin_namespace(value: str) -> None:
    """All of istiod's imagePullSecret forms mean `regcred` in the plugin's namespace."""
    request = request_for(f"  url: r.example/f:v1\n  imagePullSecret: {value}\n")
    assert request.pull_secret == ObjectKey("team", "regcred")


def test_builtin_scheme_pulls_as_without_a_secret() -> None:
    """istiod drops a builtin:// pull secret, so the module is pulled as with none."""
    request = request_for("  url: r.example/f:v1\n  imagePullSecret: builtin://x\n")
    assert request.pull_secret is None


def test_http_urls_carry_no_secret() -> None:
    """Istio sends no credentials to http(s) module hosts, so no secret is referenced."""
    request = request_for("  url: https://m.example/f.wasm\n  imagePullSecret: regcred\n")
    assert request.pull_secret is None


def test_latest_defaults_to_always() -> None:
    """Unset pull policy means Always only for :latest (Istio)."""
    assert request_for("  url: oci://r.example/f:latest\n").pull_policy is PullPolicy.ALWAYS
    assert request_for("  url: oci://r.example/f\n").pull_policy is PullPolicy.IF_NOT_PRESENT


def test_server_and_plugin_keys_are_separate_requirements() -> None:
    """--verification-key and verificationKey are two groups: a plugin adds, never replaces."""
    server_pem, plugin_pem = public_pem(), public_pem()
    server = parse_verification_key(server_pem, source="server.pem")
    spec = "  url: r.example/f:v1\n  verificationKey: |\n" + textwrap.indent(plugin_pem, "    ")
    request = request_for(spec, server_keys=[server])
    assert [group.source for group in request.verify] == [
        "--verification-key",
        "spec.verificationKey of team/p",
    ]
    assert request.verify[0].keys == (server,)
    (plugin_key,) = request.verify[1].keys
    assert plugin_key == parse_verification_key(plugin_pem, source="x")
    assert request.requirement == "|".join(sorted([server.fingerprint, plugin_key.fingerprint]))
    assert request_for("  url: r.example/f:v1\n").verify == ()
    only_server = request_for("  url: r.example/f:v1\n", server_keys=[server])
    assert [group.source for group in only_server.verify] == ["--verification-key"]
