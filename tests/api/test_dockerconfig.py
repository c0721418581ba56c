"""Reading credHelpers/credsStore from a docker config: which helper Docker would ask."""

from __future__ import annotations

import json

import pytest

from wasmxds.api.dockerconfig import (
    DockerConfigError,
    helper_server_url,
    parse_docker_config,
    valid_helper_name,
)


def test_helper_for_follows_dockers_choice() -> None:
    """credHelpers[host] wins, an empty entry means none, credsStore covers the rest."""
    config = parse_docker_config(
        json.dumps(
            {
                "credsStore": "desktop",
                "credHelpers": {
                    "https://123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login",
                    "plain.example": "",
                },
            }
        )
    )
    assert config.helper_for("123.dkr.ecr.us-east-1.amazonaws.com") == "ecr-login"
    assert config.helper_for("plain.example") is None
    assert config.helper_for("gcr.io") == "desktop"
    assert parse_docker_config("{}").helper_for("gcr.io") is None


def test_holder_of_needs_evidence_of_a_login() -> None:
    """A store holds a registry's credentials only where docker login left its empty entry."""
    config = parse_docker_config(
        json.dumps(
            {
                "auths": {"logged.example": {}, "inline.example": {"username": "u"}},
                "credsStore": "desktop",
                "credHelpers": {"ecr.example": "ecr-login"},
            }
        )
    )
    assert config.holder_of("logged.example") == "desktop"
    assert config.holder_of("ecr.example") == "ecr-login"
    assert config.holder_of("inline.example") is None
    assert config.holder_of("never.example") is None


def test_server_url_is_what_docker_hands_the_helper() -> None:
    """Docker Hub's aliases become https://index.docker.io/v1/; other hosts stay host[:port]."""
    for alias in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert helper_server_url(alias) == "https://index.docker.io/v1/"
    assert helper_server_url("Reg.Example:5000") == "reg.example:5000"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"credHelpers": ["ecr-login"]}, "'credHelpers'"),
        ({"credHelpers": {"x.io": 1}}, r"credHelpers\['x.io'\]"),
        ({"credsStore": {"name": "desktop"}}, "'credsStore'"),
    ],
)
def test_malformed_helper_fields_are_refused_naming_the_field(
    document: dict[str, object], field: str
) -> None:
    """Helper fields of the wrong type are refused as Docker refuses them, naming the field."""
    with pytest.raises(DockerConfigError, match=field):
        parse_docker_config(json.dumps(document))


def test_helper_names_are_plain_words() -> None:
    """Only names that cannot be read as a path or an option are helper names."""
    for name in ("ecr-login", "gcloud", "acr-env", "desktop", "pass", "secretservice", "a.b_c"):
        assert valid_helper_name(name), name
    for name in ("", "../x", "a/b", "-x", ".hidden", "a b", "x\n", "é", "x" * 65):
        assert not valid_helper_name(name), name
