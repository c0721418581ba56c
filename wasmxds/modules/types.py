"""What the module stage takes in and hands out.

A :class:`ModuleRequest` is everything about a WasmPlugin that decides which
bytes it runs; the resolver turns it into a :class:`ModuleOutcome`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from wasmxds.api.keys import VerificationKey
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import ModuleError

__all__ = [
    "HTTP_CALLBACKS",
    "NETWORK_CALLBACKS",
    "PREFLIGHT_RULES",
    "CacheHit",
    "Failed",
    "Fetched",
    "LocalFile",
    "Module",
    "ModuleAbi",
    "ModuleOutcome",
    "ModuleRequest",
    "Pending",
    "PullPolicy",
    "Ready",
    "TrustedKeys",
    "Verdict",
    "redact_url",
]


class PullPolicy(enum.Enum):
    """The effective pull policy, after Istio's defaulting rules were applied."""

    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"


@dataclass(frozen=True, slots=True)
class TrustedKeys:
    """One signature requirement: the module must be signed by one of ``keys``.

    ``source`` says where the keys were configured, for messages
    (``--verification-key``, ``spec.verificationKey``).
    """

    keys: tuple[VerificationKey, ...]
    source: str

    @property
    def fingerprint(self) -> str:
        """The keys' fingerprints (public, safe to persist): equal for the same set of keys."""
        return ",".join(sorted({key.fingerprint for key in self.keys}))


@dataclass(frozen=True, slots=True)
class ModuleRequest:
    """Which module a plugin wants.

    ``url`` always carries a scheme (``oci://`` is added when the user wrote
    none, as Istio does). ``generation`` is the plugin's fingerprint: with
    ``ALWAYS`` a new generation means "pull again", mirroring Istio's
    re-pull on resourceVersion change. ``pull_secret`` names the image pull
    secret (in the plugin's namespace) by reference only; credentials are looked
    up when fetching and never travel in a request.
    """

    url: str
    sha256: str = ""
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    generation: str = ""
    pull_secret: ObjectKey | None = None
    verify: tuple[TrustedKeys, ...] = ()

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def cache_key(self) -> tuple[str, ...]:
        """Requests with the same key share one fetch and one outcome.

        The secret is part of the key: a plugin whose secret is missing or wrong
        fails on its own instead of riding on another plugin's credentials. So is
        the signature requirement: a module verified for one set of keys says
        nothing about another. (A module pinned by a digest that is already
        cached is re-authorised with this request's credentials before it is
        served: see :mod:`wasmxds.modules.access`.)
        """
        secret = "" if self.pull_secret is None else str(self.pull_secret)
        if self.pull_policy is PullPolicy.ALWAYS:
            return (self.url, self.sha256, self.generation, secret, self.requirement)
        return (self.url, self.sha256, secret, self.requirement)

    @property
    def requirement(self) -> str:
        """The signature requirement as one string of key fingerprints ("" for none)."""
        return "|".join(sorted({group.fingerprint for group in self.verify}))

    @property
    def display_url(self) -> str:
        """The URL with any userinfo removed, safe for logs, errors and metrics."""
        return redact_url(self.url)


# Bump when the pre-flight rules change: verdicts an older wasmxds persisted are redone.
PREFLIGHT_RULES = 1

# The proxy-wasm callbacks Envoy calls for HTTP streams and for TCP connections
# (proxy-wasm-cpp-host include/proxy-wasm/wasm.h, FOR_ALL_MODULE_FUNCTIONS).
HTTP_CALLBACKS = frozenset(
    f"proxy_on_{phase}_{part}"
    for phase in ("request", "response")
    for part in ("headers", "body", "trailers", "metadata")
)
NETWORK_CALLBACKS = frozenset(
    {
        "proxy_on_new_connection",
        "proxy_on_downstream_data",
        "proxy_on_upstream_data",
        "proxy_on_downstream_connection_close",
        "proxy_on_upstream_connection_close",
    }
)


@dataclass(frozen=True, slots=True)
class ModuleAbi:
    """What a module implements of the proxy-wasm ABI, as the pre-flight check read it.

    ``version`` is the ABI it declares ("0.2.1"); ``callbacks`` the ``proxy_on_*``
    functions it exports that Envoy calls. SDKs that export every callback (Rust,
    Go) implement both kinds whatever the plugin does with them.
    """

    version: str
    callbacks: tuple[str, ...] = ()

    @property
    def http(self) -> bool:
        return not HTTP_CALLBACKS.isdisjoint(self.callbacks)

    @property
    def network(self) -> bool:
        return not NETWORK_CALLBACKS.isdisjoint(self.callbacks)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The pre-flight check's answer for one module (by digest): what it implements
    (``abi``), or why Envoy could not run it (``problem``, "" when it can)."""

    abi: ModuleAbi | None
    problem: str = ""
    rules: int = PREFLIGHT_RULES


@dataclass(frozen=True, slots=True)
class Module:
    """A verified Wasm binary in the content-addressed cache.

    ``abi`` is what the pre-flight check found it implements (None when the check
    is off or has not run); it is not part of the module's identity.
    """

    digest: str
    path: Path
    size: int
    abi: ModuleAbi | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A fetcher's answer when it stored the module itself, with its provenance.

    OCI fetches return this: they deduplicate by manifest digest and may find the
    module already cached without downloading a layer. ``manifest_digest`` is the
    image manifest's sha256 (hex), ``index_digest`` the image index's when the
    reference named one, and ``layout`` how the module was packaged.
    """

    module: Module
    manifest_digest: str = ""
    index_digest: str = ""
    layout: str = ""


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached module a request names by digest, and the OCI manifests (or indexes, hex)
    known to hold it: what re-authorising the request against its registry may ask for."""

    module: Module
    manifests: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A ``file://`` module: a path on the proxy, passed through untouched (Istio's meaning)."""

    path: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The module is available. ``stale`` is set when a re-pull failed and an
    earlier copy of the same URL is served instead (``imagePullPolicy: Always``)."""

    module: Module | LocalFile
    stale: ModuleError | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The module is unavailable; the resolver keeps retrying in the background."""

    error: ModuleError
    attempts: int
    next_retry_in: float


@dataclass(frozen=True, slots=True)
class Pending:
    """The first fetch for this request has not finished yet."""

    started_at: float = field(default=0.0)


ModuleOutcome = Ready | Failed | Pending


def redact_url(url: str) -> str:
    """The URL without secrets, safe for logs, errors, metrics and debug pages.

    Userinfo is dropped, and query values are masked: signed download URLs
    (S3, GCS, Azure SAS) carry their credentials in the query string.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        # Malformed (an unclosed IPv6 bracket, say): this runs on error paths, so it
        # must not raise; cut anything between "//" and the authority's last "@".
        return re.sub(r"=[^&#]*", "=REDACTED", re.sub(r"(?<=//)[^/?#]*@", "", url))
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = re.sub(r"=[^&]*", "=REDACTED", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
