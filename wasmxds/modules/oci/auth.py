"""Registry authentication: ``WWW-Authenticate`` challenges, token realms, token answers.

Registries answer an unauthenticated request with 401 and a challenge:
``Basic realm="…"`` (send the credentials on every request) or
``Bearer realm="https://auth…",service="…",scope="…"`` (trade the credentials,
or nothing for anonymous pulls, for a short-lived token at the realm). The
realm is chosen by the registry, so following it blindly lets a hostile
registry aim wasmxds at anything it can reach. :func:`check_realm` applies
Istio's ``ssrfProtectionTransport`` rules before any request is sent, with one
addition: a realm on the registry's own host is allowed (it gives no reach the
plugin URL did not already have, and is how single-host registries run their
token service). The connection itself then goes through the address guard
like every other request, which catches names that resolve to link-local or
metadata addresses.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import BlockedRealmError, RegistryAuthError

__all__ = [
    "Challenge",
    "Token",
    "basic_header",
    "check_realm",
    "parse_challenges",
    "parse_token",
]

_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})
# Token lifetime when the answer does not say (the distribution spec's default).
_DEFAULT_TOKEN_SECONDS = 60.0
# Renew a little before the registry would start refusing the token.
_EXPIRY_MARGIN = 5.0


@dataclass(frozen=True, slots=True)
class Challenge:
    """One auth scheme offered by a 401 answer; ``params`` keys are lower-case."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token and when to stop using it (monotonic clock). Never shown."""

    value: str = field(repr=False)
    expires_at: float

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.expires_at


def basic_header(credentials: RegistryCredentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse every ``WWW-Authenticate`` header value (RFC 7235 auth-params, quoted or not)."""
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_one(value))
    return challenges


def _parse_one(text: str) -> list[Challenge]:
    found: list[Challenge] = []
    i, n = 0, len(text)
    current: Challenge | None = None
    while i < n:
        while i < n and text[i] in " ,\t":
            i += 1
        start = i
        while i < n and text[i] not in " =,\t":
            i += 1
        word = text[start:i]
        if not word:
            break
        j = i
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "=" and current is not None:
            i = j + 1
            while i < n and text[i] in " \t":
                i += 1
            value, i = _read_value(text, i)
            current.params[word.lower()] = value
            continue
        current = Challenge(word.lower(), {})
        found.append(current)
    return found


def _read_value(text: str, i: int) -> tuple[str, int]:
    if i < len(text) and text[i] == '"':
        out: list[str] = []
        i += 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            out.append(text[i])
            i += 1
        return "".join(out), i + 1
    start = i
    while i < len(text) and text[i] not in ", \t":
        i += 1
    return text[start:i], i


def check_realm(realm: str, registry_host: str) -> None:
    """Refuse a token realm that could aim wasmxds at something it should not call.

    Istio's rules: http(s) only, a host is required, no ``localhost``, no cloud
    metadata names, and no loopback, private or link-local IP literals. A realm
    on the registry's own host (any port) is allowed.
    """
    shown = realm.split("?", 1)[0]
    try:
        parts = urlsplit(realm)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise BlockedRealmError(f"token realm {shown!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise BlockedRealmError(f"token realm {shown!r}: only http and https realms are allowed")
    if not host:
        raise BlockedRealmError(f"token realm {shown!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise BlockedRealmError(f"token realm on {host} carries credentials in its URL")
    registry = _host_only(registry_host)
    if host == registry:
        return
    if host == "localhost" or host.endswith(".localhost"):
        raise BlockedRealmError(f"token realm {shown!r} targets localhost")
    if host in _METADATA_NAMES:
        raise BlockedRealmError(f"token realm {shown!r} targets a cloud metadata service")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return  # a DNS name: the address guard vets what it resolves to at connect time
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified:
        raise BlockedRealmError(
            f"token realm {shown!r} targets a loopback, private or link-local address"
            f" that is not the registry's own host ({registry})"
        )


def _host_only(host_port: str) -> str:
    if host_port.startswith("["):
        return host_port[1 : host_port.find("]")].lower()
    return host_port.rsplit(":", 1)[0].lower() if host_port.count(":") == 1 else host_port.lower()


def parse_token(body: bytes, realm_host: str, now: float | None = None) -> Token:
    """The token from a realm's JSON answer (``token`` or OAuth2's ``access_token``)."""
    try:
        document = json.loads(body)
    except ValueError:
        raise RegistryAuthError(
            f"token service on {realm_host} answered with invalid JSON"
        ) from None
    if not isinstance(document, dict):
        raise RegistryAuthError(f"token service on {realm_host} answered with no token")
    value = document.get("token") or document.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryAuthError(f"token service on {realm_host} answered with no token")
    lifetime = document.get("expires_in")
    seconds = (
        float(lifetime)
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0
        else _DEFAULT_TOKEN_SECONDS
    )
    start = time.monotonic() if now is None else now
    return Token(value, start + max(seconds - _EXPIRY_MARGIN, 1.0))
