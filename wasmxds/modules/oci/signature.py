"""Module signatures in cosign's format: find, check and write them.

cosign (key-signed, the classic non-bundle format) stores the signatures of
manifest ``sha256:<hex>`` as an image tagged ``sha256-<hex>.sig`` in the same
repository. Each layer of that image is one signature: the layer blob is the
"simple signing" payload (media type
``application/vnd.dev.cosign.simplesigning.v1+json``)::

    {"critical": {"identity": {"docker-reference": "<registry>/<repository>"},
                  "image": {"docker-manifest-digest": "sha256:<hex>"},
                  "type": "cosign container image signature"},
     "optional": null}

and the layer annotation ``dev.cosignproject.cosign/signature`` holds the
base64 signature over the payload bytes. A signature counts when it verifies
with a trusted key (see :mod:`wasmxds.api.keys` for the algorithms, as
``cosign verify --key`` checks them) *and* its payload names the manifest
digest that was pulled: a signature copied from another image, or left behind
when a tag moved, does not count.

Everything read is bounded (the signature manifest, at most
:data:`MAX_SIGNATURES` signature layers, payloads of at most
:data:`MAX_PAYLOAD_BYTES` read into memory with their digest checked). A
missing or unacceptable signature is a :class:`SignatureInvalidError` with a
sentence saying which case it is; other registry failures stay ordinary
(retryable) fetch errors.

:class:`Verifier` is the seam for other ways of trusting a signature: keys
today (:class:`KeyVerifier`); keyless (Fulcio certificates and Rekor entries)
would be another implementation that checks the ``certificate``/``chain``/
``bundle`` annotations against a trust root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wasmxds.api.keys import SigningKey, VerificationKey
from wasmxds.errors import DigestMismatchError, FetchError, ModuleError, SignatureInvalidError
from wasmxds.modules.oci.client import Repository
from wasmxds.modules.oci.manifest import (
    ACCEPT,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    parse_manifest,
)
from wasmxds.modules.oci.reference import DOCKER_HUB, Reference

__all__ = [
    "COSIGN_SIGNATURE_TYPE",
    "MAX_PAYLOAD_BYTES",
    "MAX_SIGNATURES",
    "SIGNATURE_ANNOTATION",
    "SIMPLE_SIGNING",
    "KeyVerifier",
    "VerifiedSignature",
    "Verifier",
    "build_payload",
    "docker_reference",
    "push_signature",
    "signature_tag",
    "verify_signature",
]

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_SIGNATURE_TYPE = "cosign container image signature"
# Each `cosign sign` of the same digest adds a layer (ECDSA signatures differ every time),
# so a busy image collects some; the newest this many are checked.
MAX_SIGNATURES = 64
# A simple-signing payload is ~250 bytes; a few optional claims do not make it 64 KiB.
MAX_PAYLOAD_BYTES = 64 * 1024
# cosign itself refuses to grow a signature image past this many layers.
_MAX_LAYERS_ON_PUSH = 1000
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time, as go-containerregistry writes it
_GGCR_DOCKER_HUB = "index.docker.io"


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """Which trusted key signed the manifest, and the signature layer (payload digest, hex)."""

    key: VerificationKey
    layer_digest: str
    manifest_digest: str

    @property
    def fingerprint(self) -> str:
        return self.key.fingerprint


class Verifier(Protocol):
    """Decides whether a pulled manifest is signed by someone trusted."""

    async def verify(
        self, repo: Repository, manifest_digest: str, *, display_url: str
    ) -> VerifiedSignature: ...


@dataclass(frozen=True, slots=True)
class KeyVerifier:
    """Trusts signatures made by any of ``keys`` (cosign ``--key``)."""

    keys: tuple[VerificationKey, ...]

    async def verify(
        self, repo: Repository, manifest_digest: str, *, display_url: str
    ) -> VerifiedSignature:
        return await verify_signature(repo, manifest_digest, self.keys, display_url=display_url)


def signature_tag(manifest_digest: str) -> str:
    """Where cosign keeps the signatures of ``manifest_digest`` (hex): ``sha256-<hex>.sig``."""
    return f"sha256-{manifest_digest}.sig"


def docker_reference(ref: Reference) -> str:
    """The payload's claimed identity as cosign writes it: registry and repository."""
    registry = _GGCR_DOCKER_HUB if ref.registry == DOCKER_HUB else ref.registry
    return f"{registry}/{ref.repository}"


def build_payload(manifest_digest: str, reference: str) -> bytes:
    """The simple-signing payload for ``manifest_digest`` (hex), byte for byte as cosign's."""
    document = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": f"sha256:{manifest_digest}"},
            "type": COSIGN_SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return json.dumps(document, separators=(",", ":")).encode()


# ---------------------------------------------------------------------- verify


@dataclass(slots=True)
class _Findings:
    """What the layers that did not pass showed, for the one sentence that reports them."""

    untrusted: int = 0
    malformed: list[str] | None = None
    other_digest: tuple[VerificationKey, str] | None = None
    bad_claims: tuple[VerificationKey, str] | None = None

    def note_malformed(self, sentence: str) -> None:
        if self.malformed is None:
            self.malformed = []
        if len(self.malformed) < 3:  # enough to act on; the rest say the same
            self.malformed.append(sentence)


