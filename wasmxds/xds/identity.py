"""Node identity proven by a client certificate (DESIGN "Node identity").

With mutual TLS and ``--node-identity certificate``, a proxy's namespace is the
one its certificate's SPIFFE ID names (``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``,
as Istio issues them), not the one its node metadata claims: a proxy holding
team-a's certificate must not read team-b's plugin configuration by writing
``NAMESPACE: team-b`` into its bootstrap. The decision here is pure; the server
reads the certificate's URI SANs and refuses the stream on
:class:`IdentityRefused`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "IdentityPolicy",
    "IdentityRefused",
    "SpiffeId",
    "claimed_namespaces",
    "parse_spiffe_id",
]

_SCHEME = "spiffe://"
# SPIFFE ID spec: trust domain and path segments use these characters only.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
# The metadata keys a namespace is read from (node.py reads them in this order).
NAMESPACE_KEYS = ("NAMESPACE", "namespace")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """An Istio-shaped SPIFFE ID: trust domain, namespace and service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"{_SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def parse_spiffe_id(uri: str) -> SpiffeId:
    """``spiffe://<td>/ns/<ns>/sa/<sa>`` → :class:`SpiffeId`; ValueError saying why not."""
    shape = f"{_SCHEME}<trust-domain>/ns/<namespace>/sa/<account>"
    if uri[: len(_SCHEME)].lower() != _SCHEME:
        raise ValueError(f"{uri!r} is not a SPIFFE ID (it must start with {_SCHEME})")
    rest = uri[len(_SCHEME) :]
    if any(c in rest for c in "?#@:%"):
        raise ValueError(
            f"{uri!r} is not a valid SPIFFE ID: no port, user, query, fragment or"
            f" percent-encoding is allowed (expected {shape})"
        )
    trust_domain, _, path = rest.partition("/")
    # The scheme and trust domain are case-insensitive; compare them lowercased.
    trust_domain = trust_domain.lower()
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValueError(f"{uri!r} has no valid trust domain (expected {shape})")
    segments = path.split("/")
    if (
        len(segments) != 4
        or segments[0] != "ns"
        or segments[2] != "sa"
        or not all(_SEGMENT.match(s) for s in segments)
        or segments[1] in (".", "..")
        or segments[3] in (".", "..")
    ):
        raise ValueError(f"{uri!r} does not name a namespace and account (expected {shape})")
    return SpiffeId(trust_domain, segments[1], segments[3])


def valid_trust_domain(name: str) -> bool:
    return bool(_TRUST_DOMAIN.match(name))


def claimed_namespaces(metadata: Mapping[str, Any]) -> list[str]:
    """The namespaces node metadata names (``NAMESPACE``, ``namespace``; empty ones ignored)."""
    return [
        value for key in NAMESPACE_KEYS if isinstance(value := metadata.get(key), str) and value
    ]


class IdentityRefused(Exception):
    """A stream whose certificate does not prove the namespace it needs; the message says why."""

    def __init__(self, message: str, *, reason: str, identity: str, claimed: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Metric label: no_spiffe_id, multiple_spiffe_ids, invalid_spiffe_id,
        untrusted_domain or namespace_mismatch."""
        self.identity = identity
        """What the certificate says ("" when it names no SPIFFE ID)."""
        self.claimed = claimed
        """The namespace the node metadata claims ("" when none)."""


@dataclass(frozen=True, slots=True)
class IdentityPolicy:
    """``--node-identity certificate``: which certificates prove a namespace."""

    trust_domains: frozenset[str] = frozenset()
    """Accepted trust domains (``--trust-domain``); empty accepts any the CA signed."""

    def verify(self, node_id: str, uris: Iterable[str], claimed: Sequence[str]) -> SpiffeId:
        """The proven identity of node ``node_id``, whose certificate carries URI SANs
        ``uris`` and whose metadata claims namespaces ``claimed``; or :class:`IdentityRefused`."""
        claim = claimed[0] if claimed else ""
        spiffe = [uri for uri in uris if uri[: len(_SCHEME)].lower() == _SCHEME]
        if not spiffe:
            raise IdentityRefused(
                f"node {node_id!r}: its client certificate has no SPIFFE ID (a URI SAN"
                f" {_SCHEME}<trust-domain>/ns/<namespace>/sa/<account>), and with"
                " --node-identity certificate a proxy's namespace comes from it; issue the"
                " proxy a certificate with one, or run wasmxds with --node-identity metadata",
                reason="no_spiffe_id",
                identity="",
                claimed=claim,
            )
        if len(spiffe) > 1:
            raise IdentityRefused(
                f"node {node_id!r}: its client certificate carries {len(spiffe)} SPIFFE IDs"
                f" ({', '.join(spiffe)}); a SPIFFE certificate has exactly one, so it proves"
                " no single namespace",
                reason="multiple_spiffe_ids",
                identity=",".join(spiffe),
                claimed=claim,
            )
        try:
            identity = parse_spiffe_id(spiffe[0])
        except ValueError as exc:
            raise IdentityRefused(
                f"node {node_id!r}: its client certificate's SPIFFE ID is unusable: {exc}",
                reason="invalid_spiffe_id",
                identity=spiffe[0],
                claimed=claim,
            ) from exc
        if self.trust_domains and identity.trust_domain not in self.trust_domains:
            raise IdentityRefused(
                f"node {node_id!r}: its certificate's SPIFFE ID {identity} is in trust domain"
                f" {identity.trust_domain!r}, which wasmxds does not accept (--trust-domain:"
                f" {', '.join(sorted(self.trust_domains))})",
                reason="untrusted_domain",
                identity=str(identity),
                claimed=claim,
            )
        for namespace in claimed:
            if namespace != identity.namespace:
                raise IdentityRefused(
                    f"node {node_id!r} claims namespace {namespace!r} in its node metadata,"
                    f" but its certificate proves {identity} (namespace"
                    f" {identity.namespace!r}); a proxy gets only its own namespace's plugins:"
                    " correct NAMESPACE in the proxy's bootstrap or leave it out",
                    reason="namespace_mismatch",
                    identity=str(identity),
                    claimed=namespace,
                )
        return identity
