"""Where registry credentials come from: the plugin's pull secret, or the default docker config.

With ``imagePullSecret`` set, only that Secret is used (a registry it has no
entry for is pulled anonymously, as in Istio). Without one, the docker config
of the user running wasmxds is read (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``), like Istio's default keychain. Credential helpers
(``credsStore``/``credHelpers``) are not run: that would execute programs named
by a config file; the auth error says so when a helper was the only source.
"""

from __future__ import annotations

import os
from pathlib import Path

from wasmxds.api.dockerconfig import DockerConfig, DockerConfigError, parse_docker_config
from wasmxds.api.objects import ObjectKey
from wasmxds.errors import FetchError, MissingPullSecretError
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.reference import Reference
from wasmxds.modules.secrets import PullSecrets

__all__ = ["default_docker_config_path", "from_docker_config", "from_pull_secret", "load_file"]


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
    return Credentials(secret.config.lookup(ref.auth_key), f"pull secret {key}")


def from_docker_config(path: Path, ref: Reference) -> Credentials:
    config = load_file(path)
    if config is None:
        return Credentials(None, f"no pull secret and no docker config at {path}")
    found = config.lookup(ref.auth_key)
    if found is None and config.uses_helper(ref.auth_key):
        return Credentials(
            None,
            f"docker config {path} (it delegates {ref.auth_key} to a credential helper, which"
            " wasmxds does not run; use an imagePullSecret)",
        )
    return Credentials(found, f"docker config {path}")
