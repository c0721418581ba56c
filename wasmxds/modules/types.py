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

from wasmxds.api.objects import ObjectKey
from wasmxds.errors import ModuleError

__all__ = [
    "Failed",
    "Fetched",
    "LocalFile",
    "Module",
    "ModuleOutcome",
    "ModuleRequest",
    "Pending",
    "PullPolicy",
    "Ready",
    "redact_url",
]


class PullPolicy(enum.Enum):
    """The effective pull policy, after Istio's defaulting rules were applied."""

    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"


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

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def cache_key(self) -> tuple[str, ...]:
        """Requests with the same key share one fetch and one outcome.

        The secret is part of the key: a plugin whose secret is missing or wrong
        fails on its own instead of riding on another plugin's credentials (a
        module pinned by a digest that is already cached is served to anyone who
        names that digest, as in Istio).
        """
        secret = "" if self.pull_secret is None else str(self.pull_secret)
        if self.pull_policy is PullPolicy.ALWAYS:
            return (self.url, self.sha256, self.generation, secret)
        return (self.url, self.sha256, secret)

    @property
    def display_url(self) -> str:
        """The URL with any userinfo removed, safe for logs, errors and metrics."""
        return redact_url(self.url)


@dataclass(frozen=True, slots=True)
class Module:
    """A verified Wasm binary in the content-addressed cache."""

    digest: str
    path: Path
    size: int


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
