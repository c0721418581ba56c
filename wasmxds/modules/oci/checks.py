"""The OCI fetcher's two questions besides "which bytes": may these credentials use a cached
module, and did a trusted key sign the manifest.

**Access** (:func:`reauthorise`): a module found in the cache by digest is
asked for again by digest, with the request's credentials, in the request's own
repository, and only by the digests of manifests that were pulled from that
very repository (the caller's job: a manifest is no secret, anyone can write
the bytes of a known one, so a matching answer only proves access where the
layers were downloaded from before). A GET rather than a HEAD: the answer must
hash to the digest (a HEAD's 200 can come from any server). Refusals (401, 403,
and 404, which registries also use to hide private repositories) become
:class:`ModuleAccessDeniedError`; anything else (unreachable, 5xx) stays an
ordinary retryable fetch error.

**Signatures** (:class:`SignatureChecks`): every requirement group must be met
by a cosign signature on the manifest that was resolved, or, for an image
index, on the index or on the platform manifest chosen from it. Successes are
remembered per (repository, digest, key fingerprints) for a bounded time, so a
re-pull or a re-authorisation in steady state asks nothing more of the
registry; a success in one repository says nothing about another (which may
serve the same manifest without any signature).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from wasmxds.errors import (
    DigestMismatchError,
    ModuleAccessDeniedError,
    RegistryAuthError,
    SignatureInvalidError,
)
from wasmxds.modules.access import TtlMemo
from wasmxds.modules.oci.client import Credentials, Repository
from wasmxds.modules.oci.manifest import (
    ACCEPT,
    MAX_MANIFEST_BYTES,
    ImageIndex,
    choose_manifest,
    parse_manifest,
)
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.oci.signature import verify_signature
from wasmxds.modules.types import TrustedKeys

__all__ = ["Resolved", "SignatureChecks", "reauthorise"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a reference resolved to: the image manifest (hex) and the index it came through."""

    index_digest: str
    manifest_digest: str


async def reauthorise(
    repo: Repository,
    ref: Reference,
    credentials: Credentials,
    manifests: Sequence[str],
    display_url: str,
) -> Resolved:
    """The first of ``manifests`` (hex) the registry gives these credentials, or a refusal."""
    where = f"{ref.registry}/{ref.repository}"
    for digest in manifests:
        try:
            raw = await repo.get_if_present(
                f"manifests/sha256:{digest}", limit=MAX_MANIFEST_BYTES, accept=ACCEPT
            )
        except RegistryAuthError as exc:
            raise ModuleAccessDeniedError(
                f"the registry refused this plugin's credentials for {where}@sha256:{digest}"
                f" ({exc.detail}); the module is in the cache, pulled with other credentials,"
                " but this plugin may not use it",
                url=display_url,
            ) from exc
        if raw is None:
            continue
        if hashlib.sha256(raw).hexdigest() != digest:
            raise DigestMismatchError(
                f"the registry answered sha256:{digest} with a manifest of another digest",
                url=display_url,
            )
        parsed = parse_manifest(raw, "")
        if isinstance(parsed, ImageIndex):
            return Resolved(digest, choose_manifest(parsed).digest)
        return Resolved("", digest)
    names = ", ".join(f"sha256:{digest}" for digest in manifests)
    raise ModuleAccessDeniedError(
        f"{where} has no manifest {names} for this plugin's credentials"
        f" ({credentials.source}); the module is in the cache, pulled with other"
        " credentials, but this plugin may not use it",
        url=display_url,
    )


class SignatureChecks:
    """Checks requirement groups against cosign signatures, remembering successes."""

    def __init__(self, ttl: float) -> None:
        self._verified = TtlMemo(ttl)

    async def require(
        self,
        repo: Repository,
        repository: str,
        groups: Sequence[TrustedKeys],
        resolved: Resolved,
        display_url: str,
    ) -> None:
        """Raise :class:`SignatureInvalidError` unless every group signed the image in
        ``repository`` (``host/repository``, where ``repo`` reads from)."""
        digests = [d for d in (resolved.index_digest, resolved.manifest_digest) if d]
        for group in groups:
            fingerprint = group.fingerprint
            if any((repository, digest, fingerprint) in self._verified for digest in digests):
                continue
            failures: list[SignatureInvalidError] = []
            for digest in digests:
                try:
                    signed = await verify_signature(
                        repo, digest, group.keys, display_url=display_url
                    )
                except SignatureInvalidError as exc:
                    failures.append(exc)
                    continue
                self._verified.add((repository, digest, fingerprint))
                log.info(
                    "oci.signature_verified",
                    url=display_url,
                    manifest_digest=digest,
                    key=str(signed.key),
                    required_by=group.source,
                )
                break
            else:
                raise _unsigned(failures, group, display_url)


def _unsigned(
    failures: list[SignatureInvalidError], group: TrustedKeys, display_url: str
) -> SignatureInvalidError:
    if len(failures) == 1:
        detail = failures[0].detail
    else:
        index, manifest = failures
        detail = (
            f"neither the image index nor its platform manifest is signed as required;"
            f" index: {index.detail}; platform manifest: {manifest.detail}"
        )
    return SignatureInvalidError(f"{detail} (required by {group.source})", url=display_url)
