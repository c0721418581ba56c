"""Fetch Wasm modules from OCI registries into the module store (the resolver's ``oci`` fetcher).

One pull:

1. parse the reference, pick credentials (pull secret, else docker config);
2. GET the manifest (an index resolves to one image manifest, see
   :func:`~wasmxds.modules.oci.manifest.choose_manifest`);
3. with a signature requirement (``ModuleRequest.verify``), check the cosign
   signature of what the reference resolved to (:mod:`~wasmxds.modules.oci.checks`),
   before anything is downloaded and also when the module is cached;
4. if the index or manifest digest is already known to map to a cached module
   *and was pulled from this repository*, stop: no layer is downloaded (a tag
   re-check under ``Always`` costs one small request). A known manifest served
   by another repository proves nothing (anyone can write the bytes of a
   manifest for a module whose digest and size they know);
5. otherwise the layer(s) the layout needs are downloaded (and verified by digest), the
   module taken out, checked to be Wasm and stored, and manifest → module
   (and this repository) remembered in the index.

``sha256`` accepts either meaning: the image manifest digest (Istio's, and the
index digest for a multi-platform image) or the module's own digest. A value
matching neither is a :class:`ChecksumMismatchError` naming both.

Concurrent pulls of one manifest digest share a single download (a lock per
digest: the second waiter finds the module in the index when it gets the
lock), however many plugins or URLs (tag and digest) lead to it.

:meth:`OciFetcher.check` is the resolver's other entry point: a module found in
the cache by digest is re-authorised with the request's own credentials and
repository (and its signature checked) without downloading anything, when one
of its manifests was pulled from that repository; otherwise it is a full pull.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path

import structlog

from wasmxds.errors import (
    ChecksumMismatchError,
    FetchError,
    ModuleAccessDeniedError,
    ModuleError,
    ModuleTooLargeError,
    NotWasmError,
    SignatureInvalidError,
    UnknownLayoutError,
)
from wasmxds.modules.access import DEFAULT_ACCESS_TTL, repository_key
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci import credentials as creds
from wasmxds.modules.oci.checks import Resolved, SignatureChecks, reauthorise
from wasmxds.modules.oci.client import Credentials, RegistryClient, Repository
from wasmxds.modules.oci.credhelper import CredentialHelpers
from wasmxds.modules.oci.layouts import extract_module
from wasmxds.modules.oci.manifest import (
    ACCEPT,
    Descriptor,
    ImageIndex,
    ImageManifest,
    choose_manifest,
    parse_manifest,
)
from wasmxds.modules.oci.reference import Reference, parse_reference
from wasmxds.modules.progress import excused, one_grace
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.ssrf import AddressResolver
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import (
    CacheHit,
    Fetched,
    Module,
    ModuleRequest,
    TrustedKeys,
    redact_url,
)
from wasmxds.modules.unbox import is_wasm, read_header

__all__ = ["DEFAULT_OCI_SETTINGS", "OciFetcher"]

log = structlog.get_logger(__name__)

# Fewer quick retries than for http(s): the resolver keeps retrying in the
# background, and a registry that is down should turn into a stand-in fast.
DEFAULT_OCI_SETTINGS = FetcherSettings(tries=3)


class OciFetcher:
    """Pulls ``oci://`` modules; see the module docstring for the steps."""

    def __init__(
        self,
        *,
        store: ModuleStore,
        index: ModuleIndex,
        settings: FetcherSettings | None = None,
        pull_secrets: PullSecrets | None = None,
        docker_config: Callable[[], Path] = creds.default_docker_config_path,
        address_resolver: AddressResolver | None = None,
        verified_ttl: float = DEFAULT_ACCESS_TTL,
    ) -> None:
        self._settings = settings or DEFAULT_OCI_SETTINGS
        self._signatures = SignatureChecks(verified_ttl)
        self._store = store
        self._index = index
        self._secrets = pull_secrets
        self._docker_config = docker_config
        self._helpers = CredentialHelpers(self._settings.credential_helpers)
        self.client = RegistryClient(settings=self._settings, address_resolver=address_resolver)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def fetch(self, request: ModuleRequest) -> Fetched:
        """Resolver entry point: the request's credentials come from its pull secret."""
        display_url = request.display_url
        ref = parse_reference(request.url)
        credentials = await self._credentials(request, ref)
        return await self.pull(
            ref,
            credentials,
            sha256=request.sha256,
            display_url=display_url,
            verify=request.verify,
        )

    async def check(self, request: ModuleRequest, hit: CacheHit) -> Fetched:
        """Re-authorise a cache hit for ``request``'s credentials; nothing is downloaded.

        The request's repository must give its credentials one of the manifests
        known to hold ``hit.module`` *that were pulled from that repository* (and,
        with ``request.verify``, that image must be signed as required, in that
        repository). Without such a manifest (the module came from another
        repository, or from an index written before repositories were recorded),
        the request's URL is pulled in full: the layers must come from its own
        repository, and no digest learned elsewhere is sent to it.
        """
        ref = parse_reference(request.url)
        source = repository_key(ref)
        manifests = tuple(m for m in hit.manifests if self._index.pulled_from(m, source))
        if not manifests:
            log.info(
                "oci.access_needs_pull",
                url=request.display_url,
                digest=hit.module.digest,
                why="no manifest of this module was pulled from this repository",
            )
            return await self.fetch(request)
        display_url = request.display_url
        credentials = await self._credentials(request, ref)

        async def check() -> Fetched:
            repo = self.client.repository(ref, credentials, display_url=display_url)
            unsigned: SignatureInvalidError | None = None
            remaining = manifests
            while remaining:
                try:
                    resolved = await reauthorise(repo, ref, credentials, remaining, display_url)
                except ModuleAccessDeniedError:
                    if unsigned is None:
                        raise
                    break  # the rest are gone: the signature is what is missing
                top = resolved.index_digest or resolved.manifest_digest
                try:
                    await self._signatures.require(
                        repo, source, request.verify, resolved, display_url
                    )
                except SignatureInvalidError as exc:
                    # Another manifest of the same module (its index, say) may be the signed one.
                    unsigned = unsigned or exc
                    remaining = remaining[remaining.index(top) + 1 :]
                    continue
                return Fetched(
                    hit.module,
                    resolved.manifest_digest,
                    resolved.index_digest,
                    self._index.manifest_layout(top),
                )
            assert unsigned is not None
            raise unsigned

        return await self._bounded(check(), "access check", display_url)

    async def _credentials(self, request: ModuleRequest, ref: Reference) -> Credentials:
        if request.pull_secret is not None:
            return creds.from_pull_secret(
                self._secrets, request.pull_secret, ref, request.display_url
            )
        return await creds.from_docker_config(self._docker_config(), ref, self._helpers)

    async def pull(
        self,
        ref: Reference,
        credentials: Credentials,
        *,
        sha256: str = "",
        display_url: str = "",
        verify: Sequence[TrustedKeys] = (),
    ) -> Fetched:
        display_url = display_url or redact_url(f"oci://{ref}")
        expected = sha256.strip().lower()
        return await self._bounded(
            self._pull(ref, credentials, expected, display_url, verify), "pull", display_url
        )

    async def _bounded(
        self, work: Coroutine[None, None, Fetched], what: str, display_url: str
    ) -> Fetched:
        """Run ``work`` under the total timeout and the transfer-rate rules of a pull."""
        total = self._settings.total_timeout
        try:
            with one_grace(self._settings.min_rate, self._settings.rate_window):
                async with asyncio.timeout(total):
                    return await work
        except TimeoutError as exc:
            if total is None:
                raise
            raise FetchError(f"{what} did not finish within {total:g} s", url=display_url) from exc
        except ModuleError as exc:
            exc.about(display_url)  # unless a deeper caller already named the image
            raise

    async def _pull(
        self,
        ref: Reference,
        credentials: Credentials,
        expected: str,
        display_url: str,
        verify: Sequence[TrustedKeys],
    ) -> Fetched:
        repo = self.client.repository(ref, credentials, display_url=display_url)
        source = repository_key(ref)
        top = await repo.manifest(ref.identifier, ACCEPT)
        parsed = parse_manifest(top.data, top.content_type)
        index_digest = ""
        manifest_digest = top.digest
        if isinstance(parsed, ImageIndex):
            index_digest = top.digest
            chosen = choose_manifest(parsed)
            manifest_digest = chosen.digest
            data = await repo.manifest(f"sha256:{chosen.digest}", ACCEPT)
            image = parse_manifest(data.data, data.content_type)
            if not isinstance(image, ImageManifest):
                raise UnknownLayoutError("the index entry chosen is not an image manifest")
        else:
            image = parsed
        if verify:
            # Before any layer is downloaded, and even when the module is cached.
            resolved = Resolved(index_digest, manifest_digest)
            await self._signatures.require(repo, source, verify, resolved, display_url)
        pinned = {d for d in (index_digest, manifest_digest) if d}
        lock = self._locks.setdefault(manifest_digest, asyncio.Lock())
        async with excused():
            await lock.acquire()  # another pull of the same image may be downloading it
        try:
            known = self._known(index_digest, manifest_digest, source)
            if known is not None:
                module, layout = known
                log.debug("oci.manifest_known", url=display_url, manifest_digest=manifest_digest)
            else:
                module, layout = await self._download(repo, image, display_url)
                for digest in pinned:
                    self._index.record_manifest(
                        digest, module.digest, module.size, layout, source=source
                    )
        finally:
            lock.release()
        if expected and expected not in pinned and expected != module.digest:
            raise ChecksumMismatchError(
                f"sha256 {expected} matches neither the image manifest digest"
                f" {manifest_digest}{f' (index {index_digest})' if index_digest else ''} nor"
                f" the module's digest {module.digest}",
                url=display_url,
            )
        return Fetched(module, manifest_digest, index_digest, layout)

    def _known(
        self, index_digest: str, manifest_digest: str, source: str
    ) -> tuple[Module, str] | None:
        """The cached module of a manifest pulled from ``source`` before, with its layout."""
        for digest in (manifest_digest, index_digest):
            if not digest or not self._index.pulled_from(digest, source):
                continue
            module_digest = self._index.manifest_module(digest)
            module = self._store.get(module_digest) if module_digest else None
            if module is not None:
                return module, self._index.manifest_layout(digest)
        return None

    async def _download(
        self, repo: Repository, image: ImageManifest, display_url: str
    ) -> tuple[Module, str]:
        max_size = self._settings.max_size
        spool = await self._store.spool()
        downloaded: list[Path] = []

        async def read_blob(layer: Descriptor) -> Path:
            path = await repo.blob(layer.digest, layer.size, max_size=max_size, spool=spool)
            downloaded.append(path)
            return path

        try:
            extracted = await extract_module(image, read_blob, max_size=max_size)
            if extracted.path is not None:
                head = await asyncio.to_thread(read_header, extracted.path)
            else:
                head = extracted.data
                if len(extracted.data) > max_size:
                    raise ModuleTooLargeError(
                        f"the module is over the {max_size}-byte limit", url=display_url
                    )
            if not is_wasm(head):
                raise NotWasmError(
                    f"the {extracted.layout} module is not Wasm (it starts with"
                    f" {head[:8]!r}, not b'\\x00asm')",
                    url=display_url,
                )
            if extracted.path is not None:
                downloaded.remove(extracted.path)  # the store takes it over
                module = await self._store.adopt(extracted.path, extracted.digest)
            else:
                module = await self._store.put(extracted.data)
        finally:
            for path in downloaded:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        return module, str(extracted.layout)
