"""cosign signatures against a real registry: each way to be refused, and the format written."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from e2e.harness.registry import Registry
from tests.modules.oci.conftest import WASM, settings
from wasmxds.api.keys import SigningKey, VerificationKey, parse_private_key
from wasmxds.errors import FetchError, SignatureInvalidError
from wasmxds.modules.oci.client import Credentials, RegistryClient, Repository
from wasmxds.modules.oci.manifest import OCI_INDEX, OCI_MANIFEST
from wasmxds.modules.oci.push import PushLayout, build_image, push_image
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import (
    MAX_SIGNATURES,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    build_payload,
    push_signature,
    signature_tag,
    verify_signature,
)


def signing_key(private: Any) -> SigningKey:
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return parse_private_key(pem, source="test", password=None)


ECDSA = signing_key(ec.generate_private_key(ec.SECP256R1()))
RSA = signing_key(rsa.generate_private_key(65537, 2048))
ED25519 = signing_key(ed25519.Ed25519PrivateKey.generate())
OTHER = signing_key(ec.generate_private_key(ec.SECP256R1()))


class Image:
    """One pushed image and the repository it is in."""

    def __init__(self, registry: Registry, repo: Repository, url: str, digest: str) -> None:
        self.registry, self.repo, self.url, self.digest = registry, repo, url, digest


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(settings=settings()) as client:
        yield client


async def push_module(
    registry: Registry, client: RegistryClient, tag: str = "v1", wasm: bytes = WASM
) -> Image:
    url = registry.url("filters/signed", tag)
    repo = client.repository(parse_reference(url), Credentials(), display_url=url, push=True)
    digest = await push_image(repo, tag, build_image(wasm, PushLayout.ARTIFACT))
    return Image(registry, repo, url, digest)


async def verify(image: Image, *keys: SigningKey, digest: str = "") -> str:
    """The refusal sentence (the error's detail) for ``image`` checked against ``keys``."""
    with pytest.raises(SignatureInvalidError) as caught:
        await verify_signature(
            image.repo, digest or image.digest, [k.public for k in keys], display_url=image.url
        )
    error = caught.value
    assert error.reason == "signature_invalid"
    assert error.retryable  # a signature may be pushed later
    assert str(error).startswith(f"{image.url}: ")
    return error.detail


async def put_signatures(
    image: Image, layers: Sequence[tuple[bytes, dict[str, str]]], *, digest: str = ""
) -> None:
    """Write a .sig image by hand: each (payload, annotations) becomes one layer."""
    descriptors = []
    for payload, layer_annotations in layers:
        payload_digest = await image.repo.upload_blob(payload)
        descriptors.append(
            {
                "mediaType": SIMPLE_SIGNING,
                "size": len(payload),
                "digest": f"sha256:{payload_digest}",
                "annotations": layer_annotations,
            }
        )
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(config),
            "digest": f"sha256:{await image.repo.upload_blob(config)}",
        },
        "layers": descriptors,
    }
    await image.repo.put_manifest(
        signature_tag(digest or image.digest), OCI_MANIFEST, json.dumps(manifest).encode()
    )


def signed(key: SigningKey, payload: bytes) -> dict[str, str]:
    return {SIGNATURE_ANNOTATION: base64.b64encode(key.sign(payload)).decode()}


def payload_for(image: Image, digest: str = "") -> bytes:
    return build_payload(digest or image.digest, "127.0.0.1/filters/signed")


@pytest.mark.parametrize("key", [ECDSA, RSA, ED25519], ids=["ecdsa-p256", "rsa", "ed25519"])
async def test_a_signature_pushed_with_each_key_type_verifies(
    registry: Registry, client: RegistryClient, key: SigningKey
) -> None:
    """push_signature then verify_signature: the key and the layer that verified are named."""
    image = await push_module(registry, client)
    await push_signature(image.repo, image.digest, key, "127.0.0.1/filters/signed")
    verified = await verify_signature(
        image.repo, image.digest, [OTHER.public, key.public], display_url=image.url
    )
    assert verified.key == key.public
    assert verified.fingerprint == key.public.fingerprint
    assert verified.manifest_digest == image.digest
    assert verified.layer_digest == hashlib.sha256(payload_for(image)).hexdigest()


