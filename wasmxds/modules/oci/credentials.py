"""Where registry credentials come from: the plugin's pull secret, or the default docker config.

With ``imagePullSecret`` set, only that Secret is used (a registry it has no
entry for is pulled anonymously, as in Istio). Without one, the docker config
of the user running wasmxds is read (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), like Istio's default keychain.

Credential helpers (``credHelpers``/``credsStore``) run programs, so who may
name one matters:

- the server's own docker config (and the one a CLI command reads) may, and
  the helper runs as Docker would run it
  (:mod:`~wasmxds.modules.oci.credhelper`) when ``--credential-helpers``
  allows its name; otherwise the config's own ``auths`` entry is used and the
  auth error says which flag would run the helper;
- a pull Secret never may: whoever writes a Secret would choose a program for
  the server to run. A Secret that keeps a registry's credentials in a helper
  is refused for that registry with a sentence saying so.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

from wasmxds.api.dockerconfig import (
    DockerConfig,
    DockerConfigError,
    helper_server_url,
    parse_docker_config,
    valid_helper_name,
)
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import CredentialHelperError, FetchError, MissingPullSecretError
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.credhelper import CredentialHelpers, program_name
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.secrets import PullSecrets

__all__ = [
    "default_docker_config_path",
    "from_docker_config",
    "from_own_config",
    "from_pull_secret",
    "from_secret_config",
    "load_file",
]


def default_docker_config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    base = Path(directory) if directory else Path.home() / ".docker"
    return base / "config.json"


def load_file(path: Path) -> DockerConfig | None:
    """Read a docker config file; None when it does not exist. Errors name the file only."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FetchError(f"cannot read docker config {path}: {exc.strerror or exc}") from None
    try:
        return parse_docker_config(data)
    except DockerConfigError as exc:
        raise FetchError(f"docker config {path} is unusable: {exc}", retryable=False) from None


def from_pull_secret(
    secrets: PullSecrets | None, key: ObjectKey, ref: Reference, display_url: str
) -> Credentials:
    secret = None if secrets is None else secrets.get(key)
    if secret is None:
        raise MissingPullSecretError(f"image pull secret {key} not found", url=display_url)
    return from_secret_config(secret.config, ref, f"pull secret {key}", display_url)


def from_secret_config(
    config: DockerConfig, ref: Reference, source: str, display_url: str = ""
) -> Credentials:
    """Credentials from a config someone else wrote (a Secret): helpers are never run."""
    found = config.lookup(ref.auth_key)
    helper = None if found is not None else config.holder_of(ref.auth_key)
    if helper is not None:
        raise CredentialHelperError(
            f"{source} keeps the credentials for {ref.auth_key} in credential helper"
            f" {_shown(helper)} (credHelpers/credsStore); wasmxds never runs a helper named"
            " in a Secret, because whoever writes the Secret would choose a program for the"
            " server to run. Put the credentials in the Secret's auths entry, or leave out"
            " imagePullSecret to use the server's docker config",
            url=display_url,
            retryable=False,
        )
    return Credentials(found, source)


async def from_docker_config(
    path: Path, ref: Reference, helpers: CredentialHelpers | None = None
) -> Credentials:
    """Credentials from the docker config file of the user running wasmxds."""
    config = await asyncio.to_thread(load_file, path)
    if config is None:
        return Credentials(None, f"no pull secret and no docker config at {path}")
    return await from_own_config(config, ref, f"docker config {path}", helpers)


async def from_own_config(
    config: DockerConfig, ref: Reference, source: str, helpers: CredentialHelpers | None
) -> Credentials:
    """Credentials from the operator's own config: its helper runs when ``helpers`` allows it.

    As Docker does, a registry with a helper gets the helper's answer; when the
    helper has nothing for it, the config's own ``auths`` entry (if any).
    """
    found = config.lookup(ref.auth_key)
    helper = config.helper_for(ref.auth_key)
    if helper is None:
        return Credentials(found, source)
    if not valid_helper_name(helper):
        raise CredentialHelperError(
            f"{source} names credential helper {_shown(helper)} for {ref.auth_key}, which is"
            " not a helper name (letters, digits, '.', '_' and '-' only; it becomes"
            " docker-credential-<name> on PATH)",
            retryable=False,
        )
    if helpers is None or not helpers.allows(helper):
        if found is not None:
            return Credentials(found, source)
        return Credentials(
            None,
            f"{source} (it delegates {ref.auth_key} to credential helper"
            f" {program_name(helper)}, which wasmxds runs only when allowed with"
            f" --credential-helpers {helper})",
        )
    server_url = helper_server_url(ref.auth_key)
    answer = await helpers.get(helper, server_url)
    refused = functools.partial(helpers.forget, helper, server_url)
    if answer is None:
        return Credentials(
            found,
            f"{source} (credential helper {program_name(helper)} has no credentials for"
            f" {ref.auth_key})",
            refused=refused,
        )
    return Credentials(
        answer, f"credential helper {program_name(helper)} (from {source})", refused=refused
    )


def _shown(name: str) -> str:
    """A helper name as a message may show it: quoted, and short (it is untrusted text)."""
    return repr(name[:64] + ("…" if len(name) > 64 else ""))
