"""Istio's semantic rules: one table row per rule, plus Go URL parsing."""

from __future__ import annotations

import math
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from wasmxds.api.convert import LineTable, convert
from wasmxds.api.gourl import GoURLError, parse, parse_request_uri, strict_parse_url
from wasmxds.api.objects import Severity
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.validate import (
    CHECKS,
    dns1123_label_error,
    dns1123_subdomain_error,
    label_value_error,
    qualified_name_error,
    validate_spec,
)

URL = "oci://ghcr.io/acme/filter:v1"
DIGEST = "1ef0c9a92b0420cf25f7fe5d481b231464bc88f486ca3b9c83ed5cc21d2f6210"
GATEWAY = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}


def check(spec: dict[str, Any], *, ignore: tuple[str, ...] = ("target-ref-ignored",)) -> list[str]:
    """Convert ``spec`` (must be schema-clean) and render what the checks say."""
    conversion = convert(spec, wasm_pb2.WasmPlugin, path=("spec",))
    assert conversion.ok, conversion.issues
    issues = validate_spec(conversion.message, present=conversion.present)
    return [
        f"{issue.rule} {issue.severity}: {issue}" for issue in issues if issue.rule not in ignore
    ]


_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = (
    _KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
PRIVATE_PEM = _KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()


def with_url(**fields: Any) -> dict[str, Any]:
    return {"url": URL, **fields}


def env(*entries: dict[str, Any]) -> dict[str, Any]:
    return with_url(vmConfig={"env": list(entries)})


def ports(*numbers: Any) -> dict[str, Any]:
    return with_url(match=[{"ports": [{} if n is None else {"number": n} for n in numbers]}])


# (id, spec, expected lines "rule severity: path: message")
FAILING: list[Any] = [
    pytest.param(
        with_url(selector={"matchLabels": {"app": "a"}}, targetRefs=[GATEWAY]),
        [
            "target-one-of error: spec.targetRefs: only one of selector, targetRef or targetRefs"
            " may be set; found selector and targetRefs"
        ],
        id="target-one-of",
    ),
    pytest.param(
        with_url(targetRef=GATEWAY, targetRefs=[GATEWAY]),
        [
            "target-one-of error: spec.targetRefs: only one of selector, targetRef or targetRefs"
            " may be set; found targetRef and targetRefs"
        ],
        id="target-one-of-refs",
    ),
    pytest.param(
        with_url(selector={}),
        [
            "selector-labels-empty warning: spec.selector: workload selector specified without"
            " labels; it matches every proxy in the plugin's namespace (every proxy, in the root"
            " namespace)"
        ],
        id="selector-labels-empty",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"": "x"}}),
        ['selector-key-empty error: spec.selector.matchLabels[""]: label key must not be empty'],
        id="selector-key-empty",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"app": "*"}}),
        [
            "selector-wildcard error: spec.selector.matchLabels.app: wildcards are not supported"
            " in selectors: app=*"
        ],
        id="selector-wildcard-value",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"a*": "x"}}),
        [
            'selector-wildcard error: spec.selector.matchLabels["a*"]: wildcards are not'
            " supported in selectors: a*=x"
        ],
        id="selector-wildcard-key",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"app": "a" * 64}}),
        [
            "selector-value-length error: spec.selector.matchLabels.app: label value must be no"
            " more than 63 characters (got 64)"
        ],
        id="selector-value-length",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {f"k{i}": "v" for i in range(4097)}}),
        [
            "selector-size error: spec.selector.matchLabels: at most 4096 labels are allowed"
            " (got 4097)"
        ],
        id="selector-size",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"-app": "x"}}),
        [
            'selector-label-syntax warning: spec.selector.matchLabels["-app"]: not a valid'
            " Kubernetes label key (the name part must consist of alphanumeric characters, '-',"
            " '_' or '.', and must start and end with an alphanumeric character); it can still"
            " match a proxy's node metadata labels, but no Kubernetes workload can carry it"
        ],
        id="selector-label-syntax-key",
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"app": "a b"}}),
        [
            "selector-label-syntax warning: spec.selector.matchLabels.app: not a valid Kubernetes"
            " label value (must consist of alphanumeric characters, '-', '_' or '.', and must"
            " start and end with an alphanumeric character); it can still match a proxy's node"
            " metadata labels, but no Kubernetes workload can carry it"
        ],
        id="selector-label-syntax-value",
    ),
    pytest.param(
        with_url(targetRefs=[GATEWAY] * 17),
        ["target-refs-count error: spec.targetRefs: at most 16 items are allowed (got 17)"],
        id="target-refs-count",
    ),
    pytest.param(
        with_url(targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "Gateway"}]),
        ["target-ref-name error: spec.targetRefs[0].name: required: the name of the target"],
        id="target-ref-name-missing",
    ),
    pytest.param(
        with_url(targetRef={**GATEWAY, "name": "g" * 254}),
        [
            "target-ref-name error: spec.targetRef.name: must be no more than 253 characters"
            " (got 254)"
        ],
        id="target-ref-name-long",
    ),
    pytest.param(
        with_url(targetRefs=[{**GATEWAY, "namespace": "other"}]),
        [
            "target-ref-namespace error: spec.targetRefs[0].namespace: must not be set;"
            " cross-namespace references are not supported"
        ],
        id="target-ref-namespace",
    ),
    pytest.param(
        with_url(targetRefs=[{"name": "svc"}]),
        [
            "target-ref-kind-syntax error: spec.targetRefs[0].kind: required: the kind of the"
            " target (e.g. Gateway)"
        ],
        id="target-ref-kind-missing",
    ),
    pytest.param(
        with_url(targetRefs=[{"kind": "Service-", "name": "svc"}]),
        [
            "target-ref-kind-syntax error: spec.targetRefs[0].kind: 'Service-' must start with a"
            " letter and contain only letters, digits and '-'",
            'target-ref-kind error: spec.targetRefs[0]: group "" kind "Service-" is not a'
            ' supported target; use a Service (group "" or "core"), a ServiceEntry'
            " (networking.istio.io), or a Gateway or GatewayClass (gateway.networking.k8s.io)",
        ],
        id="target-ref-kind-pattern",
    ),
    pytest.param(
        with_url(targetRefs=[{"kind": "K" * 64, "name": "svc"}]),
        [
            "target-ref-kind-syntax error: spec.targetRefs[0].kind: must be no more than 63"
            " characters (got 64)",
            'target-ref-kind error: spec.targetRefs[0]: group "" kind "' + "K" * 64 + '" is not'
            ' a supported target; use a Service (group "" or "core"), a ServiceEntry'
            " (networking.istio.io), or a Gateway or GatewayClass (gateway.networking.k8s.io)",
        ],
        id="target-ref-kind-long",
    ),
    pytest.param(
        with_url(targetRefs=[{**GATEWAY, "group": "Gateway.Networking"}]),
        [
            "target-ref-group-syntax error: spec.targetRefs[0].group: 'Gateway.Networking' must"
            " be a lower-case DNS name such as gateway.networking.k8s.io",
            'target-ref-kind error: spec.targetRefs[0]: group "Gateway.Networking" kind'
            ' "Gateway" is not a supported target; use a Service (group "" or "core"), a'
            " ServiceEntry (networking.istio.io), or a Gateway or GatewayClass"
            " (gateway.networking.k8s.io)",
        ],
        id="target-ref-group-syntax",
    ),
    pytest.param(
        with_url(targetRefs=[{**GATEWAY, "group": "a" * 254}]),
        [
            "target-ref-group-syntax error: spec.targetRefs[0].group: must be no more than 253"
            " characters (got 254)",
            'target-ref-kind error: spec.targetRefs[0]: group "' + "a" * 254 + '" kind'
            ' "Gateway" is not a supported target; use a Service (group "" or "core"), a'
            " ServiceEntry (networking.istio.io), or a Gateway or GatewayClass"
            " (gateway.networking.k8s.io)",
        ],
        id="target-ref-group-long",
    ),
    pytest.param(
        with_url(
            targetRefs=[{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}]
        ),
        [
            'target-ref-kind error: spec.targetRefs[0]: group "gateway.networking.k8s.io" kind'
            ' "HTTPRoute" is not a supported target; use a Service (group "" or "core"), a'
            " ServiceEntry (networking.istio.io), or a Gateway or GatewayClass"
            " (gateway.networking.k8s.io)"
        ],
        id="target-ref-kind",
    ),
    pytest.param(
        with_url(targetRef={"kind": "Service", "name": "svc"}),
        [
            "target-ref-ignored warning: spec.targetRef: Service targets are accepted for"
            " compatibility with Istio, where they select waypoints; wasmxds attaches targetRefs"
            " plugins only to Gateway API gateways (proxies labelled"
            " gateway.networking.k8s.io/gateway-name), so this reference matches no proxy"
        ],
        id="target-ref-ignored",
    ),
    pytest.param(
        {"pluginName": "x"},
        [
            "url-required error: spec.url: required: the URL of the Wasm module (oci://,"
            " https://, http:// or file://; no scheme means oci://)"
        ],
        id="url-required-missing",
    ),
    pytest.param(
        {"url": ""},
        [
            "url-required error: spec.url: required: the URL of the Wasm module (oci://,"
            " https://, http:// or file://; no scheme means oci://)"
        ],
        id="url-required-empty",
    ),
    pytest.param(
        {"url": "http://a%zz"},
        ['url-syntax error: spec.url: cannot be parsed as a URL: invalid URL escape "%zz"'],
        id="url-syntax-escape",
    ),
    pytest.param(
        {"url": "oci://ghcr.io/a\nb"},
        [
            "url-syntax error: spec.url: cannot be parsed as a URL: net/url: invalid control"
            " character in URL"
        ],
        id="url-syntax-control",
    ),
    pytest.param(
        {"url": "ftp://files.example.com/f.wasm"},
        [
            'url-scheme error: spec.url: unsupported scheme "ftp"; use oci://, https://, http://'
            " or file:// (no scheme means oci://)"
        ],
        id="url-scheme",
    ),
    pytest.param(
        {"url": "private-registry:5000/openid-connect/openid:latest"},
        [
            'url-scheme error: spec.url: unsupported scheme "private-registry"; use oci://,'
            ' https://, http:// or file:// (no scheme means oci://); "private-registry:5000"'
            " looks like a host and port: write"
            " oci://private-registry:5000/openid-connect/openid:latest"
        ],
        id="url-scheme-registry-port",
    ),
    pytest.param(
        with_url(sha256="abc"),
        ["sha256-format error: spec.sha256: must be 64 characters long (got 3)"],
        id="sha256-format-length",
    ),
    pytest.param(
        with_url(sha256=DIGEST.upper()),
        ["sha256-format error: spec.sha256: must match [a-f0-9]{64} (use lower case)"],
        id="sha256-format-upper",
    ),
    pytest.param(
        with_url(sha256="g" * 64),
        ["sha256-format error: spec.sha256: must match [a-f0-9]{64}"],
        id="sha256-format-pattern",
    ),
    pytest.param(
        {"url": f"ghcr.io/acme/filter@sha256:{DIGEST}", "sha256": "0" * 64},
        [
            "sha256-digest-mismatch error: spec.sha256: does not match the digest in spec.url"
            " (sha256:1ef0c9a92b04…); the image is pinned by that digest, so no module can"
            " satisfy both"
        ],
        id="sha256-digest-mismatch",
    ),
    pytest.param(
        with_url(imagePullSecret=""),
        [
            "image-pull-secret-length error: spec.imagePullSecret: must be 1 to 253 characters"
            " long (got 0)"
        ],
        id="image-pull-secret-length-empty",
    ),
    pytest.param(
        with_url(imagePullSecret="a" * 254),
        [
            "image-pull-secret-length error: spec.imagePullSecret: must be 1 to 253 characters"
            " long (got 254)"
        ],
        id="image-pull-secret-length-long",
    ),
    pytest.param(
        with_url(imagePullSecret="My_Secret"),
        [
            "image-pull-secret-name error: spec.imagePullSecret: not a valid Secret name, so no"
            " such Secret can exist: must consist of lower case alphanumeric characters, '-' or"
            " '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
        ],
        id="image-pull-secret-name",
    ),
    pytest.param(
        with_url(imagePullSecret="kubernetes://team/My_Secret"),
        [
            "image-pull-secret-name error: spec.imagePullSecret: not a valid Secret name"
            " 'My_Secret', so no such Secret can exist: must consist of lower case alphanumeric"
            " characters, '-' or '.', and must start and end with an alphanumeric character"
            " (e.g. 'example.com')"
        ],
        id="image-pull-secret-name-in-form",
    ),
    pytest.param(
        with_url(imagePullSecret="configmap://team/regcred"),
        [
            "image-pull-secret-name error: spec.imagePullSecret: names no Secret: configmap://"
            " names no Secret istiod reads pull credentials from; name a Secret in the plugin's"
            " namespace (`name` or `kubernetes://name`)"
        ],
        id="image-pull-secret-name-configmap",
    ),
    pytest.param(
        with_url(imagePullSecret="kubernetes://team/"),
        [
            "image-pull-secret-name error: spec.imagePullSecret: names no Secret: istiod reads"
            " it as `namespace/name` (after an optional `kubernetes://`) and finds no name, so"
            " the pull would fail for a missing secret"
        ],
        id="image-pull-secret-name-empty",
    ),
    pytest.param(
        with_url(imagePullSecret="builtin://"),
        [
            "image-pull-secret-name warning: spec.imagePullSecret: names no Secret"
            " (builtin://): Istio pulls this module as if imagePullSecret were unset, and so"
            " does wasmxds"
        ],
        id="image-pull-secret-name-builtin",
    ),
    pytest.param(
        with_url(pluginName=""),
        ["plugin-name-length error: spec.pluginName: must be 1 to 256 characters long (got 0)"],
        id="plugin-name-length-empty",
    ),
    pytest.param(
        with_url(pluginName="p" * 257),
        ["plugin-name-length error: spec.pluginName: must be 1 to 256 characters long (got 257)"],
        id="plugin-name-length-long",
    ),
    pytest.param(
        with_url(verificationKey="-----BEGIN PUBLIC KEY-----"),
        [
            "verification-key error: spec.verificationKey: no PEM block found; expected one"
            " '-----BEGIN PUBLIC KEY-----' block"
        ],
        id="verification-key",
    ),
    pytest.param(
        with_url(verificationKey=PRIVATE_PEM),
        [
            "verification-key error: spec.verificationKey: this is a private key; give the"
            " public key instead (`cosign public-key --key cosign.key`, or `openssl pkey"
            " -pubout -in KEY`), and keep the private key secret"
        ],
        id="verification-key-private",
    ),
    pytest.param(
        {"url": "https://example.com/f.wasm", "verificationKey": PUBLIC_PEM},
        [
            "verification-key error: spec.verificationKey: needs an oci:// module: signatures"
            " are looked up in the registry, and a https:// module cannot be verified, so it"
            " would never be served"
        ],
        id="verification-key-not-oci",
    ),
    pytest.param(
        env(*({"name": f"V{i}"} for i in range(257))),
        ["env-count error: spec.vmConfig.env: at most 256 variables are allowed (got 257)"],
        id="env-count",
    ),
    pytest.param(
        env({"value": "x"}),
        [
            "env-name-required error: spec.vmConfig.env[0].name: required: the environment"
            " variable's name"
        ],
        id="env-name-required",
    ),
    pytest.param(
        env({"name": "V" * 257}),
        [
            "env-name-length error: spec.vmConfig.env[0].name: must be no more than 256"
            " characters (got 257)"
        ],
        id="env-name-length",
    ),
    pytest.param(
        env({"name": "A"}, {"name": "B"}, {"name": "A", "value": "2"}),
        [
            'env-name-unique error: spec.vmConfig.env[2].name: duplicate variable "A" (first'
            " defined in env[0])"
        ],
        id="env-name-unique",
    ),
    pytest.param(
        env({"name": "my-var", "value": "1"}),
        [
            'env-name-identifier warning: spec.vmConfig.env[0].name: "my-var" is not a C'
            " identifier ([A-Za-z_][A-Za-z0-9_]*) as the WasmPlugin API asks; Envoy passes it"
            " on, but many plugin languages cannot read it"
        ],
        id="env-name-identifier",
    ),
    pytest.param(
        env({"name": "A", "value": "v" * 2049}),
        [
            "env-value-length error: spec.vmConfig.env[0].value: must be no more than 2048"
            " characters (got 2049)"
        ],
        id="env-value-length",
    ),
    pytest.param(
        env({"name": "A", "valueFrom": "HOST", "value": "x"}),
        [
            "env-value-host error: spec.vmConfig.env[0].value: may only be set when valueFrom is"
            " INLINE; with HOST the value comes from the proxy's environment"
        ],
        id="env-value-host",
    ),
    pytest.param(
        env({"name": "A", "valueFrom": "HOST", "value": ""}),
        [
            "env-value-host error: spec.vmConfig.env[0].value: may only be set when valueFrom is"
            " INLINE; with HOST the value comes from the proxy's environment"
        ],
        id="env-value-host-empty",
    ),
    pytest.param(
        ports(0),
        [
            "match-port-range error: spec.match[0].ports[0].number: must be between 1 and 65535"
            " (got 0)"
        ],
        id="match-port-range-zero",
    ),
    pytest.param(
        ports(65536),
        [
            "match-port-range error: spec.match[0].ports[0].number: must be between 1 and 65535"
            " (got 65536)"
        ],
        id="match-port-range-high",
    ),
    pytest.param(
        ports(None),
        [
            "match-port-range error: spec.match[0].ports[0].number: required: a port number from"
            " 1 to 65535"
        ],
        id="match-port-range-missing",
    ),
    pytest.param(
        ports(80, 443, 80),
        [
            "match-port-unique error: spec.match[0].ports[2].number: duplicate port 80 (first"
            " listed at ports[0])"
        ],
        id="match-port-unique",
    ),
]

