"""Keys for module signatures, as cosign uses them with ``--key``.

A verification key is one PEM ``PUBLIC KEY`` block (SubjectPublicKeyInfo, what
``cosign generate-key-pair`` writes to ``cosign.pub``): ECDSA P-256, RSA of at
least 2048 bits, or Ed25519. Signatures are checked the way cosign checks a
key-signed image (``cosign verify --key``): ECDSA over SHA-256 with an ASN.1 DER
signature, RSA PKCS#1 v1.5 over SHA-256, Ed25519 over the message itself.

Other ECDSA curves are refused rather than half-supported: ``cosign verify --key``
checks with SHA-256 whatever the curve, but cosign 3 signs P-384/P-521 keys with
SHA-384/SHA-512 (cosign 2 with SHA-256), so the hash depends on who signed.

A signing key (``wasmxds push --sign``) is an unencrypted PEM private key
(PKCS#8, SEC1 ``EC PRIVATE KEY``, PKCS#1 ``RSA PRIVATE KEY``) or an encrypted
PKCS#8 one whose password comes from ``WASMXDS_SIGNING_KEY_PASSWORD``. cosign's
own ``ENCRYPTED SIGSTORE PRIVATE KEY`` (scrypt and NaCl secretbox) is refused
with the way round it: make a PEM key, use it here, and hand it to
``cosign import-key-pair`` for cosign.

Messages name where a key came from and what is wrong with it, never its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from wasmxds.errors import KeyFormatError

__all__ = [
    "PASSWORD_ENV",
    "Algorithm",
    "KeyFormatError",
    "SigningKey",
    "VerificationKey",
    "load_private_key",
    "parse_private_key",
    "parse_verification_key",
]

Algorithm = Literal["ecdsa-p256", "rsa", "ed25519"]
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

PASSWORD_ENV = "WASMXDS_SIGNING_KEY_PASSWORD"

# A PEM public key is under 2 KiB even for RSA-8192; a bound keeps a pasted file sane.
_MAX_KEY_TEXT = 64 * 1024
_MIN_RSA_BITS = 2048
# Verifying with a huge modulus costs CPU on every retry; no real signing key is this big.
_MAX_RSA_BITS = 8192
_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END ([A-Z0-9 ]+)-----", re.DOTALL
)
_COSIGN_OWN_FORMATS = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
_PRIVATE_TYPES = ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
_SUPPORTED = (
    "use ECDSA P-256 (what `cosign generate-key-pair` makes), RSA (2048 bits or more) or Ed25519"
)


@dataclass(frozen=True)
class VerificationKey:
    """A trusted public key; two keys are equal when their SubjectPublicKeyInfo is."""

    algorithm: Algorithm
    # Hex SHA-256 of the DER SubjectPublicKeyInfo: `openssl pkey -pubin -outform DER | sha256sum`.
    fingerprint: str
    public_key: PublicKey = field(repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.algorithm} key SHA256:{self.fingerprint[:16]}…"

    def verify(self, signature: bytes, payload: bytes) -> bool:
        """Whether ``signature`` over ``payload`` was made by this key, as cosign checks it."""
        try:
            match self.public_key:
                case ec.EllipticCurvePublicKey():
                    self.public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
                case rsa.RSAPublicKey():
                    self.public_key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
                case ed25519.Ed25519PublicKey():
                    self.public_key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key for ``push --sign``; ``public`` is the key that verifies what it signs."""

    public: VerificationKey
    private_key: PrivateKey = field(repr=False)

    def __str__(self) -> str:
        return str(self.public)

    def sign(self, payload: bytes) -> bytes:
        """The signature cosign would make over ``payload`` with this key."""
        match self.private_key:
            case ec.EllipticCurvePrivateKey():
                return self.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
            case rsa.RSAPrivateKey():
                return self.private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
            case ed25519.Ed25519PrivateKey():
                return self.private_key.sign(payload)


