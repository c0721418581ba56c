"""WWW-Authenticate parsing and the token-realm SSRF rules (Istio's, plus the registry's host)."""

from __future__ import annotations

import pytest

from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import BlockedRealmError, RegistryAuthError
from wasmxds.modules.oci.auth import basic_header, check_realm, parse_challenges, parse_token


def test_parses_bearer_and_basic_challenges() -> None:
    """Quoted parameters (with commas and escapes) and several schemes are all read."""
    found = parse_challenges(
        [
            'Bearer realm="https://auth.example/token",service="registry.example",'
            'scope="repository:a/b:pull,push"',
            'Basic realm="say \\"hi\\""',
        ]
    )
    assert [c.scheme for c in found] == ["bearer", "basic"]
    assert found[0].realm == "https://auth.example/token"
    assert found[0].params["scope"] == "repository:a/b:pull,push"
    assert found[1].realm == 'say "hi"'


def test_two_challenges_in_one_header() -> None:
    """Two schemes in one header value are two challenges."""
    found = parse_challenges(['Basic realm="r", Bearer realm="https://t.example/",service=s'])
    assert [(c.scheme, c.realm) for c in found] == [
        ("basic", "r"),
        ("bearer", "https://t.example/"),
    ]
    assert found[1].params["service"] == "s"


@pytest.mark.parametrize(
    "realm",
    [
        "https://auth.docker.io/token",
        "http://127.0.0.1:9999/token",  # the registry's own host, another port
        "https://10.0.0.5.nip.io/token",  # a DNS name: vetted at connect time
    ],
)
def test_allowed_realms(realm: str) -> None:
    """Public names and the registry's own host are allowed."""
    check_realm(realm, "127.0.0.1:5000")


@pytest.mark.parametrize(
    ("realm", "why"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("gopher://x.example/", "only http and https"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/token", "link-local"),
        ("http://10.1.2.3/token", "private"),
        ("http://192.168.1.1/token", "private"),
        ("http://localhost:8080/token", "localhost"),
        ("http://metadata.google.internal/computeMetadata", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("https://user:pw@auth.example/", "credentials"),
        ("https:///token", "no host"),
    ],
)
def test_refused_realms(realm: str, why: str) -> None:
    """Realms that could aim wasmxds at internal or metadata services are refused up front."""
    with pytest.raises(BlockedRealmError, match=why):
        check_realm(realm, "registry.example")


def test_token_answers() -> None:
    """Both `token` and OAuth2's `access_token` are accepted; junk is an auth error."""
    assert parse_token(b'{"token":"t1","expires_in":120}', "a", now=0).value == "t1"
    token = parse_token(b'{"access_token":"t2"}', "a", now=100.0)
    assert token.value == "t2"
    assert token.valid(now=101.0)
    assert not token.valid(now=1000.0)
    with pytest.raises(RegistryAuthError, match="no token"):
        parse_token(b"{}", "auth.example")
    with pytest.raises(RegistryAuthError, match="invalid JSON"):
        parse_token(b"<html>", "auth.example")


def test_credentials_are_never_shown() -> None:
    """repr() of credentials and tokens names only the kinds present."""
    creds = RegistryCredentials(username="me", password="hunter2", identity_token="idtok")
    assert "hunter2" not in repr(creds)
    assert "idtok" not in repr(creds)
    assert repr(creds) == "RegistryCredentials(basic, identity_token)"
    assert basic_header(creds) == "Basic bWU6aHVudGVyMg=="
    assert "t1" not in repr(parse_token(b'{"token":"t1"}', "a"))
