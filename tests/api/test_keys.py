"""Verification and signing keys: what cosign accepts for --key, and a sentence for the rest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.hashes import SHA256, SHA384

from wasmxds.api.keys import (
    PASSWORD_ENV,
    load_private_key,
    parse_private_key,
    parse_verification_key,
)
from wasmxds.errors import ConfigError, KeyFormatError

SOURCE = "spec.verificationKey"
P256 = ec.generate_private_key(ec.SECP256R1())
RSA2048 = rsa.generate_private_key(65537, 2048)
ED25519 = ed25519.Ed25519PrivateKey.generate()
KEYS: dict[str, Any] = {"ecdsa-p256": P256, "rsa": RSA2048, "ed25519": ED25519}


def public_pem(key: object) -> str:
    public = key.public_key()  # type: ignore[attr-defined]
    pem: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def pkcs8(key: object, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return data


def refusal(text: str) -> str:
    with pytest.raises(KeyFormatError) as caught:
        parse_verification_key(text, source=SOURCE)
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: "), message
    return message


@pytest.mark.parametrize("algorithm", sorted(KEYS))
def test_each_key_type_loads_with_its_fingerprint(algorithm: str) -> None:
    """P-256, RSA and Ed25519 public keys load; the fingerprint is the SPKI's SHA-256."""
    key = KEYS[algorithm]
    loaded = parse_verification_key(public_pem(key), source=SOURCE)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert loaded.algorithm == algorithm
    assert loaded.fingerprint == hashlib.sha256(der).hexdigest()
    assert str(loaded) == f"{algorithm} key SHA256:{loaded.fingerprint[:16]}…"
    assert "public_key" not in repr(loaded)
    # The same key given twice is one key (sets of keys dedupe).
    assert loaded == parse_verification_key("comment\n" + public_pem(key), source="other")


def test_a_pkcs1_rsa_public_key_is_read_as_cosign_reads_it() -> None:
    """'RSA PUBLIC KEY' (PKCS#1) is accepted, with the same fingerprint as its SPKI form."""
    pkcs1 = RSA2048.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert (
        parse_verification_key(pkcs1.decode(), source=SOURCE).fingerprint
        == parse_verification_key(public_pem(RSA2048), source=SOURCE).fingerprint
    )


