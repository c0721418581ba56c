"""Istio's semantic rules for a WasmPlugin spec, one named check each.

The rules come from the two places Istio enforces them: the CRD's OpenAPI and
CEL rules (``manifests/charts/base/files/crd-all.gen.yaml``) and the webhook
(``ValidateWasmPlugin`` in ``pkg/config/validation/validation.go``). A spec
Istio would refuse is refused here. A few checks go further, each marked
"beyond Istio" in its summary; they catch specs Istio accepts but that can
never work (a ``sha256`` that contradicts the digest in the URL). Problems
that do not stop a plugin from working are warnings, as Istio's are.

Checks run on a converted ``wasm_pb2.WasmPlugin`` (see
:mod:`wasmxds.api.convert`), so type errors never reach them. Each is a
function registered in :data:`CHECKS` under a stable name; the table test
holds at least one failing example per name.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from google.protobuf import struct_pb2

from wasmxds.api.convert import NO_LINES, FieldPath, Issue, Locator
from wasmxds.api.gourl import GoURL, GoURLError, strict_parse_url
from wasmxds.api.keys import parse_verification_key
from wasmxds.api.moduleurl import module_scheme
from wasmxds.api.objects import Severity
from wasmxds.api.proto import selector_pb2, wasm_pb2
from wasmxds.api.pullsecretref import pull_secret_ref
from wasmxds.errors import KeyFormatError

__all__ = [
    "CHECKS",
    "Check",
    "Finding",
    "Subject",
    "dns1123_label_error",
    "dns1123_subdomain_error",
    "label_value_error",
    "qualified_name_error",
    "validate_spec",
]

SPEC: FieldPath = ("spec",)


@dataclass(frozen=True, slots=True)
class Finding:
    """What a check reports: the field, the message (without the field) and how bad it is."""

    path: FieldPath
    message: str
    severity: Severity = Severity.ERROR


@dataclass(frozen=True, slots=True)
class Subject:
    """The spec being checked, with what the converter knows about its source.

    ``present`` lists the paths that were written, so ``pluginName: ""`` (the
    CRD rejects it: minLength 1) differs from no ``pluginName``. A spec built
    in code has no such record; then only non-empty values count as written.
    """

    spec: wasm_pb2.WasmPlugin
    present: frozenset[FieldPath] = frozenset()
    locate: Locator = NO_LINES

    def written(self, path: FieldPath, value: str) -> bool:
        return bool(value) or path in self.present


CheckFunc = Callable[[Subject], Iterable[Finding]]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    summary: str
    run: CheckFunc


CHECKS: dict[str, Check] = {}
"""Every rule, by name, in the order they run."""


def _check(name: str, summary: str) -> Callable[[CheckFunc], CheckFunc]:
    def register(func: CheckFunc) -> CheckFunc:
        if name in CHECKS:
            raise ValueError(f"check {name!r} is registered twice")
        CHECKS[name] = Check(name, summary, func)
        return func

    return register


def validate_spec(
    spec: wasm_pb2.WasmPlugin,
    *,
    present: frozenset[FieldPath] = frozenset(),
    locate: Locator = NO_LINES,
) -> list[Issue]:
    """Run every check on ``spec``; the issues carry paths under ``spec`` and their lines."""
    subject = Subject(spec, present, locate)
    issues: list[Issue] = []
    for check in CHECKS.values():
        for finding in check.run(subject):
            line = locate(finding.path)
            issues.append(Issue(finding.path, line, finding.message, finding.severity, check.name))
    return issues


# Kubernetes names ---------------------------------------------------------------
# The syntax rules of k8s.io/apimachinery/pkg/util/validation, used here for
# label selectors and by wasmxds.api.parse for metadata.

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")


def dns1123_label_error(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (a namespace name), or None."""
    if len(value) > 63:
        return f"must be no more than 63 characters (got {len(value)})"
    if not _DNS1123_LABEL.match(value):
        return (
            "must consist of lower case alphanumeric characters or '-', and must start"
            " and end with an alphanumeric character (e.g. 'my-name')"
        )
    return None


