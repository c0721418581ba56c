"""`wasmxds push --sign` and `wasmxds verify` as users run them, against a real registry."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from e2e.harness.registry import Registry
from e2e.harness.wasmxds import run_cli
from tests.modules.oci.conftest import WASM
from wasmxds.api.keys import PASSWORD_ENV
from wasmxds.modules.oci.manifest import OCI_INDEX, OCI_MANIFEST
from wasmxds.modules.oci.signature import build_payload


@pytest.fixture(autouse=True)
def _no_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


class KeyPair:
    def __init__(self, directory: Path, name: str, private: Any, password: bytes = b"") -> None:
        directory.mkdir(exist_ok=True)
        self.private = directory / f"{name}.key"
        self.public = directory / f"{name}.pub"
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        self.private.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
        )
        public = private.public_key()
        self.public.write_bytes(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fingerprint = hashlib.sha256(der).hexdigest()


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "filter.wasm"
    path.write_bytes(WASM)
    return path


async def push(registry: Registry, module: Path, *extra: str) -> tuple[int, str, str]:
    return await run_cli(
        "push",
        str(module),
        registry.url("cli/signed"),
        "--insecure-registry",
        registry.host,
        *extra,
    )


async def verify(registry: Registry, url: str, *keys: Path) -> tuple[int, str, str]:
    key_args = [arg for key in keys for arg in ("--key", str(key))]
    return await run_cli("verify", url, *key_args, "--insecure-registry", registry.host)


def pushed_digest(out: str) -> str:
    match = re.search(r"^digest:\s+sha256:([0-9a-f]{64})$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


async def test_push_sign_then_verify(registry: Registry, module: Path, tmp_path: Path) -> None:
    """push --sign prints the signature tag; verify accepts it by tag and by digest."""
    keys = KeyPair(tmp_path / "keys", "signer", ec.generate_private_key(ec.SECP256R1()))
    other = KeyPair(tmp_path / "keys", "other", ed25519.Ed25519PrivateKey.generate())
    code, out, err = await push(registry, module, "--sign", str(keys.private))
    assert code == 0, err
    digest = pushed_digest(out)
    assert f"signed:   sha256-{digest}.sig by ecdsa-p256 key SHA256:{keys.fingerprint[:16]}…" in out

    code, out, err = await verify(registry, registry.url("cli/signed"), other.public, keys.public)
    assert (code, err) == (0, "")
    payload = build_payload(digest, f"{registry.host}/cli/signed")
    assert out == (
        f"verified {registry.url('cli/signed')} (sha256:{digest}): signed by ecdsa-p256 key"
        f" SHA256:{keys.fingerprint}\n"
        f"signature: layer sha256:{hashlib.sha256(payload).hexdigest()} of"
        f" sha256-{digest}.sig\n"
    )
    by_digest = f"oci://{registry.host}/cli/signed@sha256:{digest}"
    code, out, err = await verify(registry, by_digest, keys.public)
    assert code == 0, err
    assert out.startswith(f"verified {by_digest} (sha256:{digest}): signed by ecdsa-p256")


async def test_verify_refusals_exit_1_with_the_reason(
    registry: Registry, module: Path, tmp_path: Path
) -> None:
    """Unsigned, or signed by another key: exit 1, the reason on stderr, nothing on stdout."""
    keys = KeyPair(tmp_path / "keys", "signer", ec.generate_private_key(ec.SECP256R1()))
    other = KeyPair(tmp_path / "keys", "other", ec.generate_private_key(ec.SECP256R1()))
    code, out, err = await push(registry, module)
    assert code == 0, err
    digest = pushed_digest(out)
    url = registry.url("cli/signed")

    code, out, err = await verify(registry, url, keys.public)
    assert (code, out) == (1, "")
    assert err == (
        f"wasmxds verify: {url}: not signed: no cosign signature (tag sha256-{digest}.sig) in"
        f" oci://{registry.host}/cli/signed; sign it with `cosign sign --key` or"
        " `wasmxds push --sign`\n"
    )

    code, _, err = await push(registry, module, "--sign", str(other.private))
    assert code == 0, err
    code, out, err = await verify(registry, url, keys.public)
    assert (code, out) == (1, "")
    assert err == (
        f"wasmxds verify: {url}: not signed by a trusted key: 1 signature(s) in"
        f" sha256-{digest}.sig were made by other keys; expected one of: ecdsa-p256"
        f" SHA256:{keys.fingerprint}\n"
    )


async def test_bad_keys_exit_2_and_push_nothing(
    registry: Registry, module: Path, tmp_path: Path
) -> None:
    """A private key given as --key, or cosign's own key format for --sign: exit 2, a sentence
    naming the flag and file, and no image left unsigned in the registry."""
    keys = KeyPair(tmp_path / "keys", "signer", ec.generate_private_key(ec.SECP256R1()))
    code, out, err = await verify(registry, registry.url("cli/signed"), keys.private)
    assert (code, out) == (2, "")
    assert err.startswith(f"wasmxds verify: --key {keys.private}: this is a private key;")

    cosign_key = tmp_path / "cosign.key"
    cosign_key.write_text(
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\neyJrZGYiOnt9fQ==\n"
        "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    )
    code, out, err = await push(registry, module, "--sign", str(cosign_key))
    assert (code, out) == (2, "")
    assert err.startswith(
        f"wasmxds push: --sign {cosign_key}: this is cosign's own encrypted key format"
    )
    assert "cosign import-key-pair" in err
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://{registry.host}/v2/cli/signed/tags/list")
    assert answer.status_code == 404  # the repository was never created


async def test_push_sign_with_an_encrypted_key(
    registry: Registry, module: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted PKCS#8 key signs with the password from the environment, which is never
    printed; without it the push stops before anything is uploaded."""
    password = "pw-not-in-output"
    keys = KeyPair(
        tmp_path / "keys", "signer", ed25519.Ed25519PrivateKey.generate(), password.encode()
    )
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    code, _, err = await push(registry, module, "--sign", str(keys.private))
    assert code == 2
    assert f"the key is encrypted; put its password in the {PASSWORD_ENV}" in err

    monkeypatch.setenv(PASSWORD_ENV, password)
    code, out, err = await push(registry, module, "--sign", str(keys.private))
    assert code == 0, err
    assert password not in out + err
    code, out, err = await verify(registry, registry.url("cli/signed"), keys.public)
    assert code == 0, err
    assert f"signed by ed25519 key SHA256:{keys.fingerprint}" in out


