"""Who may use a cached module: access per credentials, not per digest.

A module in the cache was pulled with someone's credentials. Naming its digest
(``sha256:`` or an ``@sha256:`` URL) must not let a plugin with other
credentials use it: that would hand one namespace's private module to any
namespace that learns the digest. So a request that finds its module in the
cache by digest may use it at once only when

- the same credentials pulled it under the same signature requirement (the
  index's *pulls*: a pull secret's namespace/name, or ``server`` for the
  server's own docker config, which every plugin without an imagePullSecret
  shares, as in Istio); or
- the registry said yes to this request's credentials not long ago: the OCI
  fetcher asked for the manifest by digest in the request's own repository
  (and checked the signature, with a requirement), and the answer is kept in
  :class:`ModuleAccess` for ``ttl`` seconds per (registry, repository,
  credentials, requirement, module).

A manifest answer counts only in a repository the manifest was pulled from
(layers and all; the index records where, :func:`repository_key`). A manifest
is no secret: whoever knows a module's digest and size can write the manifest
that ``wasmxds push`` would, so a registry the plugin controls could answer
with the right bytes. Any other repository must serve the layers (a full pull),
and the digests of manifests pulled elsewhere are never sent to it.

With a signature requirement, the credentials that pulled the module are not
enough on their own either: the signature is checked again once the last check
is older than ``ttl`` (through the same question to the registry).

Otherwise the resolver asks the registry again (in the background, in a
download slot, like a pull). As in Envoy Gateway's permission cache
(``internal/wasm``), answers expire; unlike it, the cache key holds no
credentials: they are reduced to an HMAC under a key made at start-up, so a
key seen in a debugger or a dump says nothing about the password. Only the
pulls record reaches the disk, and it names secrets, never their content.

Non-OCI modules have no credentials to check: a digest names one of them only
for the URL that fetched it (its ref), so an ``https://`` URL cannot borrow a
private OCI module by quoting its digest either.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Hashable

from wasmxds.api.moduleurl import OCI_PREFIX
from wasmxds.errors import ModuleError
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.reference import Reference, parse_reference
from wasmxds.modules.store import ModuleStore, is_digest
from wasmxds.modules.types import CacheHit, ModuleRequest

__all__ = [
    "DEFAULT_ACCESS_TTL",
    "ModuleAccess",
    "TtlMemo",
    "find_hit",
    "pinned_digest",
    "puller",
    "repository_key",
    "with_manifests",
]

# How long a registry's "yes" (to other credentials, or to a signature) is reused:
# --module-access-ttl.
DEFAULT_ACCESS_TTL = 300.0

_PINNED = "@sha256:"

# Far more than the plugins of one server; the oldest answers go first.
_MAX_ANSWERS = 10_000


class TtlMemo:
    """Keys remembered for ``ttl`` seconds each; at most ``max_entries`` (oldest dropped)."""

    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = _MAX_ANSWERS,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._until: dict[Hashable, float] = {}

    def __contains__(self, key: Hashable) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= self._clock():
            del self._until[key]
            return False
        return True

    def add(self, key: Hashable) -> None:
        if self._ttl <= 0:
            return  # --module-access-ttl 0: ask every time
        self._until.pop(key, None)  # re-inserted last: dicts keep insertion order
        self._until[key] = self._clock() + self._ttl
        while len(self._until) > self._max:
            del self._until[next(iter(self._until))]

    def __len__(self) -> int:
        return len(self._until)


def puller(request: ModuleRequest) -> str:
    """Whose credentials a pull of ``request`` uses, and under which signature requirement.

    Persisted in the index (see :meth:`ModuleIndex.pulled_by`): names only.
    """
    origin = "server" if request.pull_secret is None else f"secret:{request.pull_secret}"
    return f"{origin}\n{request.requirement}"


class ModuleAccess:
    """Recent "yes" answers of registries to (credentials, module) questions."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._answers = TtlMemo(ttl, clock=clock)
        # Per process: nothing derived from credentials outlives it or can be looked up.
        self._hmac_key = secrets.token_bytes(32)

    def allowed(self, request: ModuleRequest, secret_version: str | None, digest: str) -> bool:
        key = self._key(request, secret_version, digest)
        return key is not None and key in self._answers

    def grant(self, request: ModuleRequest, secret_version: str | None, digest: str) -> None:
        key = self._key(request, secret_version, digest)
        if key is not None:
            self._answers.add(key)

    def _key(
        self, request: ModuleRequest, secret_version: str | None, digest: str
    ) -> tuple[str, ...] | None:
        repository = _repository(request.url)
        if repository is None:
            return None  # malformed: the fetch reports it
        # The secret's content version is in the fingerprint: new credentials, new question.
        origin = f"{request.pull_secret}\0{secret_version}" if request.pull_secret else "server"
        credentials = hmac.new(self._hmac_key, origin.encode(), hashlib.sha256).hexdigest()
        return (*repository, credentials, request.requirement, digest)


def repository_key(ref: Reference) -> str:
    """How the index names the repository a manifest was pulled from: ``host/repository``."""
    return f"{ref.host}/{ref.repository}"


@functools.lru_cache(maxsize=4096)
def _repository(url: str) -> tuple[str, str] | None:
    # Asked on every reconcile for every plugin that borrows a module: parse once.
    try:
        ref = parse_reference(url)
    except ModuleError:
        return None
    return ref.host, ref.repository


def pinned_digest(url: str) -> str:
    """The hex digest an ``oci://…@sha256:`` URL pins, or ""."""
    if not url.startswith(OCI_PREFIX) or _PINNED not in url:
        return ""
    digest = url.rsplit(_PINNED, 1)[1].lower()
    return digest if is_digest(digest) else ""


def find_hit(request: ModuleRequest, index: ModuleIndex, store: ModuleStore) -> CacheHit | None:
    """A cached module ``request`` names by content, with the manifests that hold it.

    OCI: the URL's ``@sha256:`` or the ``sha256`` names a manifest (or index) we
    pulled before, or ``sha256`` is the module's own digest (then ``manifests`` is
    empty until :func:`with_manifests` fills it). Whether the request
    may use it is a separate question (:class:`ModuleAccess`). Other schemes: the
    ``sha256`` counts only for the URL that fetched those bytes (its ref).
    """
    digest = request.sha256.strip().lower()
    if not request.url.startswith(OCI_PREFIX):
        ref = index.ref(request.url, request.sha256, "", request.requirement)
        if is_digest(digest) and ref is not None and ref.digest == digest:
            module = store.get(digest)
            return None if module is None else CacheHit(module)
        return None
    candidates: list[tuple[str, str | None]] = []
    pinned = pinned_digest(request.url)
    if pinned:
        candidates.append((pinned, index.manifest_module(pinned)))
    if is_digest(digest):
        candidates += [(digest, index.manifest_module(digest)), ("", digest)]
    for manifest, module_digest in candidates:
        if module_digest is None or (module := store.get(module_digest)) is None:
            continue
        # Named by the module's own digest: which manifests hold it is looked up only
        # when the registry has to be asked (:func:`with_manifests`), not on every pass.
        return CacheHit(module, (manifest,) if manifest else ())
    return None


def with_manifests(hit: CacheHit, index: ModuleIndex, url: str) -> CacheHit:
    """``hit`` with the manifests known to hold its module that were pulled from ``url``'s
    repository, when it named none (none at all from another repository: asking it for
    them would tell it which bytes to answer with)."""
    repository = _repository(url)
    if hit.manifests or repository is None:
        return hit
    host, name = repository
    return CacheHit(hit.module, index.manifests_of(hit.module.digest, f"{host}/{name}"))
