"""``wasmxds push FILE.wasm oci://REF``: package a module as an OCI image and push it.

What ``meshctl wasm build`` or a ``docker build`` of a ``FROM scratch`` image
did, without Docker: ``--layout artifact`` (the Wasm artifact, the default) or
``--layout compat`` (an image with ``plugin.wasm`` in a tar layer). The image
is reproducible, so pushing the same module twice gives the same digest.
``--sign KEY`` then signs the pushed manifest digest in cosign's format (the
``sha256-<digest>.sig`` tag), so ``cosign verify --key`` and a plugin's
``verificationKey`` accept it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from wasmxds.api.keys import PASSWORD_ENV, SigningKey, load_private_key
from wasmxds.api.moduleurl import with_scheme
from wasmxds.cli.oci import add_common_arguments, credentials_for, fetch_settings
from wasmxds.errors import KeyFormatError, ModuleError, SettingsError
from wasmxds.log import configure_logging
from wasmxds.modules.oci.client import RegistryClient
from wasmxds.modules.oci.push import PushLayout, build_image, push_image
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import docker_reference, push_signature, signature_tag
from wasmxds.modules.types import redact_url
from wasmxds.modules.unbox import is_wasm

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "push",
        help="package a .wasm file as an OCI image and push it to a registry",
        description=(
            "Package FILE.wasm as an OCI image in the chosen layout and push it to REF. Prints"
            " the pushed manifest digest; a WasmPlugin can pin it with sha256 or @sha256:."
        ),
    )
    parser.add_argument("file", type=Path, metavar="FILE.wasm")
    parser.add_argument("ref", metavar="oci://REF", help="oci://REGISTRY/REPO:TAG")
    parser.add_argument(
        "--layout",
        default=PushLayout.ARTIFACT.value,
        choices=[layout.value for layout in PushLayout],
        help="artifact: a Wasm artifact (two layers, as Istio reads it); compat: an image with"
        " plugin.wasm in a tar layer (default %(default)s)",
    )
    parser.add_argument(
        "--sign",
        type=Path,
        metavar="KEY",
        help="sign the pushed manifest with this PEM private key (ECDSA P-256, RSA or Ed25519;"
        f" if encrypted, the password comes from ${PASSWORD_ENV}), as `cosign sign --key`"
        " would",
    )
    add_common_arguments(parser)
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))
    parser.set_defaults(run=run)


async def _push(args: argparse.Namespace) -> tuple[str, str, SigningKey | None]:
    signing_key = _signing_key(args.sign) if args.sign is not None else None
    try:
        wasm = args.file.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{args.file}: {exc.strerror or exc}") from None
    if not is_wasm(wasm):
        raise SettingsError(f"{args.file}: not a Wasm module (no \\0asm header)")
    url = with_scheme(args.ref)
    ref = parse_reference(url)
    if ref.digest or "@" in args.ref:
        raise SettingsError(f"{redact_url(url)}: push to a tag, not a digest")
    image = build_image(wasm, PushLayout(args.layout), name=args.file.name)
    credentials = await credentials_for(args, ref)
    async with RegistryClient(settings=fetch_settings(args)) as client:
        repo = client.repository(ref, credentials, display_url=redact_url(url), push=True)
        digest = await push_image(repo, ref.tag, image)
        if signing_key is not None:
            await push_signature(repo, digest, signing_key, docker_reference(ref))
    return str(ref), digest, signing_key


def _signing_key(path: Path) -> SigningKey:
    # Read before anything is pushed: a bad key must not leave an unsigned image behind.
    try:
        return load_private_key(path)
    except KeyFormatError as exc:
        raise SettingsError(f"--sign {exc}") from None


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        reference, digest, signing_key = asyncio.run(_push(args))
    except SettingsError as exc:
        print(f"wasmxds push: {exc}", file=sys.stderr)
        return 2
    except ModuleError as exc:
        print(f"wasmxds push: {exc}", file=sys.stderr)
        return 1
    print(f"pushed:   oci://{reference}@sha256:{digest}")
    print(f"digest:   sha256:{digest}")
    print(f"layout:   {args.layout}")
    if signing_key is not None:
        print(f"signed:   {signature_tag(digest)} by {signing_key}")
    return 0