async def test_the_signature_image_is_what_cosign_writes(
    registry: Registry, client: RegistryClient
) -> None:
    """Tag, OCI manifest, payload layer with its annotation, and go-containerregistry's config."""
    image = await push_module(registry, client)
    await push_signature(image.repo, image.digest, ECDSA, "127.0.0.1/filters/signed")
    base = f"http://{registry.host}/v2/filters/signed"
    async with httpx.AsyncClient() as http:
        answer = await http.get(
            f"{base}/manifests/sha256-{image.digest}.sig", headers={"Accept": OCI_MANIFEST}
        )
        manifest = answer.json()
        config = (await http.get(f"{base}/blobs/{manifest['config']['digest']}")).json()
        layer = manifest["layers"][0]
        payload = (await http.get(f"{base}/blobs/{layer['digest']}")).content
    assert answer.headers["content-type"] == OCI_MANIFEST
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [list(d) for d in manifest["layers"]] == [["mediaType", "size", "digest", "annotations"]]
    assert layer["mediaType"] == SIMPLE_SIGNING
    assert list(layer["annotations"]) == [SIGNATURE_ANNOTATION]
    assert json.loads(payload) == {
        "critical": {
            "identity": {"docker-reference": "127.0.0.1/filters/signed"},
            "image": {"docker-manifest-digest": f"sha256:{image.digest}"},
            "type": "cosign container image signature",
        },
        "optional": None,
    }
    assert config == {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
        "config": {},
    }


async def test_signing_again_appends_and_an_identical_signature_is_not_added(
    registry: Registry, client: RegistryClient
) -> None:
    """A second key adds a layer (both verify); the same key again adds nothing, as in cosign."""
    image = await push_module(registry, client)
    first = await push_signature(image.repo, image.digest, ECDSA, "127.0.0.1/filters/signed")
    second = await push_signature(image.repo, image.digest, RSA, "127.0.0.1/filters/signed")
    again = await push_signature(image.repo, image.digest, ECDSA, "127.0.0.1/filters/signed")
    assert first != second
    assert again == second  # ECDSA signs differently each time; the old one still verifies
    raw = await image.repo.get_if_present(
        f"manifests/{signature_tag(image.digest)}", limit=1 << 20, accept=[OCI_MANIFEST]
    )
    assert raw is not None
    assert len(json.loads(raw)["layers"]) == 2
    for key in (ECDSA, RSA):
        verified = await verify_signature(
            image.repo, image.digest, [key.public], display_url=image.url
        )
        assert verified.key == key.public


async def test_an_unsigned_image_is_refused(registry: Registry, client: RegistryClient) -> None:
    """No .sig tag: "not signed", naming the tag and the repository and how to sign."""
    image = await push_module(registry, client)
    detail = await verify(image, ECDSA)
    assert detail == (
        f"not signed: no cosign signature (tag sha256-{image.digest}.sig) in"
        f" oci://{registry.host}/filters/signed; sign it with `cosign sign --key` or"
        " `wasmxds push --sign`"
    )


async def test_a_signature_by_another_key_is_refused(
    registry: Registry, client: RegistryClient
) -> None:
    """Signed, but by none of the trusted keys: the expected fingerprints are listed."""
    image = await push_module(registry, client)
    await push_signature(image.repo, image.digest, OTHER, "127.0.0.1/filters/signed")
    detail = await verify(image, ECDSA, ED25519)
    assert detail == (
        f"not signed by a trusted key: 1 signature(s) in sha256-{image.digest}.sig were made"
        f" by other keys; expected one of: ecdsa-p256 SHA256:{ECDSA.public.fingerprint},"
        f" ed25519 SHA256:{ED25519.public.fingerprint}"
    )