async def verify_signature(
    repo: Repository,
    manifest_digest: str,
    keys: Sequence[VerificationKey],
    *,
    display_url: str,
) -> VerifiedSignature:
    """The signature of ``manifest_digest`` (hex) by one of ``keys``, or why there is none."""
    if not keys:
        raise ValueError("verify_signature needs at least one key")
    tag = signature_tag(manifest_digest)

    def invalid(detail: str) -> SignatureInvalidError:
        return SignatureInvalidError(detail, url=display_url)

    raw = await repo.get_if_present(f"manifests/{tag}", limit=MAX_MANIFEST_BYTES, accept=ACCEPT)
    if raw is None:
        raise invalid(
            f"not signed: no cosign signature (tag {tag}) in {_repository_of(display_url)};"
            " sign it with `cosign sign --key` or `wasmxds push --sign`"
        )
    image = _signature_image(raw, tag, invalid)
    candidates = [layer for layer in image.layers if layer.media_type == SIMPLE_SIGNING]
    if not candidates:
        kinds = ", ".join(sorted({layer.media_type for layer in image.layers})) or "no layers"
        raise invalid(
            f"the signature image {tag} holds no cosign signature layer ({SIMPLE_SIGNING});"
            f" found {kinds}"
        )
    skipped = max(0, len(candidates) - MAX_SIGNATURES)
    findings = _Findings()
    for layer in candidates[skipped:]:
        verified = await _check_layer(repo, layer, manifest_digest, keys, findings, display_url)
        if verified is not None:
            return verified
    raise invalid(_failure(tag, manifest_digest, keys, findings, skipped))


def _repository_of(display_url: str) -> str:
    """``oci://host/repo`` from ``oci://host/repo:tag@sha256:…`` (for messages only)."""
    name = display_url.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash > name.find("//") + 1 else name


def _signature_image(
    raw: bytes, tag: str, invalid: Callable[[str], SignatureInvalidError]
) -> ImageManifest:
    try:
        parsed = parse_manifest(raw, "")
    except ModuleError as exc:
        raise invalid(f"the signature image {tag} is malformed: {exc.detail}") from exc
    if not isinstance(parsed, ImageManifest):
        raise invalid(
            f"the signature tag {tag} names an image index, not the image manifest cosign writes"
        )
    return parsed


async def _check_layer(
    repo: Repository,
    layer: Descriptor,
    manifest_digest: str,
    keys: Sequence[VerificationKey],
    findings: _Findings,
    display_url: str,
) -> VerifiedSignature | None:
    label = f"signature layer {layer.short}"
    encoded = layer.annotations.get(SIGNATURE_ANNOTATION)
    if not encoded:
        findings.note_malformed(f"{label} has no {SIGNATURE_ANNOTATION} annotation")
        return None
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        findings.note_malformed(f"{label}: its {SIGNATURE_ANNOTATION} annotation is not base64")
        return None
    if layer.size > MAX_PAYLOAD_BYTES:
        findings.note_malformed(
            f"{label}: its payload is {layer.size} bytes, over the {MAX_PAYLOAD_BYTES}-byte"
            " limit for a simple-signing payload"
        )
        return None
    payload = await repo.get_if_present(f"blobs/sha256:{layer.digest}", limit=layer.size)
    if payload is None:
        findings.note_malformed(f"{label}: the registry has no blob for its payload")
        return None
    if len(payload) != layer.size or hashlib.sha256(payload).hexdigest() != layer.digest:
        raise DigestMismatchError(
            f"the payload of {label} does not match its digest and size", url=display_url
        )
    key = next((key for key in keys if key.verify(signature, payload)), None)
    if key is None:
        findings.untrusted += 1
        return None
    # Only a payload a trusted key signed is worth reading.
    claims = _claims(payload)
    if isinstance(claims, _BadClaims):
        findings.bad_claims = (key, claims.why)
        return None
    if claims != f"sha256:{manifest_digest}":
        findings.other_digest = (key, claims)
        return None
    return VerifiedSignature(key, layer.digest, manifest_digest)


@dataclass(frozen=True, slots=True)
class _BadClaims:
    why: str


def _claims(payload: bytes) -> str | _BadClaims:
    """The payload's ``critical.image.docker-manifest-digest``, or why it cannot be trusted."""
    try:
        document = json.loads(payload, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        return _BadClaims("its payload nests JSON too deeply")
    except ValueError as exc:
        return _BadClaims(f"its payload is not JSON ({exc})")
    critical = document.get("critical") if isinstance(document, dict) else None
    if not isinstance(critical, dict):
        return _BadClaims("its payload has no 'critical' object")
    if critical.get("type") != COSIGN_SIGNATURE_TYPE:
        return _BadClaims(
            f"its payload's critical.type is {_clip(critical.get('type'))}, not"
            f" {COSIGN_SIGNATURE_TYPE!r}"
        )
    image = critical.get("image")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest, str):
        return _BadClaims("its payload has no critical.image.docker-manifest-digest")
    return digest