def parse_verification_key(text: str, *, source: str) -> VerificationKey:
    """The one PEM public key in ``text``; ``source`` names where it came from in errors."""
    block_type, block = _one_block(text, source=source, wanted="public key")
    if block_type in _PRIVATE_TYPES or block_type in _COSIGN_OWN_FORMATS:
        raise KeyFormatError(
            f"{source}: this is a private key; give the public key instead "
            "(`cosign public-key --key cosign.key`, or `openssl pkey -pubout -in KEY`), "
            "and keep the private key secret"
        )
    if block_type == "CERTIFICATE":
        raise KeyFormatError(
            f"{source}: this is a certificate, not a public key; give its key "
            "(`openssl x509 -pubkey -noout -in CERT`)"
        )
    if block_type not in ("PUBLIC KEY", "RSA PUBLIC KEY"):
        raise KeyFormatError(
            f"{source}: a PEM {block_type!r} block is not a public key; expected "
            "'-----BEGIN PUBLIC KEY-----' (cosign.pub from `cosign generate-key-pair`)"
        )
    try:
        # cosign also reads PKCS#1 'RSA PUBLIC KEY'; the fingerprint is still of the SPKI.
        key = serialization.load_pem_public_key(block)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFormatError(
            f"{source}: the {block_type} block cannot be read as a key ({_first_line(exc)}); "
            "is it cut short or edited?"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise KeyFormatError(f"{source}: a {_kind(key)} key cannot verify signatures; {_SUPPORTED}")
    return _verification_key(key, source=source)


def parse_private_key(data: bytes, *, source: str, password: bytes | None) -> SigningKey:
    """The one PEM private key in ``data``, decrypted with ``password`` if it is encrypted."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFormatError(
            f"{source}: not a PEM file; expected a '-----BEGIN PRIVATE KEY-----' block"
        ) from None
    block_type, block = _one_block(text, source=source, wanted="private key")
    if block_type in _COSIGN_OWN_FORMATS:
        raise KeyFormatError(
            f"{source}: this is cosign's own encrypted key format ({block_type}), which "
            "wasmxds does not read; make a PEM key instead (`openssl genpkey -algorithm EC "
            "-pkeyopt ec_paramgen_curve:P-256 -out signing.pem`), sign with it here, and "
            "give the same key to cosign with `cosign import-key-pair --key signing.pem`"
        )
    if block_type not in _PRIVATE_TYPES:
        raise KeyFormatError(
            f"{source}: a PEM {block_type!r} block is not a private key; expected "
            "'-----BEGIN PRIVATE KEY-----' (PKCS#8), 'EC PRIVATE KEY' or 'RSA PRIVATE KEY'"
        )
    encrypted = block_type == "ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in block
    if encrypted and password is None:
        raise KeyFormatError(
            f"{source}: the key is encrypted; put its password in the {PASSWORD_ENV} "
            "environment variable"
        )
    try:
        key = serialization.load_pem_private_key(block, password if encrypted else None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        if encrypted:
            # The library's reason may quote nothing secret, but "bad decrypt" is all it knows.
            raise KeyFormatError(
                f"{source}: the key cannot be decrypted with the password in {PASSWORD_ENV}"
            ) from exc
        raise KeyFormatError(
            f"{source}: the {block_type} block cannot be read as a key ({_first_line(exc)})"
        ) from exc
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyFormatError(f"{source}: a {_kind(key)} key cannot sign modules; {_SUPPORTED}")
    return SigningKey(_verification_key(key.public_key(), source=source), key)


def load_private_key(path: Path) -> SigningKey:
    """The signing key in the file at ``path`` (password, if needed, from the environment)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"{path}: cannot read the signing key: {exc.strerror}") from exc
    password = os.environ.get(PASSWORD_ENV)
    return parse_private_key(
        data, source=str(path), password=None if password is None else password.encode()
    )


def _one_block(text: str, *, source: str, wanted: str) -> tuple[str, bytes]:
    if len(text) > _MAX_KEY_TEXT:
        raise KeyFormatError(
            f"{source}: {len(text)} characters is too long for a PEM {wanted} "
            f"(at most {_MAX_KEY_TEXT})"
        )
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks:
        raise KeyFormatError(
            f"{source}: no PEM block found; expected one '-----BEGIN "
            f"{'PUBLIC KEY' if wanted == 'public key' else 'PRIVATE KEY'}-----' block"
        )
    if len(blocks) > 1:
        raise KeyFormatError(
            f"{source}: {len(blocks)} PEM blocks found; give exactly one {wanted} "
            "(to trust several keys, list each one separately)"
        )
    match = blocks[0]
    if match.group(1) != match.group(3):
        raise KeyFormatError(
            f"{source}: the PEM block begins as {match.group(1)!r} but ends as {match.group(3)!r}"
        )
    return match.group(1), match.group(0).encode("ascii", "replace")


def _verification_key(key: PublicKey, *, source: str) -> VerificationKey:
    algorithm: Algorithm
    match key:
        case ec.EllipticCurvePublicKey():
            if not isinstance(key.curve, ec.SECP256R1):
                raise KeyFormatError(
                    f"{source}: an ECDSA key on curve {key.curve.name} is not accepted: cosign "
                    "verifies key-signed images with SHA-256 but signs with this curve's own "
                    f"hash, so only P-256 works both ways; {_SUPPORTED}"
                )
            algorithm = "ecdsa-p256"
        case rsa.RSAPublicKey():
            if not _MIN_RSA_BITS <= key.key_size <= _MAX_RSA_BITS:
                raise KeyFormatError(
                    f"{source}: a {key.key_size}-bit RSA key is not accepted; RSA keys must "
                    f"have {_MIN_RSA_BITS} to {_MAX_RSA_BITS} bits"
                )
            algorithm = "rsa"
        case ed25519.Ed25519PublicKey():
            algorithm = "ed25519"
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return VerificationKey(algorithm, hashlib.sha256(der).hexdigest(), key)


def _kind(key: object) -> str:
    name = type(key).__name__.removeprefix("_")
    for prefix, kind in (
        ("DSA", "DSA"),
        ("X25519", "X25519"),
        ("X448", "X448"),
        ("Ed448", "Ed448"),
    ):
        if name.startswith(prefix):
            return kind
    return name


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
