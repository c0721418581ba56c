"""OCI references: Docker's parsing rules, Docker Hub short names, hosts with ports, digests."""

from __future__ import annotations

import pytest

from wasmxds.errors import InvalidReferenceError
from wasmxds.modules.oci.reference import parse_reference

DIGEST = "a" * 64


@pytest.mark.parametrize(
    ("url", "registry", "host", "repository", "tag", "digest"),
    [
        ("oci://ghcr.io/acme/filter:v1", "ghcr.io", "ghcr.io", "acme/filter", "v1", ""),
        ("ghcr.io/acme/filter:v1", "ghcr.io", "ghcr.io", "acme/filter", "v1", ""),
        ("oci://localhost:5000/f", "localhost:5000", "localhost:5000", "f", "latest", ""),
        ("oci://127.0.0.1:5000/a/b/c:1.0", "127.0.0.1:5000", "127.0.0.1:5000", "a/b/c", "1.0", ""),
        ("oci://envoy", "docker.io", "registry-1.docker.io", "library/envoy", "latest", ""),
        ("oci://acme/filter:v2", "docker.io", "registry-1.docker.io", "acme/filter", "v2", ""),
        (
            "oci://docker.io/envoy:v1",
            "docker.io",
            "registry-1.docker.io",
            "library/envoy",
            "v1",
            "",
        ),
        ("oci://index.docker.io/a/b", "docker.io", "registry-1.docker.io", "a/b", "latest", ""),
        (f"oci://r.io/f@sha256:{DIGEST}", "r.io", "r.io", "f", "", DIGEST),
        (f"oci://r.io/f:v1@sha256:{DIGEST}", "r.io", "r.io", "f", "v1", DIGEST),
        (
            "OCI://Registry.Example:8443/f:v",
            "registry.example:8443",
            "registry.example:8443",
            "f",
            "v",
            "",
        ),
    ],
)
def test_parses_like_docker(
    url: str, registry: str, host: str, repository: str, tag: str, digest: str
) -> None:
    """Registry, connect host, repository, tag and digest come out as Docker would read them."""
    ref = parse_reference(url)
    assert (ref.registry, ref.host, ref.repository, ref.tag, ref.digest) == (
        registry,
        host,
        repository,
        tag,
        digest,
    )


def test_digest_wins_over_tag_for_the_request() -> None:
    """With both a tag and a digest, the manifest is requested by digest."""
    ref = parse_reference(f"oci://r.io/f:v1@sha256:{DIGEST}")
    assert ref.identifier == f"sha256:{DIGEST}"
    assert str(ref) == f"r.io/f:v1@sha256:{DIGEST}"


def test_docker_hub_credentials_key() -> None:
    """Docker Hub credentials are looked up under the key `docker login` uses."""
    assert parse_reference("oci://envoy").auth_key == "index.docker.io"
    assert parse_reference("oci://r.io:5000/f").auth_key == "r.io:5000"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("oci://", "empty"),
        ("oci://r.io/UPPER:v1", "lower-case"),
        ("oci://r.io/f:bad tag", "spaces"),
        ("oci://r.io/f@sha256:abc", "sha256"),
        ("oci://r.io/f@md5:" + "a" * 32, "sha256"),
        ("oci://r.io/f?x=1", "queries"),
        ("oci://user:pw@r.io/f:v1", "credentials in the URL"),
        ("oci://r.io/:v1", "repository"),
    ],
)
def test_invalid_references_fail_clearly(url: str, why: str) -> None:
    """A malformed reference is an InvalidReferenceError that says what is wrong."""
    with pytest.raises(InvalidReferenceError, match=why):
        parse_reference(url)


def test_error_never_shows_url_credentials() -> None:
    """A reference with userinfo is refused without echoing the password."""
    with pytest.raises(InvalidReferenceError) as caught:
        parse_reference("oci://user:hunter2@r.io/f:v1")
    assert "hunter2" not in str(caught.value)