PASSING: list[Any] = [
    pytest.param({"url": URL}, id="minimal"),
    pytest.param(with_url(verificationKey=PUBLIC_PEM), id="verification-key"),
    pytest.param({"url": "ghcr.io/acme/filter:v1"}, id="no-scheme-means-oci"),
    pytest.param({"url": "localhost/filter:v1"}, id="no-scheme-host-without-port"),
    pytest.param({"url": "https://example.com/f.wasm?x=1#frag"}, id="https"),
    pytest.param({"url": "http://[::1]:8080/f.wasm"}, id="ipv6-host"),
    pytest.param({"url": "file:///opt/filters/openid.wasm"}, id="file"),
    pytest.param({"url": "/opt/filters/openid.wasm"}, id="bare-path-istio-accepts"),
    pytest.param({"url": "http://a b/"}, id="istio-retry-quirk-accepts"),
    pytest.param({"url": f"ghcr.io/acme/f@sha256:{DIGEST}", "sha256": DIGEST}, id="digest-agrees"),
    pytest.param(
        {"url": f"https://x/f.wasm@sha256:{DIGEST}", "sha256": "0" * 64}, id="digest-not-oci"
    ),
    pytest.param(
        with_url(selector={"matchLabels": {"app.kubernetes.io/name": "web", "v": ""}}), id="labels"
    ),
    pytest.param(
        env(
            {"name": "A", "value": "1"},
            {"name": "_B", "valueFrom": "HOST"},
            {"name": "C", "valueFrom": "INLINE"},
        ),
        id="env",
    ),
    pytest.param(
        with_url(
            match=[{"mode": "CLIENT", "ports": [{"number": 80}]}, {"ports": [{"number": 80}]}]
        ),
        id="same-port-in-two-selectors",
    ),
    pytest.param(with_url(imagePullSecret="pull-secret.v1", pluginName="root"), id="pull-secret"),
    pytest.param(with_url(imagePullSecret="team/regcred"), id="pull-secret-ns"),
    pytest.param(with_url(imagePullSecret="other/regcred"), id="pull-secret-other-ns"),
    pytest.param(with_url(imagePullSecret="kubernetes://regcred"), id="pull-secret-scheme"),
    pytest.param(with_url(imagePullSecret="kubernetes://team/regcred"), id="pull-secret-scheme-ns"),
    pytest.param(with_url(targetRefs=[{**GATEWAY, "namespace": ""}]), id="empty-namespace-ok"),
    pytest.param(
        with_url(
            targetRefs=[
                {"kind": "Service", "name": "s"},
                {"group": "core", "kind": "Service", "name": "s"},
                {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "se"},
                {"group": "gateway.networking.k8s.io", "kind": "GatewayClass", "name": "c"},
            ]
        ),
        id="all-target-kinds",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), FAILING)