def _clip(value: object) -> str:
    """``repr`` of a payload value for a message, cut short: payloads may be 64 KiB."""
    text = repr(value)
    return text if len(text) <= 90 else f"{text[:80]}…'"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        # Parsers disagree on which duplicate wins; a signed payload must mean one thing.
        raise ValueError("a key appears twice")
    return document


def _failure(
    tag: str,
    manifest_digest: str,
    keys: Sequence[VerificationKey],
    findings: _Findings,
    skipped: int,
) -> str:
    if findings.other_digest is not None:
        key, digest = findings.other_digest
        return (
            f"the signature by {key} in {tag} is for manifest {_clip(digest)[1:-1]}, not"
            f" sha256:{manifest_digest} that was pulled: the signature was copied from"
            " another image, or the tag was moved after signing; sign this manifest"
        )
    if findings.bad_claims is not None:
        key, why = findings.bad_claims
        return f"the signature by {key} in {tag} cannot be used: {why}"
    expected = ", ".join(f"{key.algorithm} SHA256:{key.fingerprint}" for key in keys)
    parts = []
    if findings.untrusted:
        parts.append(f"{findings.untrusted} signature(s) in {tag} were made by other keys")
    parts.extend(findings.malformed or ())
    if skipped:
        parts.append(
            f"{skipped} older signature(s) were not checked (only the newest {MAX_SIGNATURES} are)"
        )
    return f"not signed by a trusted key: {'; '.join(parts)}; expected one of: {expected}"


# ------------------------------------------------------------------------ sign


async def push_signature(
    repo: Repository, manifest_digest: str, private_key: SigningKey, docker_reference: str
) -> str:
    """Sign ``manifest_digest`` (hex) and add the signature to its ``.sig`` image as cosign
    does (keeping the signatures already there); returns the signature manifest's digest."""
    tag = signature_tag(manifest_digest)
    payload = build_payload(manifest_digest, docker_reference)
    payload_digest = hashlib.sha256(payload).hexdigest()
    raw = await repo.get_if_present(f"manifests/{tag}", limit=MAX_MANIFEST_BYTES, accept=ACCEPT)
    media_type, config_type, layers = OCI_MANIFEST, _OCI_CONFIG, list[dict[str, Any]]()
    if raw is not None:
        media_type, config_type, layers = _existing_layers(raw, tag)
        for layer in layers:
            if _same_signature(layer, payload_digest, payload, private_key):
                # cosign's duplicate check: this key already signed this payload.
                return hashlib.sha256(raw).hexdigest()
        if len(layers) >= _MAX_LAYERS_ON_PUSH:
            raise FetchError(
                f"the signature image {tag} already has {len(layers)} layers; cosign stops at"
                f" {_MAX_LAYERS_ON_PUSH} (remove old signatures with `cosign clean`)",
                retryable=False,
            )
    signature = base64.b64encode(private_key.sign(payload)).decode()
    layers.append(
        {
            "mediaType": SIMPLE_SIGNING,
            "size": len(payload),
            "digest": f"sha256:{payload_digest}",
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }
    )
    config = _config(layers)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "size": len(config),
            "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
        },
        "layers": layers,
    }
    await repo.upload_blob(payload)
    await repo.upload_blob(config)
    data = json.dumps(manifest, separators=(",", ":")).encode()
    return await repo.put_manifest(tag, media_type, data)


def _existing_layers(raw: bytes, tag: str) -> tuple[str, str, list[dict[str, Any]]]:
    try:
        parsed = parse_manifest(raw, "")
    except ModuleError as exc:
        raise FetchError(
            f"the signature image {tag} is malformed ({exc.detail}); delete the tag to start"
            " afresh",
            retryable=False,
        ) from exc
    if not isinstance(parsed, ImageManifest):
        raise FetchError(
            f"the signature tag {tag} names an image index; delete it to start afresh",
            retryable=False,
        )
    document = json.loads(raw)
    # Kept as they are: other signers' layers may carry certificates and bundles.
    layers = [dict(layer) for layer in document.get("layers", [])]
    config_type = _DOCKER_CONFIG if parsed.media_type == DOCKER_MANIFEST else _OCI_CONFIG
    return parsed.media_type, config_type, layers


def _same_signature(
    layer: dict[str, Any], payload_digest: str, payload: bytes, key: SigningKey
) -> bool:
    annotations = layer.get("annotations")
    encoded = annotations.get(SIGNATURE_ANNOTATION) if isinstance(annotations, dict) else None
    if (
        layer.get("digest") != f"sha256:{payload_digest}"
        or layer.get("mediaType") != SIMPLE_SIGNING
    ):
        return False
    if not isinstance(encoded, str):
        return False
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return key.public.verify(signature, payload)


def _config(layers: Sequence[dict[str, Any]]) -> bytes:
    """The image config go-containerregistry writes for cosign's signature image."""
    document = {
        "architecture": "",
        "created": _ZERO_TIME,
        "history": [{"created": _ZERO_TIME} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "config": {},
    }
    return json.dumps(document, separators=(",", ":")).encode()
