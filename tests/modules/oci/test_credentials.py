"""Who may name a credential helper: the server's docker config (when allowed), never a Secret."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.modules.oci.helperscripts import HelperScripts, path_with
from wasmxds.api.dockerconfig import parse_docker_config
from wasmxds.api.objects import ObjectKey, Origin
from wasmxds.api.secrets import PullSecret
from wasmxds.errors import CredentialHelperError
from wasmxds.modules.oci import credentials as creds
from wasmxds.modules.oci.credhelper import CredentialHelpers
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.secrets import PullSecrets

SECRET = "helper-S3cret-value"
REF = parse_reference("oci://reg.example:5000/team/filter:v1")
HUB = parse_reference("oci://docker.io/library/filter:v1")


@pytest.fixture
def scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperScripts:
    found = HelperScripts(tmp_path / "bin")
    monkeypatch.setenv("PATH", path_with(found.path_entry))
    return found


def write_config(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def basic(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_allowed_helper_answers_for_its_registry(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """credHelpers' helper runs when allowed; the credentials name it as their source."""
    scripts.answering("vault", "robot", SECRET)
    path = write_config(tmp_path, {"credHelpers": {"reg.example:5000": "vault"}})
    found = await creds.from_docker_config(path, REF, CredentialHelpers({"vault"}))
    assert found.value is not None
    assert found.value.password == SECRET
    assert "credential helper docker-credential-vault" in found.source
    assert SECRET not in repr(found)
    assert scripts.calls("vault") == ["reg.example:5000"]


async def test_docker_hub_helper_is_asked_for_dockers_server_url(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """For Docker Hub, credsStore is asked for https://index.docker.io/v1/ as Docker asks."""
    scripts.answering("desktop", "hubuser", SECRET)
    path = write_config(tmp_path, {"credsStore": "desktop"})
    found = await creds.from_docker_config(path, HUB, CredentialHelpers({"*"}))
    assert found.value is not None
    assert scripts.calls("desktop") == ["https://index.docker.io/v1/"]


async def test_helper_without_the_flag_is_not_run_and_the_error_names_the_flag(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """Not allowed: no run; the source says which --credential-helpers value would run it."""
    scripts.answering("vault", "robot", SECRET)
    path = write_config(tmp_path, {"credHelpers": {"reg.example:5000": "vault"}})
    for helpers in (None, CredentialHelpers(), CredentialHelpers({"other"})):
        found = await creds.from_docker_config(path, REF, helpers)
        assert found.value is None
        assert "--credential-helpers vault" in found.source
    assert scripts.calls("vault") == []


async def test_not_allowed_helper_leaves_the_configs_own_entry_in_use(tmp_path: Path) -> None:
    """With the helper not allowed, an auths entry for the registry is used as before."""
    path = write_config(
        tmp_path,
        {"auths": {"reg.example:5000": basic("u", "p")}, "credsStore": "desktop"},
    )
    found = await creds.from_docker_config(path, REF, CredentialHelpers())
    assert found.value is not None
    assert found.value.username == "u"


async def test_helper_with_nothing_falls_back_to_the_auths_entry(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """As in Docker, a helper's "not found" leaves what the config file holds (or nothing)."""
    scripts.not_found("empty")
    path = write_config(
        tmp_path,
        {"auths": {"reg.example:5000": basic("file", "pw")}, "credsStore": "empty"},
    )
    found = await creds.from_docker_config(path, REF, CredentialHelpers({"empty"}))
    assert found.value is not None
    assert found.value.username == "file"
    assert "has no credentials for reg.example:5000" in found.source


async def test_empty_cred_helpers_entry_overrides_the_store(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """credHelpers with an empty name means "no helper" for that registry, as in Docker."""
    scripts.answering("desktop", "robot", SECRET)
    path = write_config(
        tmp_path, {"credsStore": "desktop", "credHelpers": {"reg.example:5000": ""}}
    )
    found = await creds.from_docker_config(path, REF, CredentialHelpers({"*"}))
    assert found.value is None
    assert scripts.calls("desktop") == []


async def test_pathlike_helper_name_in_the_config_is_refused(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """A helper name that could be a path is refused with a sentence, even under '*'."""
    path = write_config(tmp_path, {"credHelpers": {"reg.example:5000": "../../bin/sh"}})
    with pytest.raises(CredentialHelperError, match="not a helper name") as caught:
        await creds.from_docker_config(path, REF, CredentialHelpers({"*"}))
    assert not caught.value.retryable


async def test_refusal_by_the_registry_drops_the_kept_answer(
    scripts: HelperScripts, tmp_path: Path
) -> None:
    """The credentials' refused() hook makes the next lookup ask the helper again."""
    scripts.answering("vault", "robot", SECRET)
    path = write_config(tmp_path, {"credHelpers": {"reg.example:5000": "vault"}})
    helpers = CredentialHelpers({"vault"})
    found = await creds.from_docker_config(path, REF, helpers)
    await creds.from_docker_config(path, REF, helpers)
    assert len(scripts.calls("vault")) == 1
    assert found.refused is not None
    found.refused()
    await creds.from_docker_config(path, REF, helpers)
    assert len(scripts.calls("vault")) == 2


def secret_with(document: dict[str, Any]) -> PullSecrets:
    key = ObjectKey("team", "regcred")
    config = parse_docker_config(json.dumps(document))
    return PullSecrets({key: PullSecret(key, Origin("team/secret.yaml", 1), config, "fp")})


@pytest.mark.parametrize(
    "document",
    [
        {"credHelpers": {"reg.example:5000": "vault"}},
        {"auths": {"reg.example:5000": {}}, "credsStore": "vault"},
    ],
)
def test_helper_named_in_a_pull_secret_is_never_run(
    scripts: HelperScripts, document: dict[str, Any]
) -> None:
    """A Secret that keeps the registry's credentials in a helper is refused, saying why."""
    scripts.answering("vault", "robot", SECRET)
    secrets = secret_with(document)
    with pytest.raises(CredentialHelperError, match="never runs a helper named in a Secret") as e:
        creds.from_pull_secret(secrets, ObjectKey("team", "regcred"), REF, "oci://x")
    assert "pull secret team/regcred" in str(e.value)
    assert not e.value.retryable
    assert scripts.calls("vault") == []


def test_pull_secret_store_without_a_login_for_the_registry_is_anonymous() -> None:
    """A Secret's credsStore says nothing about registries it has no entry for: anonymous."""
    secrets = secret_with({"auths": {"other.example": {}}, "credsStore": "desktop"})
    found = creds.from_pull_secret(secrets, ObjectKey("team", "regcred"), REF, "oci://x")
    assert found.value is None
    assert found.source == "pull secret team/regcred"


def test_pull_secret_auths_entry_wins_over_its_helper() -> None:
    """A Secret with real credentials for the registry uses them; its helper is ignored."""
    secrets = secret_with(
        {"auths": {"reg.example:5000": basic("u", "p")}, "credHelpers": {"reg.example:5000": "x"}}
    )
    found = creds.from_pull_secret(secrets, ObjectKey("team", "regcred"), REF, "oci://x")
    assert found.value is not None
    assert found.value.username == "u"
