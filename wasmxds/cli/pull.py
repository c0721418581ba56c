"""``wasmxds pull URL``: fetch a module into the cache and say what it is.

A way to check a reference, its credentials and its layout before deploying a
WasmPlugin that uses it: the pull is the one ``wasmxds serve`` would make
(same client, same layouts, same checks), and the module lands in the same
cache and index, so a server started on that cache directory has it already.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from wasmxds.api.moduleurl import module_scheme, with_scheme
from wasmxds.cli.oci import add_common_arguments, credentials_for, fetch_settings
from wasmxds.errors import ModuleError, SettingsError
from wasmxds.log import configure_logging
from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Fetched, redact_url
from wasmxds.settings import default_cache_dir

__all__ = ["register", "run"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "pull",
        help="fetch an OCI module into the cache and print its digest, size and layout",
        description=(
            "Pull a Wasm module from an OCI registry exactly as `wasmxds serve` would, store it"
            " in the cache, and print its digest, size, layout and manifest digest. Exits"
            " non-zero with the error when the pull fails."
        ),
    )
    parser.add_argument("url", metavar="URL", help="oci://REGISTRY/REPO[:TAG][@sha256:DIGEST]")
    parser.add_argument(
        "--sha256",
        default="",
        metavar="HEX",
        help="expected digest: the image manifest's or the module's",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="module cache to pull into (default %(default)s)",
    )
    add_common_arguments(parser)
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning"))
    parser.set_defaults(run=run)


def _url(text: str) -> str:
    url = with_scheme(text)
    if module_scheme(url) != "oci":
        raise SettingsError(f"{redact_url(text)}: only oci:// references can be pulled")
    return url


async def _pull(args: argparse.Namespace) -> Fetched:
    url = _url(args.url)
    ref = parse_reference(url)
    store = ModuleStore(args.cache_dir.absolute())
    index = await asyncio.to_thread(ModuleIndex.load, store.root / INDEX_FILE)
    credentials = await credentials_for(args, ref)
    fetcher = OciFetcher(store=store, index=index, settings=fetch_settings(args))
    try:
        fetched = await fetcher.pull(
            ref, credentials, sha256=args.sha256, display_url=redact_url(url)
        )
    finally:
        await fetcher.aclose()
    index.record(
        url,
        args.sha256,
        fetched.module.digest,
        fetched.module.size,
        manifest=fetched.manifest_digest,
        layout=fetched.layout,
    )
    await index.flush()
    return fetched


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        fetched = asyncio.run(_pull(args))
    except SettingsError as exc:
        print(f"wasmxds pull: {exc}", file=sys.stderr)
        return 2
    except ModuleError as exc:
        print(f"wasmxds pull: {exc}", file=sys.stderr)
        return 1
    module = fetched.module
    print(f"digest:   sha256:{module.digest}")
    print(f"size:     {module.size}")
    print(f"layout:   {fetched.layout}")
    print(f"manifest: sha256:{fetched.manifest_digest}")
    if fetched.index_digest:
        print(f"index:    sha256:{fetched.index_digest}")
    print(f"path:     {module.path}")
    return 0