def test_rule_fails(spec: dict[str, Any], expected: list[str]) -> None:
    """The row's rule (and only it) reports exactly the expected problem."""
    wanted = " ".join(expected)
    ignore = () if "target-ref-ignored" in wanted else ("target-ref-ignored",)
    assert check(spec, ignore=ignore) == expected


@pytest.mark.parametrize("spec", PASSING)
def test_valid_spec_passes(spec: dict[str, Any]) -> None:
    """A spec Istio accepts produces no problem at all."""
    assert check(spec) == []


def test_plugin_config_json_rule() -> None:
    """pluginConfig values JSON cannot render (no kind, NaN) are errors istiod would drop."""
    spec = wasm_pb2.WasmPlugin(url=URL)
    spec.plugin_config.fields["empty"].SetInParent()
    spec.plugin_config.fields["nested"].list_value.values.add().number_value = math.nan
    issues = [f"{i.rule} {i.severity}: {i}" for i in validate_spec(spec)]
    assert issues == [
        "plugin-config-json error: spec.pluginConfig.empty: has no value; Istio drops a plugin"
        " whose pluginConfig has one",
        "plugin-config-json error: spec.pluginConfig.nested[0]: nan is not a JSON number",
    ]


def test_every_rule_has_a_failing_row() -> None:
    """The table covers every registered check, so no rule goes untested."""
    covered = {line.split(" ", 1)[0] for param in FAILING for line in param.values[1]}
    covered.add("plugin-config-json")
    assert covered == set(CHECKS)