async def test_a_signature_for_another_manifest_is_refused(
    registry: Registry, client: RegistryClient
) -> None:
    """A trusted signature whose payload names another digest (copied, or the tag moved)."""
    signed_image = await push_module(registry, client, "v1")
    other = await push_module(registry, client, "v2", wasm=WASM + b"\x00custom")
    payload = payload_for(signed_image)
    # The .sig of the signed image, copied to the other image's .sig tag.
    await put_signatures(other, [(payload, signed(ECDSA, payload))])
    detail = await verify(other, ECDSA)
    assert detail == (
        f"the signature by {ECDSA.public} in sha256-{other.digest}.sig is for manifest"
        f" sha256:{signed_image.digest}, not sha256:{other.digest} that was pulled: the"
        " signature was copied from another image, or the tag was moved after signing;"
        " sign this manifest"
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", "its payload is not JSON"),
        (b"[]", "its payload has no 'critical' object"),
        (
            b'{"critical":{"type":"atomic container signature","image":{}}}',
            "its payload's critical.type is 'atomic container signature', not"
            " 'cosign container image signature'",
        ),
        (
            b'{"critical":{"type":"cosign container image signature"}}',
            "its payload has no critical.image.docker-manifest-digest",
        ),
        (b'{"critical":{},"critical":{}}', "its payload is not JSON (a key appears twice"),
        (b"[" * 5000 + b"]" * 5000, "its payload nests JSON too deeply"),
    ],
    ids=["not-json", "no-critical", "other-type", "no-digest", "duplicate-keys", "deep"],
)
async def test_a_trusted_signature_over_a_bad_payload_is_refused(
    registry: Registry, client: RegistryClient, payload: bytes, expected: str
) -> None:
    """The key signed it, but the payload does not say which manifest: refused, said why."""
    image = await push_module(registry, client)
    await put_signatures(image, [(payload, signed(ED25519, payload))])
    detail = await verify(image, ED25519)
    assert detail.startswith(
        f"the signature by {ED25519.public} in sha256-{image.digest}.sig cannot be used: "
    )
    assert expected in detail, detail


async def test_malformed_signature_layers_are_each_named(
    registry: Registry, client: RegistryClient
) -> None:
    """No annotation, non-base64, an oversized payload: each layer's problem is in the sentence."""
    image = await push_module(registry, client)
    payload = payload_for(image)
    big = payload + b" " * (64 * 1024)
    await put_signatures(
        image,
        [
            (payload, {}),
            (payload + b" ", {SIGNATURE_ANNOTATION: "***not base64***"}),
            (big, signed(ECDSA, big)),
        ],
    )
    digest = hashlib.sha256(payload).hexdigest()[:12]
    spaced = hashlib.sha256(payload + b" ").hexdigest()[:12]
    big_digest = hashlib.sha256(big).hexdigest()[:12]
    detail = await verify(image, ECDSA)
    assert detail == (
        f"not signed by a trusted key: signature layer sha256:{digest} has no"
        f" {SIGNATURE_ANNOTATION} annotation; signature layer sha256:{spaced}: its"
        f" {SIGNATURE_ANNOTATION} annotation is not base64; signature layer"
        f" sha256:{big_digest}: its payload is {len(big)} bytes, over the 65536-byte limit"
        f" for a simple-signing payload; expected one of: ecdsa-p256"
        f" SHA256:{ECDSA.public.fingerprint}"
    )


async def test_a_payload_missing_from_the_registry_is_named(
    registry: Registry, client: RegistryClient
) -> None:
    """A layer whose blob was deleted: that layer is reported, not a crash or a pass."""
    image = await push_module(registry, client)
    payload = payload_for(image)
    await put_signatures(image, [(payload, signed(ECDSA, payload))])
    digest = hashlib.sha256(payload).hexdigest()
    async with httpx.AsyncClient() as http:
        deleted = await http.delete(
            f"http://{registry.host}/v2/filters/signed/blobs/sha256:{digest}"
        )
    assert deleted.status_code == 202
    detail = await verify(image, ECDSA)
    assert f"signature layer sha256:{digest[:12]}: the registry has no blob for its payload" in (
        detail
    )