def test_signatures_are_checked_the_way_cosign_checks_them() -> None:
    """ECDSA/SHA-256 DER, RSA PKCS#1 v1.5/SHA-256 and pure Ed25519 verify; other schemes do not."""
    payload = b'{"critical":{}}'
    p256 = parse_verification_key(public_pem(P256), source=SOURCE)
    rsa_key = parse_verification_key(public_pem(RSA2048), source=SOURCE)
    ed = parse_verification_key(public_pem(ED25519), source=SOURCE)
    assert p256.verify(P256.sign(payload, ec.ECDSA(SHA256())), payload)
    assert rsa_key.verify(RSA2048.sign(payload, padding.PKCS1v15(), SHA256()), payload)
    assert ed.verify(ED25519.sign(payload), payload)
    # Another hash, PSS padding, a changed payload, or another key's signature: refused.
    assert not p256.verify(P256.sign(payload, ec.ECDSA(SHA384())), payload)
    pss = padding.PSS(padding.MGF1(SHA256()), padding.PSS.MAX_LENGTH)
    assert not rsa_key.verify(RSA2048.sign(payload, pss, SHA256()), payload)
    assert not ed.verify(ED25519.sign(payload), payload + b" ")
    assert not ed.verify(ed25519.Ed25519PrivateKey.generate().sign(payload), payload)
    assert not p256.verify(b"not DER", payload)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "no PEM block found; expected one '-----BEGIN PUBLIC KEY-----' block"),
        ("ssh-ed25519 AAAA... user@host", "no PEM block found"),
        (public_pem(P256).rsplit("-----END", 1)[0], "no PEM block found"),
        (
            public_pem(P256) + public_pem(ED25519),
            "2 PEM blocks found; give exactly one public key (to trust several keys,",
        ),
        (
            pkcs8(P256).decode(),
            "this is a private key; give the public key instead (`cosign public-key",
        ),
        (
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nabc\n"
            "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            "this is a private key",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "this is a certificate, not a public key; give its key (`openssl x509 -pubkey",
        ),
        (
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n",
            "a PEM 'PGP PUBLIC KEY BLOCK' block is not a public key",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n",
            "the PUBLIC KEY block cannot be read as a key",
        ),
        (
            "-----BEGIN PUBLIC KEY-----\nabc\n-----END PRIVATE KEY-----\n",
            "the PEM block begins as 'PUBLIC KEY' but ends as 'PRIVATE KEY'",
        ),
        (
            public_pem(ec.generate_private_key(ec.SECP384R1())),
            "an ECDSA key on curve secp384r1 is not accepted: cosign verifies key-signed"
            " images with SHA-256",
        ),
        (
            public_pem(rsa.generate_private_key(65537, 1024)),
            "a 1024-bit RSA key is not accepted; RSA keys must have 2048 to 8192 bits",
        ),
        (public_pem(dsa.generate_private_key(2048)), "a DSA key cannot verify signatures; use"),
        (public_pem(ed448.Ed448PrivateKey.generate()), "a Ed448 key cannot verify signatures"),
        (public_pem(x25519.X25519PrivateKey.generate()), "a X25519 key cannot verify"),
        ("x" * 70_000, "70000 characters is too long for a PEM public key"),
    ],
    ids=[
        "empty",
        "ssh-key",
        "cut-short",
        "two-keys",
        "private-key",
        "cosign-private-key",
        "certificate",
        "pgp",
        "garbage-der",
        "mismatched-armour",
        "p384",
        "rsa1024",
        "dsa",
        "ed448",
        "x25519",
        "huge",
    ],
)
def test_every_other_input_is_refused_with_a_sentence(text: str, expected: str) -> None:
    """Each unusable input names its source and says what to give instead."""
    message = refusal(text)
    assert expected in message, message
    assert "MII" not in message  # never echoes key material


def test_key_errors_are_config_and_value_errors() -> None:
    """Callers catching ConfigError or ValueError around key parsing still do."""
    assert issubclass(KeyFormatError, ConfigError)
    assert issubclass(KeyFormatError, ValueError)


@pytest.mark.parametrize(
    ("key", "fmt"),
    [
        (P256, serialization.PrivateFormat.PKCS8),
        (P256, serialization.PrivateFormat.TraditionalOpenSSL),  # SEC1 'EC PRIVATE KEY'
        (RSA2048, serialization.PrivateFormat.PKCS8),
        (RSA2048, serialization.PrivateFormat.TraditionalOpenSSL),  # PKCS#1 'RSA PRIVATE KEY'
        (ED25519, serialization.PrivateFormat.PKCS8),
    ],
    ids=["p256-pkcs8", "p256-sec1", "rsa-pkcs8", "rsa-pkcs1", "ed25519-pkcs8"],
)
def test_signing_keys_in_each_pem_form(key: object, fmt: serialization.PrivateFormat) -> None:
    """Unencrypted PKCS#8, SEC1 and PKCS#1 keys load and sign what their public key verifies."""
    pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    )
    signing = parse_private_key(pem, source="k.pem", password=None)
    assert signing.public == parse_verification_key(public_pem(key), source=SOURCE)
    assert signing.public.verify(signing.sign(b"payload"), b"payload")
    assert "private_key" not in repr(signing)


def test_encrypted_pkcs8_uses_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted key needs the variable; a wrong password is said, never shown."""
    path = tmp_path / "signing.pem"
    path.write_bytes(pkcs8(P256, b"correct horse"))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(KeyFormatError, match=f"encrypted; put its password in the {PASSWORD_ENV}"):
        load_private_key(path)
    monkeypatch.setenv(PASSWORD_ENV, "battery staple")
    with pytest.raises(KeyFormatError) as caught:
        load_private_key(path)
    assert str(caught.value) == (
        f"{path}: the key cannot be decrypted with the password in {PASSWORD_ENV}"
    )
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    assert load_private_key(path).public.algorithm == "ecdsa-p256"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\neyJrZGYiOnt9fQ==\n"
            b"-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            "this is cosign's own encrypted key format (ENCRYPTED SIGSTORE PRIVATE KEY), which"
            " wasmxds does not read; make a PEM key instead (`openssl genpkey",
        ),
        (
            b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nabc\n"
            b"-----END ENCRYPTED COSIGN PRIVATE KEY-----\n",
            "`cosign import-key-pair --key signing.pem`",
        ),
        (public_pem(P256).encode(), "a PEM 'PUBLIC KEY' block is not a private key"),
        (b"\xff\xfe binary", "not a PEM file"),
        (pkcs8(ec.generate_private_key(ec.SECP384R1())), "curve secp384r1 is not accepted"),
        (pkcs8(rsa.generate_private_key(65537, 1024)), "a 1024-bit RSA key is not accepted"),
        (pkcs8(dsa.generate_private_key(2048)), "a DSA key cannot sign modules"),
        (
            b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
            "the PRIVATE KEY block cannot be read as a key",
        ),
    ],
    ids=["sigstore", "cosign", "public", "binary", "p384", "rsa1024", "dsa", "garbage"],
)
def test_unusable_signing_keys_are_refused(data: bytes, expected: str) -> None:
    """cosign's own format, public keys and unsupported keys each get a sentence."""
    with pytest.raises(KeyFormatError) as caught:
        parse_private_key(data, source="k.pem", password=None)
    assert str(caught.value).startswith("k.pem: ")
    assert expected in str(caught.value), str(caught.value)


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    """A missing file is a KeyFormatError naming the path."""
    with pytest.raises(KeyFormatError, match=r"missing\.pem: cannot read the signing key"):
        load_private_key(tmp_path / "missing.pem")