def test_checks_have_summaries() -> None:
    """Every check documents what it enforces and where the rule comes from."""
    for name, registered in CHECKS.items():
        assert registered.name == name
        assert registered.summary


def test_issue_lines_come_from_locator() -> None:
    """A check's problem points at the line of its field."""
    spec = wasm_pb2.WasmPlugin(url=URL, sha256="abc")
    lines = LineTable({(): 1, ("spec",): 5, ("spec", "sha256"): 8})
    (issue,) = validate_spec(spec, locate=lines)
    assert (issue.line, issue.severity, issue.rule) == (8, Severity.ERROR, "sha256-format")


def test_spec_built_in_code_has_no_presence() -> None:
    """Without presence records, only non-empty strings count as written."""
    assert validate_spec(wasm_pb2.WasmPlugin(url=URL, plugin_name="")) == []


class TestKubernetesNames:
    @pytest.mark.parametrize(
        ("value", "valid"),
        [
            pytest.param("istio-system", True, id="label"),
            pytest.param("a" * 63, True, id="63"),
            pytest.param("a" * 64, False, id="64"),
            pytest.param("Istio", False, id="upper"),
            pytest.param("a.b", False, id="dot"),
            pytest.param("-a", False, id="leading-dash"),
        ],
    )
    def test_dns1123_label(self, value: str, valid: bool) -> None:
        """Namespace names follow DNS-1123 label rules."""
        assert (dns1123_label_error(value) is None) is valid

    @pytest.mark.parametrize(
        ("value", "valid"),
        [
            pytest.param("tier2-gateway-wasm-add-header0", True, id="name"),
            pytest.param("a.b-c", True, id="dots"),
            pytest.param("a" * 254, False, id="254"),
            pytest.param("a..b", False, id="empty-part"),
            pytest.param("a_b", False, id="underscore"),
        ],
    )
    def test_dns1123_subdomain(self, value: str, valid: bool) -> None:
        """Object names follow DNS-1123 subdomain rules."""
        assert (dns1123_subdomain_error(value) is None) is valid

    @pytest.mark.parametrize(
        ("value", "valid"),
        [
            pytest.param("app", True, id="plain"),
            pytest.param("app.kubernetes.io/name", True, id="prefixed"),
            pytest.param("A_b.c-D", True, id="mixed"),
            pytest.param("/name", False, id="empty-prefix"),
            pytest.param("Bad_Prefix/name", False, id="bad-prefix"),
            pytest.param("x/", False, id="empty-name"),
            pytest.param("n" * 64, False, id="long-name"),
            pytest.param("a b", False, id="space"),
        ],
    )
    def test_qualified_name(self, value: str, valid: bool) -> None:
        """Label and annotation keys follow the qualified-name rules."""
        assert (qualified_name_error(value) is None) is valid

    @pytest.mark.parametrize(
        ("value", "valid"),
        [
            pytest.param("", True, id="empty"),
            pytest.param("v1.2_3-a", True, id="chars"),
            pytest.param("a" * 64, False, id="long"),
            pytest.param("-a", False, id="leading-dash"),
        ],
    )
    def test_label_value(self, value: str, valid: bool) -> None:
        """Label values may be empty, else follow the qualified-name character rules."""
        assert (label_value_error(value) is None) is valid


