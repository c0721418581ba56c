"""Image pull secrets in config files: kubernetes.io/dockerconfigjson parsed, never shown."""

from __future__ import annotations

import base64
import json
import textwrap

import pytest

from wasmxds.api.dockerconfig import DockerConfigError, normalize_registry, parse_docker_config
from wasmxds.api.objects import ObjectKey
from wasmxds.api.parse import parse_text

PASSWORD = "Sup3r-s3cret"
CONFIG = json.dumps(
    {
        "auths": {
            "registry.example:5000": {"auth": base64.b64encode(f"me:{PASSWORD}".encode()).decode()}
        }
    }
)


def secret_yaml(
    *,
    data: str | None = None,
    string_data: str | None = None,
    kind: str = "kubernetes.io/dockerconfigjson",
    name: str = "regcred",
) -> str:
    body = (
        "apiVersion: v1\nkind: Secret\n"
        f"metadata:\n  name: {name}\n  namespace: team\ntype: {kind}\n"
    )
    if data is not None:
        body += f"data:\n  .dockerconfigjson: {data}\n"
    if string_data is not None:
        body += (
            "stringData:\n  .dockerconfigjson: |\n" + textwrap.indent(string_data, "    ") + "\n"
        )
    return body


def test_base64_data_and_plain_string_data() -> None:
    """Both forms parse to the same credentials, looked up by registry host."""
    encoded = base64.b64encode(CONFIG.encode()).decode()
    for text in (secret_yaml(data=encoded), secret_yaml(string_data=CONFIG)):
        parsed = parse_text(text, "s.yaml")
        assert parsed.problems == ()
        (secret,) = parsed.secrets
        assert secret.key == ObjectKey("team", "regcred")
        creds = secret.config.lookup("registry.example:5000")
        assert creds is not None
        assert (creds.username, creds.password) == ("me", PASSWORD)


def test_other_secret_types_are_skipped_quietly() -> None:
    """An Opaque Secret (or a TLS one) is not ours: no secret, no problem."""
    parsed = parse_text(secret_yaml(kind="Opaque", data="eA=="), "s.yaml")
    assert (parsed.secrets, parsed.problems) == ((), ())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (secret_yaml(data="not%base64"), "not valid base64"),
        (secret_yaml(string_data="{not json"), "not a Docker config: not valid JSON"),
        (secret_yaml(), "required: key .dockerconfigjson"),
        (secret_yaml(string_data='{"auths": []}'), "'auths' must be an object"),
        (secret_yaml(string_data="null"), "must be a JSON object"),
    ],
)
def test_broken_secrets_are_problems_without_content(text: str, message: str) -> None:
    """A broken pull secret is an error naming the field; its content never appears."""
    parsed = parse_text(text, "s.yaml")
    assert parsed.secrets == ()
    assert parsed.invalid_secrets == (ObjectKey("team", "regcred"),)
    (problem,) = parsed.problems
    assert message in problem.message
    assert problem.path == "s.yaml"


def test_repr_and_problems_never_show_credentials() -> None:
    """repr() of a parsed secret and its config shows names, never passwords."""
    (secret,) = parse_text(secret_yaml(string_data=CONFIG), "s.yaml").secrets
    for text in (repr(secret), str(secret), repr(secret.config)):
        assert PASSWORD not in text
        assert "auth" not in text.lower() or "registry.example" in text
    bad = parse_text(secret_yaml(string_data=CONFIG.replace("auth", "auth\u00ff")[:-3]), "s.yaml")
    assert all(PASSWORD not in str(problem) for problem in bad.problems)


def test_duplicate_secret_in_a_file_keeps_the_first() -> None:
    """The same Secret twice in one file: the first wins and the second is reported."""
    text = secret_yaml(string_data=CONFIG) + "---\n" + secret_yaml(string_data=CONFIG)
    parsed = parse_text(text, "s.yaml")
    assert len(parsed.secrets) == 1
    assert "duplicate Secret team/regcred" in parsed.problems[0].message


def test_secret_and_plugin_may_share_a_name() -> None:
    """A WasmPlugin and a Secret with the same namespace/name are different objects."""
    plugin = (
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
        "metadata:\n  name: regcred\n  namespace: team\nspec:\n  url: oci://r.io/f:v1\n"
    )
    parsed = parse_text(plugin + "---\n" + secret_yaml(string_data=CONFIG), "s.yaml")
    assert len(parsed.plugins) == 1
    assert len(parsed.secrets) == 1
    assert parsed.problems == ()


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("docker.io", "index.docker.io"),
        ("registry-1.docker.io", "index.docker.io"),
        ("http://Registry.Example:5000/v2/", "registry.example:5000"),
        ("ghcr.io", "ghcr.io"),
    ],
)
def test_registry_keys_normalize_like_docker(key: str, normalized: str) -> None:
    """Config keys match the registry however `docker login` wrote them."""
    assert normalize_registry(key) == normalized


def test_docker_config_fields() -> None:
    """username/password, identitytoken and registrytoken are read; auth wins over username."""
    config = parse_docker_config(
        json.dumps(
            {
                "auths": {
                    "a.io": {"username": "u", "password": "p"},
                    "b.io": {"identitytoken": "refresh"},
                    "c.io": {"registrytoken": "bearer"},
                    "d.io": {"auth": base64.b64encode(b"x:y").decode(), "username": "ignored"},
                    "e.io": {},
                },
                "credHelpers": {"f.io": "ecr-login"},
            }
        )
    )
    assert config.lookup("a.io") is not None
    assert config.lookup("b.io").identity_token == "refresh"  # type: ignore[union-attr]
    assert config.lookup("c.io").registry_token == "bearer"  # type: ignore[union-attr]
    assert config.lookup("d.io").username == "x"  # type: ignore[union-attr]
    assert config.lookup("e.io") is None
    assert config.helper_for("f.io") == "ecr-login"
    with pytest.raises(DockerConfigError, match=r"auths\['x'\]\.auth"):
        parse_docker_config('{"auths": {"x": {"auth": "bm9jb2xvbg=="}}}')
