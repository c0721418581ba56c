"""Registry and cache flags of ``wasmxds serve`` (kept here to keep serve.py about serving)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wasmxds.errors import SettingsError
from wasmxds.settings import parse_duration, parse_size

__all__ = ["add_registry_arguments", "registry_settings"]


def add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "OCI registries and the module cache",
        "Modules from oci:// URLs (and URLs without a scheme) are pulled by wasmxds; the"
        " cache index survives restarts.",
    )
    group.add_argument(
        "--registry-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="trust these CA certificates (PEM) for registries and module hosts, besides the"
        " system's",
    )
    group.add_argument(
        "--repull-interval",
        default=None,
        metavar="DUR",
        help="re-check the tags of imagePullPolicy Always modules this often (default: off)",
    )
    group.add_argument(
        "--module-expiry",
        default="24h",
        metavar="DUR",
        help="delete cached modules unused for this long (default %(default)s)",
    )
    group.add_argument(
        "--cache-max-bytes",
        default=None,
        metavar="SIZE",
        help="evict least recently used modules beyond this cache size (default: unlimited)",
    )
    group.add_argument(
        "--max-parallel-pulls",
        type=int,
        default=4,
        metavar="N",
        help="module downloads running at once (default %(default)s)",
    )


def registry_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~wasmxds.settings.ServeSettings` fields these flags set."""
    if args.registry_ca is not None and not args.registry_ca.is_file():
        raise SettingsError(f"--registry-ca {args.registry_ca}: no such file")
    if args.max_parallel_pulls < 1:
        raise SettingsError(
            f"--max-parallel-pulls must be at least 1, got {args.max_parallel_pulls}"
        )
    repull = parse_duration(args.repull_interval) if args.repull_interval else None
    if repull is not None and repull <= 0:
        raise SettingsError("--repull-interval must be positive")
    expiry = parse_duration(args.module_expiry)
    if expiry <= 0:
        raise SettingsError("--module-expiry must be positive")
    max_bytes = parse_size(args.cache_max_bytes) if args.cache_max_bytes else None
    return {
        "registry_ca": args.registry_ca.absolute() if args.registry_ca is not None else None,
        "repull_interval": repull,
        "module_expiry": expiry,
        "cache_max_bytes": max_bytes,
        "max_parallel_pulls": args.max_parallel_pulls,
    }