class TestGoURL:
    """Go's net/url decisions, as Istio's strictParseURL relies on them."""

    @pytest.mark.parametrize(
        ("url", "scheme"),
        [
            pytest.param("oci://ghcr.io/a/b:v1", "oci", id="oci"),
            pytest.param("OCI://ghcr.io/a", "oci", id="scheme-lowered"),
            pytest.param("ghcr.io/a/b:v1", "http", id="no-scheme-retried-with-http"),
            pytest.param("localhost:5000/x", "localhost", id="host-port-reads-as-scheme"),
            pytest.param("/opt/x.wasm", "", id="absolute-path"),
            pytest.param("http://u:p@host/x", "http", id="userinfo"),
            pytest.param("http://[fe80::1%25en0]:80/", "http", id="ipv6-zone"),
            pytest.param("http://example.com?", "http", id="force-query"),
            pytest.param("*", "", id="asterisk"),
        ],
    )
    def test_strict_parse_accepts(self, url: str, scheme: str) -> None:
        """URLs Istio accepts parse, with the scheme Istio then checks."""
        assert strict_parse_url(url).scheme == scheme

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            pytest.param("a b", "invalid URI for request", id="relative"),
            pytest.param(":foo", "missing protocol scheme", id="missing-scheme"),
            pytest.param("http://a%zz", 'invalid URL escape "%zz"', id="bad-escape"),
            pytest.param(
                "http://x/\x7f", "net/url: invalid control character in URL", id="control"
            ),
        ],
    )
    def test_strict_parse_rejects(self, url: str, message: str) -> None:
        """URLs Istio rejects fail with Go's first error."""
        with pytest.raises(GoURLError, match=message):
            strict_parse_url(url)

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            pytest.param("", "empty url", id="empty"),
            pytest.param("http://[::1/", "missing ']' in host", id="unclosed-bracket"),
            pytest.param("http://[::1]x/", 'invalid port "x" after host', id="junk-after-bracket"),
            pytest.param("http://[127.0.0.1]/", "invalid IP-literal", id="ipv4-in-brackets"),
            pytest.param("http://[zz]/", "invalid host", id="not-an-ip"),
            pytest.param("http://host:80a/", 'invalid port ":80a" after host', id="bad-port"),
            pytest.param("http://a b/", 'invalid character " " in host name', id="space-in-host"),
            pytest.param("http://h%41/", 'invalid URL escape "%41"', id="ascii-escape-in-host"),
            pytest.param("http://us er@host/", "net/url: invalid userinfo", id="bad-userinfo"),
            pytest.param("http://u%zz@host/", 'invalid URL escape "%zz"', id="bad-userinfo-escape"),
            pytest.param("http://[fe80::1%25%00]/", 'invalid URL escape "%00"', id="bad-zone"),
        ],
    )
    def test_request_uri_rejects(self, url: str, message: str) -> None:
        """ParseRequestURI's authority rules are reproduced."""
        with pytest.raises(GoURLError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_request_uri(url)

    def test_parse_allows_relative_and_fragment(self) -> None:
        """url.Parse takes relative references and decodes the fragment."""
        assert parse("a/b#x%20y").fragment == "x y"
        assert parse("//host/p").host == "host"
        with pytest.raises(GoURLError, match="first path segment"):
            parse("1a:b/c")
        with pytest.raises(GoURLError, match="invalid URL escape"):
            parse("a#%zz")


def test_gateway_target_refs_are_not_warned_about():
    """targetRefs to a Gateway apply to gateway proxies, so they get no warning."""
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}
    assert check(with_url(targetRefs=[ref]), ignore=()) == []
