"""Node identity proven by a client certificate (DESIGN "Node identity").

With mutual TLS and ``--node-identity certificate``, a proxy's namespace is the
one its certificate's SPIFFE ID names (``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``,
as Istio issues them), not the one its node metadata claims: a proxy holding
team-a's certificate must not read team-b's plugin configuration by writing
``NAMESPACE: team-b`` into its bootstrap. The admin port applies the same rules
to the client certificates of module downloads and debug pages. The decision here
is pure; the servers read the certificate's URI SANs, refuse on
:class:`IdentityRefused`, and log refusals through a :class:`RefusalLog`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from wasmxds.log import SampledLog

__all__ = [
    "IdentityPattern",
    "IdentityPolicy",
    "IdentityRefused",
    "RefusalLog",
    "SpiffeId",
    "claimed_namespaces",
    "clip",
    "parse_identity_pattern",
    "parse_spiffe_id",
]

log = structlog.get_logger(__name__)

_SCHEME = "spiffe://"
_SHAPE = f"{_SCHEME}<trust-domain>/ns/<namespace>/sa/<account>"
# SPIFFE ID spec: trust domain and path segments use these characters only.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# The metadata keys a namespace is read from (node.py reads them in this order).
NAMESPACE_KEYS = ("NAMESPACE", "namespace")
# What a client chose (node id, claimed namespace) is cut to this many characters in
# logs and gRPC status messages: a 1 MiB node id must not become a 1 MiB log line.
SHOWN_MAX = 200


def clip(text: str, limit: int = SHOWN_MAX) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """An Istio-shaped SPIFFE ID: trust domain, namespace and service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def _is_spiffe(uri: str) -> bool:
    # SPIFFE-ID spec 2.4: the scheme (and the trust domain) are case-insensitive.
    return uri[: len(_SCHEME)].lower() == _SCHEME


def _split(uri: str) -> tuple[str, list[str]]:
    """``spiffe://<td>/<path>`` → (lowercased trust domain, path segments); ValueError if
    it breaks the SPIFFE ID rules."""
    if not _is_spiffe(uri):
        raise ValueError(f"{clip(uri)!r} is not a SPIFFE ID (it must start with {_SCHEME})")
    rest = uri[len(_SCHEME) :]
    if any(c in rest for c in "?#@:%"):
        raise ValueError(
            f"{clip(uri)!r} is not a valid SPIFFE ID: no port, user, query, fragment or"
            f" percent-encoding is allowed (expected {_SHAPE})"
        )
    trust_domain, _, path = rest.partition("/")
    # SPIFFE-ID spec 2.4: scheme and trust domain compare without case, the path with it.
    trust_domain = trust_domain.lower()
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(f"{clip(uri)!r} has no valid trust domain (expected {_SHAPE})")
    return trust_domain, path.split("/")


def _valid_name(segment: str) -> bool:
    return bool(_SEGMENT.fullmatch(segment)) and segment not in (".", "..")


def parse_spiffe_id(uri: str) -> SpiffeId:
    """``spiffe://<td>/ns/<ns>/sa/<sa>`` → :class:`SpiffeId`; ValueError saying why not."""
    trust_domain, segments = _split(uri)
    if (
        len(segments) != 4
        or segments[0] != "ns"
        or segments[2] != "sa"
        or not _valid_name(segments[1])
        or not _valid_name(segments[3])
    ):
        raise ValueError(f"{clip(uri)!r} does not name a namespace and account (expected {_SHAPE})")
    return SpiffeId(trust_domain, segments[1], segments[3])


def valid_trust_domain(name: str) -> bool:
    return bool(_TRUST_DOMAIN.fullmatch(name))


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """Which SPIFFE IDs a ``--debug-identity`` admits: one ID, or (``account`` None) every
    account of a namespace (``spiffe://<td>/ns/<ns>/*``)."""

    trust_domain: str
    namespace: str
    account: str | None

    def matches(self, identity: SpiffeId) -> bool:
        return (
            identity.trust_domain == self.trust_domain
            and identity.namespace == self.namespace
            and self.account in (None, identity.service_account)
        )

    def __str__(self) -> str:
        tail = "*" if self.account is None else f"sa/{self.account}"
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/{tail}"


def parse_identity_pattern(text: str) -> IdentityPattern:
    """A full Istio SPIFFE ID or ``spiffe://<td>/ns/<ns>/*``; ValueError saying why not."""
    if text.endswith("/*"):
        trust_domain, segments = _split(text[:-2])
        if len(segments) == 2 and segments[0] == "ns" and _valid_name(segments[1]):
            return IdentityPattern(trust_domain, segments[1], None)
        raise ValueError(
            f"{clip(text)!r}: a namespace pattern is {_SCHEME}<trust-domain>/ns/<namespace>/*"
        )
    identity = parse_spiffe_id(text)
    return IdentityPattern(identity.trust_domain, identity.namespace, identity.service_account)


