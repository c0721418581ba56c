"""Image pull secrets: ``kubernetes.io/dockerconfigjson`` Secrets from the config sources.

A WasmPlugin's ``imagePullSecret`` names a Secret in the plugin's namespace
(Istio forces the namespace). In directory mode those Secrets sit next to the
plugins as ordinary Kubernetes YAML, with the Docker config base64-encoded
under ``data`` or in plain text under ``stringData`` (``stringData`` wins, as
the API server merges it). Secrets of every other type are not ours and are
skipped here (``Opaque`` ones, which plugin configuration takes values from,
are :mod:`wasmxds.api.configsecrets`'), so a directory can hold a whole
namespace's manifests.

A :class:`PullSecret` never shows its credentials: its ``repr`` names the
object and where it came from, and problems name the field, not the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from wasmxds.api.convert import FieldPath, Issue, Locator
from wasmxds.api.dockerconfig import DockerConfig, DockerConfigError, parse_docker_config
from wasmxds.api.objects import ObjectKey, Origin, Problem
from wasmxds.api.validate import dns1123_label_error, dns1123_subdomain_error

__all__ = [
    "DOCKER_CONFIG_JSON_KEY",
    "PULL_SECRET_TYPE",
    "SECRET_FIELDS",
    "ParsedSecret",
    "PullSecret",
    "is_secret",
    "parse_secret",
    "secret_key",
]

PULL_SECRET_TYPE = "kubernetes.io/dockerconfigjson"
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"
# Reports one problem at a field path.
_Error = Callable[[FieldPath, str], None]
SECRET_FIELDS = frozenset(
    {"apiVersion", "kind", "metadata", "type", "data", "stringData", "immutable"}
)


@dataclass(frozen=True, slots=True, eq=False)
class PullSecret:
    """A parsed pull secret. ``fingerprint`` changes exactly when the credentials do
    (it is for change detection only and is never shown)."""

    key: ObjectKey
    origin: Origin
    config: DockerConfig = field(repr=False)
    fingerprint: str = field(repr=False)

    def __repr__(self) -> str:
        return f"PullSecret({self.key}, {self.origin})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class ParsedSecret:
    """One pull secret after validation; ``secret`` is None when any error was found."""

    secret: PullSecret | None
    key: ObjectKey | None
    problems: tuple[Problem, ...]


def is_secret(value: Mapping[object, object]) -> bool:
    return value.get("apiVersion") == "v1" and value.get("kind") == "Secret"


def parse_secret(
    value: Mapping[object, object],
    *,
    source: str,
    line: int,
    locate: Locator,
    default_namespace: str,
) -> ParsedSecret | None:
    """Validate a ``kind: Secret``; None when it is not a ``kubernetes.io/dockerconfigjson`` one."""
    if not is_secret(value) or value.get("type") != PULL_SECRET_TYPE:
        return None
    issues: list[Issue] = []

    def error(path: FieldPath, message: str) -> None:
        issues.append(Issue(path, locate(path), message))

    for name in value:
        if name not in SECRET_FIELDS:
            error((str(name),), "unknown field for a Secret")
    key = secret_key(value.get("metadata"), default_namespace, error)
    raw = _payload(value, error)
    config: DockerConfig | None = None
    if raw is not None:
        try:
            config = parse_docker_config(raw)
        except DockerConfigError as exc:
            error(_payload_path(value), f"not a Docker config: {exc}")
    problems = tuple(issue.to_problem(source) for issue in issues)
    if key is None or config is None or raw is None or issues:
        return ParsedSecret(None, key, problems)
    secret = PullSecret(
        key=key,
        origin=Origin(source, line),
        config=config,
        fingerprint=hashlib.sha256(raw).hexdigest(),
    )
    return ParsedSecret(secret, key, problems)


def secret_key(metadata: object, default_namespace: str, error: _Error) -> ObjectKey | None:
    """A Secret's namespace/name (the namespace defaults); None, reported, when invalid."""
    if not isinstance(metadata, Mapping):
        error(("metadata",), "required: metadata.name names the Secret")
        return None
    name = metadata.get("name")
    namespace = metadata.get("namespace") or default_namespace
    if not isinstance(name, str) or not name:
        error(("metadata", "name"), "required: the Secret's name")
        return None
    if reason := dns1123_subdomain_error(name):
        error(("metadata", "name"), f"{name!r} is not a valid object name: {reason}")
        return None
    if not isinstance(namespace, str) or (reason := dns1123_label_error(namespace)):
        error(("metadata", "namespace"), "not a valid namespace")
        return None
    return ObjectKey(namespace, name)


def _payload_path(value: Mapping[object, object]) -> FieldPath:
    string_data = value.get("stringData")
    if isinstance(string_data, Mapping) and DOCKER_CONFIG_JSON_KEY in string_data:
        return ("stringData", DOCKER_CONFIG_JSON_KEY)
    return ("data", DOCKER_CONFIG_JSON_KEY)


def _payload(value: Mapping[object, object], error: _Error) -> bytes | None:
    """The Docker config bytes from ``stringData`` (plain) or ``data`` (base64)."""
    data, string_data = value.get("data"), value.get("stringData")
    for name, section in (("data", data), ("stringData", string_data)):
        if section is not None and not isinstance(section, Mapping):
            error((name,), "must be a mapping of keys to values")
            return None
    if isinstance(string_data, Mapping) and DOCKER_CONFIG_JSON_KEY in string_data:
        text = string_data[DOCKER_CONFIG_JSON_KEY]
        if not isinstance(text, str):
            error(("stringData", DOCKER_CONFIG_JSON_KEY), "must be a string (the JSON text)")
            return None
        return text.encode()
    if isinstance(data, Mapping) and DOCKER_CONFIG_JSON_KEY in data:
        encoded = data[DOCKER_CONFIG_JSON_KEY]
        if not isinstance(encoded, str):
            error(("data", DOCKER_CONFIG_JSON_KEY), "must be a base64 string")
            return None
        try:
            return base64.b64decode("".join(encoded.split()), validate=True)
        except (binascii.Error, ValueError):
            error(("data", DOCKER_CONFIG_JSON_KEY), "not valid base64")
            return None
    error(
        ("data",),
        f"required: key {DOCKER_CONFIG_JSON_KEY} (base64 under data, or plain under stringData)"
        f" for a {PULL_SECRET_TYPE} Secret",
    )
    return None
