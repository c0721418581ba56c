"""What ``wasmxds pull`` and ``wasmxds push`` share: registry flags and credentials."""

from __future__ import annotations

import argparse
from pathlib import Path

from wasmxds.api.dockerconfig import DockerConfig, DockerConfigError, parse_docker_config
from wasmxds.api.parse import parse_bytes
from wasmxds.errors import SettingsError
from wasmxds.modules.oci import credentials as creds
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import DEFAULT_OCI_SETTINGS
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.settings import FetcherSettings
from wasmxds.settings import parse_size

__all__ = ["add_common_arguments", "credentials_for", "fetch_settings"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret",
        type=Path,
        metavar="FILE",
        help="credentials: a kubernetes.io/dockerconfigjson Secret (YAML) or a docker"
        " config.json (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP or unverified TLS; '*' for all (repeatable)",
    )
    parser.add_argument(
        "--registry-ca",
        type=Path,
        metavar="FILE",
        help="trust these CA certificates (PEM) besides the system's",
    )
    parser.add_argument(
        "--max-module-size",
        default="256MiB",
        metavar="SIZE",
        help="refuse modules larger than this (default %(default)s)",
    )


def fetch_settings(args: argparse.Namespace) -> FetcherSettings:
    if args.registry_ca is not None and not args.registry_ca.is_file():
        raise SettingsError(f"--registry-ca {args.registry_ca}: no such file")
    return FetcherSettings(
        tries=DEFAULT_OCI_SETTINGS.tries,
        max_size=parse_size(args.max_module_size),
        insecure_hosts=frozenset(args.insecure_registry),
        ca_file=args.registry_ca,
    )


def credentials_for(args: argparse.Namespace, ref: Reference) -> Credentials:
    """Credentials for ``ref`` from ``--secret``, else from the default docker config."""
    if args.secret is None:
        return creds.from_docker_config(creds.default_docker_config_path(), ref)
    config = _read_secret_file(args.secret)
    return Credentials(config.lookup(ref.auth_key), f"--secret {args.secret}")


def _read_secret_file(path: Path) -> DockerConfig:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"--secret {path}: {exc.strerror or exc}") from None
    if data.lstrip().startswith(b"{"):
        try:
            return parse_docker_config(data)
        except DockerConfigError as exc:
            raise SettingsError(f"--secret {path}: not a docker config: {exc}") from None
    parsed = parse_bytes(data, str(path))
    errors = [str(problem) for problem in parsed.problems if problem.is_error]
    if errors:
        raise SettingsError("; ".join(errors))
    if not parsed.secrets:
        raise SettingsError(
            f"--secret {path}: no kubernetes.io/dockerconfigjson Secret and not a docker config"
        )
    return parsed.secrets[0].config
