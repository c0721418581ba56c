"""The Docker config format (``config.json`` / ``.dockerconfigjson``): registry credentials.

Both a ``kubernetes.io/dockerconfigjson`` Secret and ``~/.docker/config.json``
hold ``{"auths": {"<registry>": {"auth": base64("user:pass")}}}``, optionally
with ``username``/``password``, ``identitytoken`` (an OAuth2 refresh token) or
``registrytoken`` (a bearer token used as is). Keys are normalised the way
Docker's ``ConvertToHostname`` does, and Docker Hub's aliases meet under
``index.docker.io``, so a lookup by registry host finds what ``docker login``
wrote. ``credHelpers`` (per registry) and ``credsStore`` (every other
registry) name ``docker-credential-<name>`` programs that hold the
credentials instead; which of them may run is decided elsewhere
(:mod:`wasmxds.modules.oci.credentials`), this module only reads the names.

Nothing in this module ever puts a credential into a message or a ``repr``:
errors say which field is wrong, never what it holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from wasmxds.errors import DockerConfigError

__all__ = [
    "DOCKER_HUB_AUTH_KEY",
    "DockerConfig",
    "DockerConfigError",
    "RegistryCredentials",
    "helper_server_url",
    "normalize_registry",
    "parse_docker_config",
    "valid_helper_name",
]

# Where `docker login` (no argument) stores Docker Hub credentials, after normalising.
DOCKER_HUB_AUTH_KEY = "index.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# A config is a few KiB; anything far larger is not one (and must not eat memory).
_MAX_CONFIG_BYTES = 1 << 20
# What Docker hands a helper for Docker Hub (its historical auth key); other
# registries are asked for by host[:port], as Docker's getAuthConfigKey does.
_DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
# Helper names become part of a program name: no path separators, nothing a
# shell or PATH lookup could read differently (the published helpers are all
# lower-case words: ecr-login, gcloud, acr-env, desktop, pass, secretservice).
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class RegistryCredentials:
    """What to authenticate to one registry with. ``repr`` shows only which kinds are present."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)

    @property
    def is_empty(self) -> bool:
        return not (self.has_basic or self.identity_token or self.registry_token)

    def __repr__(self) -> str:
        kinds = [
            name
            for name, present in (
                ("basic", self.has_basic),
                ("identity_token", bool(self.identity_token)),
                ("registry_token", bool(self.registry_token)),
            )
            if present
        ]
        return f"RegistryCredentials({', '.join(kinds) or 'anonymous'})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """Credentials by normalised registry host; ``helpers`` maps hosts to the credential
    helper named for them (``credHelpers``), ``creds_store`` is the default one."""

    auths: Mapping[str, RegistryCredentials] = field(default_factory=dict)
    helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str = ""

    def lookup(self, registry: str) -> RegistryCredentials | None:
        """Credentials for ``registry`` (``host[:port]``), or None when the config has none."""
        found = self.auths.get(normalize_registry(registry))
        return None if found is None or found.is_empty else found

    def helper_for(self, registry: str) -> str | None:
        """The helper Docker would ask for this registry, as Docker chooses it: the
        ``credHelpers`` entry (an empty one means "none"), else ``credsStore``."""
        key = normalize_registry(registry)
        name = self.helpers.get(key, self.creds_store)
        return name or None

    def holder_of(self, registry: str) -> str | None:
        """The helper that holds this registry's credentials by the config's own account:
        its ``credHelpers`` entry, or ``credsStore`` when ``docker login`` left the empty
        ``auths`` entry it writes beside a store. None when the config has no such sign
        (a store alone says nothing about registries nobody logged in to)."""
        key = normalize_registry(registry)
        if key in self.helpers:
            return self.helpers[key] or None
        entry = self.auths.get(key)
        if self.creds_store and entry is not None and entry.is_empty:
            return self.creds_store
        return None

    def __repr__(self) -> str:
        return f"DockerConfig(registries={sorted(self.auths)!r})"


def normalize_registry(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``index.docker.io``; ``Host:5000/`` → ``host:5000``."""
    text = key.strip().lower()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    host = text.split("/", 1)[0]
    return DOCKER_HUB_AUTH_KEY if host in _DOCKER_HUB_ALIASES else host


def helper_server_url(registry: str) -> str:
    """What a credential helper is asked for: Docker Hub's ``https://index.docker.io/v1/``,
    else the normalised ``host[:port]`` (the keys ``docker login`` stores under)."""
    key = normalize_registry(registry)
    return _DOCKER_HUB_SERVER_URL if key == DOCKER_HUB_AUTH_KEY else key


def valid_helper_name(name: str) -> bool:
    """A name that can only ever mean ``docker-credential-<name>`` found on PATH."""
    return _HELPER_NAME.fullmatch(name) is not None


def parse_docker_config(data: bytes | str) -> DockerConfig:
    """Parse Docker config JSON; raises :class:`DockerConfigError` naming the bad field."""
    if len(data) > _MAX_CONFIG_BYTES:
        raise DockerConfigError(f"larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        # json's messages give a position, never content; keep only that much.
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DockerConfigError(f"not valid JSON{where}") from None
    if not isinstance(document, dict):
        # Istio rejects the literal `null` explicitly; any non-object is as useless.
        raise DockerConfigError("must be a JSON object with an 'auths' map")
    auths_value = document.get("auths", {})
    if not isinstance(auths_value, dict):
        raise DockerConfigError("'auths' must be an object mapping registries to credentials")
    auths: dict[str, RegistryCredentials] = {}
    for key, entry in auths_value.items():
        if not isinstance(entry, dict):
            raise DockerConfigError(f"auths[{key!r}] must be an object")
        auths.setdefault(normalize_registry(key), _credentials(key, entry))
    helpers_value = document.get("credHelpers") or {}  # JSON null: none, as in Docker
    if not isinstance(helpers_value, dict):
        raise DockerConfigError("'credHelpers' must be an object mapping registries to helpers")
    helpers: dict[str, str] = {}
    for key, name in helpers_value.items():
        if not isinstance(name, str):
            raise DockerConfigError(f"credHelpers[{key!r}] must be a string (a helper name)")
        helpers.setdefault(normalize_registry(key), name)
    store = document.get("credsStore") or ""
    if not isinstance(store, str):
        raise DockerConfigError("'credsStore' must be a string (a helper name)")
    return DockerConfig(auths=auths, helpers=helpers, creds_store=store)


def _credentials(key: str, entry: Mapping[str, object]) -> RegistryCredentials:
    fields: dict[str, str] = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = entry.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DockerConfigError(f"auths[{key!r}].{name} must be a string")
        fields[name] = value
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        # As in Docker's decodeAuth: `auth` wins over separate username/password.
        try:
            decoded = base64.b64decode(fields["auth"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise DockerConfigError(
                f"auths[{key!r}].auth is not base64 of 'user:password'"
            ) from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise DockerConfigError(f"auths[{key!r}].auth is not base64 of 'user:password'")
    return RegistryCredentials(
        username=username,
        password=password,
        identity_token=fields["identitytoken"],
        registry_token=fields["registrytoken"],
    )