def claimed_namespaces(metadata: Mapping[str, Any]) -> list[str]:
    """The namespaces node metadata names (``NAMESPACE``, ``namespace``; empty ones ignored)."""
    return [
        value for key in NAMESPACE_KEYS if isinstance(value := metadata.get(key), str) and value
    ]


class IdentityRefused(Exception):
    """A certificate that does not prove the namespace it needs; the message says why."""

    def __init__(self, message: str, *, reason: str, identity: str, claimed: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """Metric label: no_spiffe_id, multiple_uri_sans, multiple_spiffe_ids,
        invalid_spiffe_id, untrusted_domain or namespace_mismatch."""
        self.identity = identity
        """What the certificate says ("" when it names no SPIFFE ID); cut to a loggable size."""
        self.claimed = claimed
        """The namespace the node metadata claims ("" when none); cut to a loggable size."""


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """Which client certificates prove a namespace: on the xDS port with ``--node-identity
    certificate``, and on the admin port with ``--admin-client-ca``."""

    trust_domains: frozenset[str] = frozenset()
    """Accepted trust domains (``--trust-domain``); empty accepts any the CA signed."""

    def certificate_identity(self, uris: Sequence[str]) -> SpiffeId:
        """The SPIFFE ID a certificate with URI SANs ``uris`` proves, or
        :class:`IdentityRefused` saying (of "the client certificate") why none."""
        spiffe = [uri for uri in uris if _is_spiffe(uri)]
        shown = ", ".join(clip(uri) for uri in uris[:3]) + (", ..." if len(uris) > 3 else "")
        if not spiffe:
            raise IdentityRefused(
                f"the client certificate has no SPIFFE ID (a URI SAN {_SHAPE})",
                reason="no_spiffe_id",
                identity="",
            )
        if len(uris) > 1:
            # X509-SVID spec: exactly one URI SAN; validators must reject more.
            raise IdentityRefused(
                f"the client certificate carries {len(uris)} URI SANs ({shown}), of which"
                f" {len(spiffe)} SPIFFE IDs; a SPIFFE certificate has exactly one URI SAN, so"
                " it proves no single namespace",
                reason="multiple_spiffe_ids" if len(spiffe) > 1 else "multiple_uri_sans",
                identity=clip(",".join(spiffe)),
            )
        try:
            identity = parse_spiffe_id(spiffe[0])
        except ValueError as exc:
            raise IdentityRefused(
                f"the client certificate's SPIFFE ID is unusable: {exc}",
                reason="invalid_spiffe_id",
                identity=clip(spiffe[0]),
            ) from exc
        if self.trust_domains and identity.trust_domain not in self.trust_domains:
            raise IdentityRefused(
                f"the client certificate's SPIFFE ID {identity} is in trust domain"
                f" {identity.trust_domain!r}, which wasmxds does not accept (--trust-domain:"
                f" {', '.join(sorted(self.trust_domains))})",
                reason="untrusted_domain",
                identity=str(identity),
            )
        return identity

    def verify(self, node_id: str, uris: Sequence[str], claimed: Sequence[str]) -> SpiffeId:
        """The proven identity of node ``node_id``, whose certificate carries URI SANs
        ``uris`` and whose metadata claims namespaces ``claimed``; or :class:`IdentityRefused`."""
        node = f"node {clip(node_id)!r}"
        claim = clip(claimed[0]) if claimed else ""
        try:
            identity = self.certificate_identity(uris)
        except IdentityRefused as exc:
            remedy = ""
            if exc.reason == "no_spiffe_id":
                remedy = (
                    "; with --node-identity certificate a proxy's namespace comes from it:"
                    " issue the proxy a certificate with one, or run wasmxds with"
                    " --node-identity metadata"
                )
            raise IdentityRefused(
                f"{node}: {exc}{remedy}", reason=exc.reason, identity=exc.identity, claimed=claim
            ) from None
        for namespace in claimed:
            if namespace != identity.namespace:
                raise IdentityRefused(
                    f"{node} claims namespace {clip(namespace)!r} in its node metadata,"
                    f" but its certificate proves {identity} (namespace"
                    f" {identity.namespace!r}); a proxy gets only its own namespace's plugins:"
                    " correct NAMESPACE in the proxy's bootstrap or remove it (`wasmxds"
                    " bootstrap` writes it only when given --namespace)",
                    reason="namespace_mismatch",
                    identity=str(identity),
                    claimed=clip(namespace),
                )
        return identity


class RefusalLog(SampledLog):
    """At most ``lines`` refusal log lines per ``window`` seconds, then one line counting
    the rest: a client decides how often it is refused, and must not fill the log."""

    def __init__(self, event: str, *, lines: int = 20, window: float = 10.0) -> None:
        super().__init__(log, event, level="warning", lines=lines, window=window, what="refusals")

    def warning(self, **fields: Any) -> None:
        self(**fields)
