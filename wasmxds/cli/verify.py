"""``wasmxds verify oci://REF --key PUB``: check an image's cosign signature.

The check ``wasmxds serve`` makes for a plugin with ``verificationKey`` (or
with ``--verification-key``): the reference is resolved to the digest it names
now, and that digest must have a cosign signature (tag ``sha256-<hex>.sig``)
by one of the keys whose payload names the same digest. Exits 0 when it does,
1 with the reason when it does not, 2 for a bad key or flag.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from wasmxds.api.keys import VerificationKey, parse_verification_key
from wasmxds.api.moduleurl import module_scheme, with_scheme
from wasmxds.cli.oci import add_common_arguments, credentials_for, fetch_settings
from wasmxds.errors import KeyFormatError, ModuleError, SettingsError, SignatureInvalidError
from wasmxds.log import configure_logging
from wasmxds.modules.oci.client import RegistryClient
from wasmxds.modules.oci.manifest import ACCEPT, ImageIndex, choose_manifest, parse_manifest
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import (
    KeyVerifier,
    VerifiedSignature,
    Verifier,
    signature_tag,
)
from wasmxds.modules.types import redact_url

__all__ = ["register", "run"]

# A PEM public key is a few hundred bytes; a bigger file is not one.
_MAX_KEY_FILE = 64 * 1024


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "verify",
        help="check that an OCI module has a cosign signature by a trusted key",
        description=(
            "Resolve oci://REF to its manifest digest and check for a cosign signature"
            " (tag sha256-<digest>.sig) made by one of the --key public keys whose payload"
            " names that digest: what `wasmxds serve` checks for a plugin with"
            " verificationKey. Exits 0 when signed, 1 (with the reason) when not."
        ),
    )
    parser.add_argument("ref", metavar="oci://REF", help="oci://REGISTRY/REPO[:TAG][@sha256:HEX]")
    parser.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        metavar="PUB",
        help="a trusted PEM public key (ECDSA P-256, RSA or Ed25519, e.g. cosign.pub);"
        " repeatable: a signature by any of them is enough",
    )
    add_common_arguments(parser)
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))
    parser.set_defaults(run=run)


def _read_key(path: Path) -> VerificationKey:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SettingsError(f"--key {path}: {exc.strerror or exc}") from None
    try:
        return parse_verification_key(data.decode("utf-8", "replace"), source=f"--key {path}")
    except KeyFormatError as exc:
        raise SettingsError(str(exc)) from None


async def _verify(args: argparse.Namespace) -> tuple[str, VerifiedSignature]:
    keys = tuple(_read_key(path) for path in args.key)
    url = with_scheme(args.ref)
    if module_scheme(url) != "oci":
        raise SettingsError(f"{redact_url(args.ref)}: only oci:// references can be verified")
    ref = parse_reference(url)
    display_url = redact_url(url)
    credentials = await credentials_for(args, ref)
    async with RegistryClient(settings=fetch_settings(args)) as client:
        repo = client.repository(ref, credentials, display_url=display_url)
        verifier: Verifier = KeyVerifier(keys)
        # cosign signs the digest the reference resolves to; for an image index, serve also
        # accepts a signature on the platform manifest it picks, and so does this check.
        top = await repo.manifest(ref.identifier, ACCEPT)
        try:
            verified = await verifier.verify(repo, top.digest, display_url=display_url)
        except SignatureInvalidError as unsigned:
            parsed = parse_manifest(top.data, top.content_type)
            if not isinstance(parsed, ImageIndex):
                raise
            chosen = choose_manifest(parsed).digest
            try:
                verified = await verifier.verify(repo, chosen, display_url=display_url)
            except SignatureInvalidError:
                raise unsigned from None  # the index's own reason: what cosign would sign
    return display_url, verified


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        display_url, verified = asyncio.run(_verify(args))
    except SettingsError as exc:
        print(f"wasmxds verify: {exc}", file=sys.stderr)
        return 2
    except ModuleError as exc:
        print(f"wasmxds verify: {exc}", file=sys.stderr)
        return 1
    print(
        f"verified {display_url} (sha256:{verified.manifest_digest}):"
        f" signed by {verified.key.algorithm} key SHA256:{verified.fingerprint}"
    )
    print(
        f"signature: layer sha256:{verified.layer_digest} of"
        f" {signature_tag(verified.manifest_digest)}"
    )
    return 0