def dns1123_subdomain_error(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 subdomain (an object name), or None."""
    if len(value) > 253:
        return f"must be no more than 253 characters (got {len(value)})"
    if not _DNS1123_SUBDOMAIN.match(value):
        return (
            "must consist of lower case alphanumeric characters, '-' or '.', and must"
            " start and end with an alphanumeric character (e.g. 'example.com')"
        )
    return None


def qualified_name_error(value: str) -> str | None:
    """Why ``value`` is not a label or annotation key (``[prefix/]name``), or None."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "the prefix before '/' must not be empty"
        reason = dns1123_subdomain_error(prefix)
        if reason:
            return f"prefix {prefix!r} {reason}"
    if not name:
        return "the name part must not be empty"
    if len(name) > 63:
        return f"the name part must be no more than 63 characters (got {len(name)})"
    if not _QUALIFIED_NAME.match(name):
        return (
            "the name part must consist of alphanumeric characters, '-', '_' or '.', and"
            " must start and end with an alphanumeric character"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None (the empty value is valid)."""
    if len(value) > 63:
        return f"must be no more than 63 characters (got {len(value)})"
    if value and not _QUALIFIED_NAME.match(value):
        return (
            "must consist of alphanumeric characters, '-', '_' or '.', and must start"
            " and end with an alphanumeric character"
        )
    return None


# Targeting: selector, targetRef, targetRefs -------------------------------------------


def _labels(subject: Subject) -> list[tuple[FieldPath, str, str]]:
    labels = subject.spec.selector.match_labels
    base = (*SPEC, "selector", "matchLabels")
    return [((*base, key), key, labels[key]) for key in sorted(labels)]


@_check(
    "target-one-of",
    "at most one of selector, targetRef and targetRefs (CRD CEL rule and webhook)",
)
def _target_one_of(subject: Subject) -> Iterator[Finding]:
    spec = subject.spec
    given = [
        name
        for name, is_set in (
            ("selector", spec.HasField("selector")),
            ("targetRef", spec.HasField("targetRef")),
            ("targetRefs", bool(spec.targetRefs) or (*SPEC, "targetRefs") in subject.present),
        )
        if is_set
    ]
    if len(given) > 1:
        yield Finding(
            (*SPEC, given[1]),
            "only one of selector, targetRef or targetRefs may be set; found "
            + " and ".join(given),
        )


@_check(
    "selector-labels-empty",
    "warning: a selector without labels matches every proxy in scope (webhook warning)",
)
def _selector_labels_empty(subject: Subject) -> Iterator[Finding]:
    if subject.spec.HasField("selector") and not subject.spec.selector.match_labels:
        yield Finding(
            (*SPEC, "selector"),
            "workload selector specified without labels; it matches every proxy in the"
            " plugin's namespace (every proxy, in the root namespace)",
            Severity.WARNING,
        )


@_check("selector-key-empty", "matchLabels keys must not be empty (CRD CEL rule and webhook)")
def _selector_key_empty(subject: Subject) -> Iterator[Finding]:
    for path, key, _ in _labels(subject):
        if not key:
            yield Finding(path, "label key must not be empty")


@_check("selector-wildcard", "no '*' in matchLabels keys or values (CRD CEL rules and webhook)")
def _selector_wildcard(subject: Subject) -> Iterator[Finding]:
    for path, key, value in _labels(subject):
        if "*" in key or "*" in value:
            yield Finding(path, f"wildcards are not supported in selectors: {key}={value}")


@_check("selector-value-length", "matchLabels values are at most 63 characters (CRD maxLength)")
def _selector_value_length(subject: Subject) -> Iterator[Finding]:
    for path, _, value in _labels(subject):
        if len(value) > 63:
            yield Finding(
                path, f"label value must be no more than 63 characters (got {len(value)})"
            )


@_check("selector-size", "at most 4096 matchLabels (CRD maxProperties)")
def _selector_size(subject: Subject) -> Iterator[Finding]:
    count = len(subject.spec.selector.match_labels)
    if count > 4096:
        yield Finding(
            (*SPEC, "selector", "matchLabels"), f"at most 4096 labels are allowed (got {count})"
        )


@_check(
    "selector-label-syntax",
    "warning, beyond Istio: matchLabels should be valid Kubernetes label keys and values",
)
def _selector_label_syntax(subject: Subject) -> Iterator[Finding]:
    for path, key, value in _labels(subject):
        if not key or "*" in key or "*" in value or len(value) > 63:
            continue  # reported as errors by the checks above
        reason = qualified_name_error(key)
        what = "key"
        if reason is None:
            reason, what = label_value_error(value), "value"
        if reason is not None:
            yield Finding(
                path,
                f"not a valid Kubernetes label {what} ({reason}); it can still match a"
                " proxy's node metadata labels, but no Kubernetes workload can carry it",
                Severity.WARNING,
            )


def _refs(subject: Subject) -> list[tuple[FieldPath, selector_pb2.PolicyTargetReference]]:
    spec = subject.spec
    refs = [((*SPEC, "targetRef"), spec.targetRef)] if spec.HasField("targetRef") else []
    refs.extend(((*SPEC, "targetRefs", index), ref) for index, ref in enumerate(spec.targetRefs))
    return refs


@_check("target-refs-count", "at most 16 targetRefs (CRD maxItems)")
def _target_refs_count(subject: Subject) -> Iterator[Finding]:
    count = len(subject.spec.targetRefs)
    if count > 16:
        yield Finding((*SPEC, "targetRefs"), f"at most 16 items are allowed (got {count})")


@_check("target-ref-name", "targetRef name is required, 1 to 253 characters (CRD and webhook)")
def _target_ref_name(subject: Subject) -> Iterator[Finding]:
    for path, ref in _refs(subject):
        if not ref.name:
            yield Finding((*path, "name"), "required: the name of the target")
        elif len(ref.name) > 253:
            yield Finding(
                (*path, "name"), f"must be no more than 253 characters (got {len(ref.name)})"
            )


@_check(
    "target-ref-namespace",
    "targetRef namespace must be empty: no cross-namespace references (CRD CEL rule and webhook)",
)
def _target_ref_namespace(subject: Subject) -> Iterator[Finding]:
    for path, ref in _refs(subject):
        if ref.namespace:
            yield Finding(
                (*path, "namespace"),
                "must not be set; cross-namespace references are not supported",
            )


_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?\Z")
_GROUP = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?\Z")


@_check(
    "target-ref-kind-syntax",
    "targetRef kind is required, 1 to 63 characters, a CamelCase word (CRD)",
)
def _target_ref_kind_syntax(subject: Subject) -> Iterator[Finding]:
    for path, ref in _refs(subject):
        if not ref.kind:
            yield Finding((*path, "kind"), "required: the kind of the target (e.g. Gateway)")
        elif len(ref.kind) > 63:
            yield Finding(
                (*path, "kind"), f"must be no more than 63 characters (got {len(ref.kind)})"
            )
        elif not _KIND.match(ref.kind):
            yield Finding(
                (*path, "kind"),
                f"{ref.kind!r} must start with a letter and contain only letters, digits and '-'",
            )


@_check(
    "target-ref-group-syntax", "targetRef group is a DNS subdomain of at most 253 characters (CRD)"
)
def _target_ref_group_syntax(subject: Subject) -> Iterator[Finding]:
    for path, ref in _refs(subject):
        if len(ref.group) > 253:
            yield Finding(
                (*path, "group"), f"must be no more than 253 characters (got {len(ref.group)})"
            )
        elif not _GROUP.match(ref.group):
            yield Finding(
                (*path, "group"),
                f"{ref.group!r} must be a lower-case DNS name such as gateway.networking.k8s.io",
            )


_ALLOWED_TARGETS = frozenset(
    {
        ("core", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    }
)


@_check(
    "target-ref-kind",
    "targetRef is a Service, ServiceEntry, Gateway or GatewayClass (webhook)",
)
def _target_ref_kind(subject: Subject) -> Iterator[Finding]:
    for path, ref in _refs(subject):
        if not ref.kind:
            continue
        if (ref.group or "core", ref.kind) not in _ALLOWED_TARGETS:
            yield Finding(
                path,
                f'group "{ref.group}" kind "{ref.kind}" is not a supported target; use a'
                ' Service (group "" or "core"), a ServiceEntry (networking.istio.io), or a'
                " Gateway or GatewayClass (gateway.networking.k8s.io)",
            )


@_check(
    "target-ref-ignored",
    "warning, wasmxds: targetRefs other than a Gateway apply to no proxy (no waypoints here)",
)
def _target_ref_ignored(subject: Subject) -> Iterator[Finding]:
    spec = subject.spec
    refs: list[tuple[FieldPath, selector_pb2.PolicyTargetReference]] = []
    if spec.HasField("targetRef"):
        refs.append(((*SPEC, "targetRef"), spec.targetRef))
    refs += [((*SPEC, "targetRefs", i), ref) for i, ref in enumerate(spec.targetRefs)]
    for path, ref in refs:
        if ref.kind == "Gateway" and ref.group == "gateway.networking.k8s.io":
            continue  # matched against proxies labelled gateway.networking.k8s.io/gateway-name
        yield Finding(
            path,
            f"{ref.kind} targets are accepted for compatibility with Istio, where they select"
            " waypoints; wasmxds attaches targetRefs plugins only to Gateway API gateways"
            " (proxies labelled gateway.networking.k8s.io/gateway-name), so this reference"
            " matches no proxy",
            Severity.WARNING,
        )


# The module: url, sha256, pull settings ---------------------------------------------

_SCHEMES = ("", "file", "http", "https", "oci")
_PORT_AFTER_HOST = re.compile(r"[0-9]+(/|\Z)")


@_check("url-required", "url is required and not empty (CRD required + minLength, webhook)")
def _url_required(subject: Subject) -> Iterator[Finding]:
    if not subject.spec.url:
        yield Finding(
            (*SPEC, "url"),
            "required: the URL of the Wasm module (oci://, https://, http:// or file://;"
            " no scheme means oci://)",
        )


@functools.lru_cache(maxsize=4096)
def _parse_url(url: str) -> GoURL | GoURLError:
    """Istio's parse of ``url``, once per distinct URL (several checks need it)."""
    try:
        return strict_parse_url(url)
    except GoURLError as exc:
        return exc


@_check("url-syntax", "url parses as Istio's strictParseURL parses it (webhook, CRD isURL)")
def _url_syntax(subject: Subject) -> Iterator[Finding]:
    if not subject.spec.url:
        return
    parsed = _parse_url(subject.spec.url)
    if isinstance(parsed, GoURLError):
        yield Finding((*SPEC, "url"), f"cannot be parsed as a URL: {parsed}")


@_check("url-scheme", "url scheme is oci, https, http, file or none (webhook, CRD CEL rule)")
def _url_scheme(subject: Subject) -> Iterator[Finding]:
    url = subject.spec.url
    if not url:
        return
    parsed = _parse_url(url)
    if isinstance(parsed, GoURLError) or parsed.scheme in _SCHEMES:
        return
    message = (
        f'unsupported scheme "{parsed.scheme}"; use oci://, https://, http:// or file://'
        " (no scheme means oci://)"
    )
    if parsed.opaque and _PORT_AFTER_HOST.match(parsed.opaque):
        # "registry:5000/repo" reads as scheme "registry"; Istio rejects it too.
        message += f'; "{url.split("/", 1)[0]}" looks like a host and port: write oci://{url}'
    yield Finding((*SPEC, "url"), message)


_SHA256 = re.compile(r"[a-f0-9]{64}\Z")
_DIGEST = re.compile(r"@sha256:([^/@?#]*)\Z")


@_check("sha256-format", "sha256 is 64 lowercase hex characters (CRD pattern, webhook)")
def _sha256_format(subject: Subject) -> Iterator[Finding]:
    value = subject.spec.sha256
    if not value:
        return
    if len(value) != 64:
        yield Finding((*SPEC, "sha256"), f"must be 64 characters long (got {len(value)})")
    elif not _SHA256.match(value):
        hint = " (use lower case)" if _SHA256.match(value.lower()) else ""
        yield Finding((*SPEC, "sha256"), f"must match [a-f0-9]{{64}}{hint}")


@_check(
    "sha256-digest-mismatch",
    "beyond Istio: sha256 agrees with an @sha256: digest in an OCI url (else nothing can match)",
)
def _sha256_digest_mismatch(subject: Subject) -> Iterator[Finding]:
    spec = subject.spec
    if not spec.sha256 or module_scheme(spec.url) != "oci":
        return
    match = _DIGEST.search(spec.url)
    if match and _SHA256.match(match.group(1)) and match.group(1) != spec.sha256:
        yield Finding(
            (*SPEC, "sha256"),
            f"does not match the digest in spec.url (sha256:{match.group(1)[:12]}…); the"
            " image is pinned by that digest, so no module can satisfy both",
        )


@_check(
    "image-pull-secret-length", "imagePullSecret is 1 to 253 characters when set (CRD, webhook)"
)
def _image_pull_secret_length(subject: Subject) -> Iterator[Finding]:
    path = (*SPEC, "imagePullSecret")
    value = subject.spec.image_pull_secret
    if subject.written(path, value) and not 1 <= len(value) <= 253:
        yield Finding(path, f"must be 1 to 253 characters long (got {len(value)})")


@_check(
    "image-pull-secret-name",
    "beyond Istio: imagePullSecret names a valid Secret (`name`, `ns/name`, `kubernetes://name`"
    " or `kubernetes://ns/name`, as istiod reads it)",
)
def _image_pull_secret_name(subject: Subject) -> Iterator[Finding]:
    value = subject.spec.image_pull_secret
    if not 1 <= len(value) <= 253:
        return
    path = (*SPEC, "imagePullSecret")
    ref = pull_secret_ref(value)
    if ref.unusable:
        yield Finding(path, f"names no Secret: {ref.unusable}")
        return
    if not ref.name:
        yield Finding(
            path,
            "names no Secret (builtin://): Istio pulls this module as if imagePullSecret were"
            " unset, and so does wasmxds",
            Severity.WARNING,
        )
        return
    reason = dns1123_subdomain_error(ref.name)
    if reason:
        shown = "" if ref.name == value else f" {ref.name!r}"
        yield Finding(
            path, f"not a valid Secret name{shown}, so no such Secret can exist: {reason}"
        )


@_check("plugin-name-length", "pluginName is 1 to 256 characters when set (CRD, webhook)")
def _plugin_name_length(subject: Subject) -> Iterator[Finding]:
    path = (*SPEC, "pluginName")
    value = subject.spec.plugin_name
    if subject.written(path, value) and not 1 <= len(value) <= 256:
        yield Finding(path, f"must be 1 to 256 characters long (got {len(value)})")


@_check(
    "verification-key",
    "beyond Istio: verificationKey is one PEM public key (ECDSA P-256, RSA or Ed25519)"
    " and the url is oci:// (Istio ignores the field)",
)
def _verification_key(subject: Subject) -> Iterator[Finding]:
    path = (*SPEC, "verificationKey")
    text = subject.spec.verification_key
    if not subject.written(path, text):
        return
    source = ".".join(map(str, path))
    try:
        parse_verification_key(text, source=source)
    except KeyFormatError as exc:
        yield Finding(path, str(exc).removeprefix(f"{source}: "))
        return
    scheme = module_scheme(subject.spec.url) if subject.spec.url else "oci"
    if scheme != "oci":
        yield Finding(
            path,
            f"needs an oci:// module: signatures are looked up in the registry, and a"
            f" {scheme}:// module cannot be verified, so it would never be served",
        )


def _bad_json(value: struct_pb2.Value, path: FieldPath) -> Iterator[Finding]:
    kind = value.WhichOneof("kind")
    if kind is None:
        yield Finding(path, "has no value; Istio drops a plugin whose pluginConfig has one")
    elif kind == "number_value" and not math.isfinite(value.number_value):
        yield Finding(path, f"{value.number_value!r} is not a JSON number")
    elif kind == "struct_value":
        for key in sorted(value.struct_value.fields):
            yield from _bad_json(value.struct_value.fields[key], (*path, key))
    elif kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            yield from _bad_json(item, (*path, index))


@_check("plugin-config-json", "pluginConfig renders as JSON (istiod drops the plugin otherwise)")
def _plugin_config_json(subject: Subject) -> Iterator[Finding]:
    fields = subject.spec.plugin_config.fields
    for key in sorted(fields):
        yield from _bad_json(fields[key], (*SPEC, "pluginConfig", key))


# vmConfig.env ------------------------------------------------------------------------------

_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env(subject: Subject) -> list[tuple[FieldPath, wasm_pb2.EnvVar]]:
    base = (*SPEC, "vmConfig", "env")
    return [((*base, index), env) for index, env in enumerate(subject.spec.vm_config.env)]


@_check("env-count", "at most 256 vmConfig.env entries (CRD maxItems)")
def _env_count(subject: Subject) -> Iterator[Finding]:
    count = len(subject.spec.vm_config.env)
    if count > 256:
        yield Finding(
            (*SPEC, "vmConfig", "env"), f"at most 256 variables are allowed (got {count})"
        )


@_check("env-name-required", "every env entry has a name (CRD required + minLength, webhook)")
def _env_name_required(subject: Subject) -> Iterator[Finding]:
    for path, env in _env(subject):
        if not env.name:
            yield Finding((*path, "name"), "required: the environment variable's name")


@_check("env-name-length", "env names are at most 256 characters (CRD maxLength, webhook)")
def _env_name_length(subject: Subject) -> Iterator[Finding]:
    for path, env in _env(subject):
        if len(env.name) > 256:
            yield Finding(
                (*path, "name"), f"must be no more than 256 characters (got {len(env.name)})"
            )


@_check("env-name-unique", "env names are unique (CRD listType=map, webhook)")
def _env_name_unique(subject: Subject) -> Iterator[Finding]:
    first: dict[str, int] = {}
    for path, env in _env(subject):
        index = path[-1]
        assert isinstance(index, int)
        if not env.name:
            continue
        if env.name in first:
            yield Finding(
                (*path, "name"),
                f'duplicate variable "{env.name}" (first defined in env[{first[env.name]}])',
            )
        else:
            first[env.name] = index


@_check(
    "env-name-identifier",
    "warning, beyond Istio: env names are C identifiers, as the WasmPlugin API documents",
)
def _env_name_identifier(subject: Subject) -> Iterator[Finding]:
    for path, env in _env(subject):
        if env.name and len(env.name) <= 256 and not _C_IDENTIFIER.match(env.name):
            yield Finding(
                (*path, "name"),
                f'"{env.name}" is not a C identifier ([A-Za-z_][A-Za-z0-9_]*) as the WasmPlugin'
                " API asks; Envoy passes it on, but many plugin languages cannot read it",
                Severity.WARNING,
            )


@_check("env-value-length", "env values are at most 2048 characters (CRD maxLength)")
def _env_value_length(subject: Subject) -> Iterator[Finding]:
    for path, env in _env(subject):
        if len(env.value) > 2048:
            yield Finding(
                (*path, "value"), f"must be no more than 2048 characters (got {len(env.value)})"
            )


@_check("env-value-host", "value only with valueFrom INLINE, not HOST (CRD CEL rule, webhook)")
def _env_value_host(subject: Subject) -> Iterator[Finding]:
    for path, env in _env(subject):
        value_path = (*path, "value")
        if env.value_from == wasm_pb2.HOST and subject.written(value_path, env.value):
            yield Finding(
                value_path,
                "may only be set when valueFrom is INLINE; with HOST the value comes from"
                " the proxy's environment",
            )


# match ------------------------------------------------------------------------------------


def _ports(subject: Subject) -> Iterator[tuple[int, FieldPath, int]]:
    for index, selector in enumerate(subject.spec.match):
        for port_index, port in enumerate(selector.ports):
            yield index, (*SPEC, "match", index, "ports", port_index, "number"), port.number


@_check("match-port-range", "match ports are numbers from 1 to 65535 (CRD, webhook)")
def _match_port_range(subject: Subject) -> Iterator[Finding]:
    for _, path, number in _ports(subject):
        if number == 0 and path not in subject.present:
            yield Finding(path, "required: a port number from 1 to 65535")
        elif not 1 <= number <= 65535:
            yield Finding(path, f"must be between 1 and 65535 (got {number})")


@_check("match-port-unique", "port numbers are unique within a match entry (CRD listType=map)")
def _match_port_unique(subject: Subject) -> Iterator[Finding]:
    seen: dict[tuple[int, int], FieldPath] = {}
    for index, path, number in _ports(subject):
        if number == 0:
            continue
        first = seen.setdefault((index, number), path)
        if first is not path:
            yield Finding(path, f"duplicate port {number} (first listed at ports[{first[-2]}])")