async def test_a_signature_image_that_is_not_one_is_refused(
    registry: Registry, client: RegistryClient
) -> None:
    """An index, or an image without simple-signing layers, at the .sig tag: said so."""
    image = await push_module(registry, client)
    other = await push_module(registry, client, "v2", wasm=WASM + b"\x00other")
    tag = signature_tag(image.digest)
    # The module image itself pushed under the .sig tag: layers of the wrong kind.
    await push_image(image.repo, tag, build_image(WASM, PushLayout.ARTIFACT))
    assert "holds no cosign signature layer" in await verify(image, ECDSA)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{other.digest}", "size": 100}],
    }
    await image.repo.put_manifest(tag, OCI_INDEX, json.dumps(index).encode())
    assert await verify(image, ECDSA) == (
        f"the signature tag {tag} names an image index, not the image manifest cosign writes"
    )


async def test_only_the_newest_signatures_are_checked(
    registry: Registry, client: RegistryClient
) -> None:
    """Past MAX_SIGNATURES layers the oldest go unchecked, and the sentence says how many."""
    image = await push_module(registry, client)
    payload = payload_for(image)
    trusted = (payload, signed(ECDSA, payload))
    untrusted = (payload, signed(OTHER, payload))
    await put_signatures(image, [trusted, *[untrusted] * MAX_SIGNATURES])
    detail = await verify(image, ECDSA)
    assert detail.startswith(
        f"not signed by a trusted key: {MAX_SIGNATURES} signature(s) in"
        f" sha256-{image.digest}.sig were made by other keys; 1 older signature(s) were not"
        f" checked (only the newest {MAX_SIGNATURES} are)"
    )
    # The same trusted signature among the newest is found.
    await put_signatures(image, [*[untrusted] * (MAX_SIGNATURES - 1), trusted])
    verified = await verify_signature(
        image.repo, image.digest, [ECDSA.public], display_url=image.url
    )
    assert verified.key == ECDSA.public


async def test_an_unreachable_registry_is_an_ordinary_fetch_error(
    registry: Registry, client: RegistryClient
) -> None:
    """Only "not found" means unsigned: a registry that is down stays a retryable FetchError."""
    image = await push_module(registry, client)
    await registry.stop()
    with pytest.raises(FetchError) as caught:
        await verify_signature(image.repo, image.digest, [ECDSA.public], display_url=image.url)
    assert not isinstance(caught.value, SignatureInvalidError)
    assert caught.value.retryable


async def test_keys_are_required(registry: Registry, client: RegistryClient) -> None:
    """Verifying against no key at all is a programming error, not "unsigned"."""
    image = await push_module(registry, client)
    keys: list[VerificationKey] = []
    with pytest.raises(ValueError, match="at least one key"):
        await verify_signature(image.repo, image.digest, keys, display_url=image.url)


async def test_payload_text_in_messages_is_cut_short(
    registry: Registry, client: RegistryClient
) -> None:
    """A trusted payload naming a huge digest or type does not flood the message (or the log)."""
    image = await push_module(registry, client)
    huge = json.dumps(
        {
            "critical": {
                "type": "cosign container image signature",
                "image": {"docker-manifest-digest": "sha256:" + "a" * 20_000},
            }
        }
    ).encode()
    await put_signatures(image, [(huge, signed(ECDSA, huge))])
    detail = await verify(image, ECDSA)
    assert "is for manifest sha256:aaaa" in detail
    assert "…" in detail
    assert len(detail) < 600
    odd_type = json.dumps({"critical": {"type": "x" * 20_000, "image": {}}}).encode()
    await put_signatures(image, [(odd_type, signed(ECDSA, odd_type))])
    detail = await verify(image, ECDSA)
    assert "its payload's critical.type is 'xxxx" in detail
    assert len(detail) < 600