async def test_verify_takes_only_oci_references(tmp_path: Path) -> None:
    """An http(s) URL cannot carry a cosign signature: exit 2 with the reason."""
    keys = KeyPair(tmp_path / "keys", "signer", ec.generate_private_key(ec.SECP256R1()))
    code, out, err = await run_cli(
        "verify", "https://example.com/f.wasm", "--key", str(keys.public)
    )
    assert (code, out) == (2, "")
    assert "only oci:// references can be verified" in err


async def test_an_index_is_verified_by_its_own_or_its_platform_signature(
    registry: Registry, module: Path, tmp_path: Path
) -> None:
    """An image index counts as signed when the index is (what cosign signs) or when the
    platform manifest serve would pick is; unsigned, the index's own reason is given."""
    keys = KeyPair(tmp_path / "keys", "signer", ec.generate_private_key(ec.SECP256R1()))
    code, out, err = await push(registry, module, "--sign", str(keys.private))
    assert code == 0, err
    platform = pushed_digest(out)
    base = f"http://{registry.host}/v2/cli/signed/manifests"
    async with httpx.AsyncClient() as http:
        got = await http.get(f"{base}/sha256:{platform}", headers={"Accept": OCI_MANIFEST})
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": f"sha256:{platform}",
                    "size": len(got.content),
                    "platform": {"os": "wasip1", "architecture": "wasm"},
                }
            ],
        }
        data = json.dumps(index).encode()
        put = await http.put(f"{base}/multi", content=data, headers={"Content-Type": OCI_INDEX})
        assert put.status_code == 201, put.text
    index_digest = hashlib.sha256(data).hexdigest()
    url = registry.url("cli/signed", "multi")
    code, out, err = await verify(registry, url, keys.public)
    assert code == 0, err
    assert out.startswith(f"verified {url} (sha256:{platform}): signed by ecdsa-p256")

    other = KeyPair(tmp_path / "keys", "other", ec.generate_private_key(ec.SECP256R1()))
    code, out, err = await verify(registry, url, other.public)
    assert code == 1
    assert f"not signed: no cosign signature (tag sha256-{index_digest}.sig)" in err
