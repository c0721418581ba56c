"""What ``wasmxds pull``, ``push`` and ``verify`` share: registry flags and credentials.

Credentials come from ``--secret FILE`` or the user's docker config. A docker
config (either way) is the user's own, so its credential helpers run when
``--credential-helpers`` allows them, exactly as under ``wasmxds serve``; a
Kubernetes Secret given with ``--secret`` is treated as a plugin's pull secret
is (its helpers never run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from wasmxds.api.dockerconfig import DockerConfig, DockerConfigError, parse_docker_config
from wasmxds.api.parse import parse_bytes
from wasmxds.errors import SettingsError
from wasmxds.flags import add_flags, values
from wasmxds.modules.oci import credentials as creds
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.credhelper import CredentialHelpers
from wasmxds.modules.oci.fetcher import DEFAULT_OCI_SETTINGS
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.settings import FetcherSettings
from wasmxds.settings import CREDENTIAL_HELPERS, parse_size

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
    add_flags(parser, (CREDENTIAL_HELPERS,))
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
        credential_helpers=_allowed_helpers(args),
    )


def _allowed_helpers(args: argparse.Namespace) -> frozenset[str]:
    allowed: frozenset[str] = values(args, (CREDENTIAL_HELPERS,))[CREDENTIAL_HELPERS.field]
    return allowed


async def credentials_for(args: argparse.Namespace, ref: Reference) -> Credentials:
    """Credentials for ``ref`` from ``--secret``, else from the default docker config."""
    helpers = CredentialHelpers(_allowed_helpers(args))
    if args.secret is None:
        return await creds.from_docker_config(creds.default_docker_config_path(), ref, helpers)
    source = f"--secret {args.secret}"
    config, own = await asyncio.to_thread(_read_secret_file, args.secret)
    if own:
        return await creds.from_own_config(config, ref, source, helpers)
    return creds.from_secret_config(config, ref, source)


def _is_kubernetes_object(data: bytes) -> bool:
    """Whether JSON ``data`` is a Kubernetes object (``kubectl get secret -o json``), which
    must be read as a pull Secret: its helpers are never run, as for any Secret."""
    try:
        document = json.loads(data)
    except ValueError:
        return False  # not JSON after all: the docker config parser says what is wrong
    return isinstance(document, dict) and ("kind" in document or "apiVersion" in document)


def _read_secret_file(path: Path) -> tuple[DockerConfig, bool]:
    """The config in ``path``, and whether it is a docker config.json (the user's own)
    rather than a Kubernetes Secret."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"--secret {path}: {exc.strerror or exc}") from None
    if data.lstrip().startswith(b"{") and not _is_kubernetes_object(data):
        try:
            return parse_docker_config(data), True
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
    return parsed.secrets[0].config, False
