"""OCI image references, parsed the way Docker and Istio's go-containerregistry do.

``oci://ghcr.io/acme/filter:v1``, ``oci://localhost:5000/f@sha256:…`` and
Docker Hub short names (``oci://envoy`` is ``docker.io/library/envoy:latest``)
all come out as a :class:`Reference`. The first path component is a registry
when it contains a ``.`` or a ``:`` or is ``localhost`` (Docker's rule);
otherwise the reference is on Docker Hub, whose API lives at
``registry-1.docker.io``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from wasmxds.api.dockerconfig import DOCKER_HUB_AUTH_KEY
from wasmxds.api.moduleurl import OCI_PREFIX
from wasmxds.errors import InvalidReferenceError
from wasmxds.modules.types import redact_url

__all__ = ["DOCKER_HUB", "Reference", "parse_reference"]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", _DOCKER_HUB_API})
# distribution/reference's grammar (lower-case path components, separators . _ __ -).
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:([a-f0-9]{64})\Z")
_HOST = re.compile(
    r"(?:\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(?::[0-9]{1,5})?\Z"
)
_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class Reference:
    """One image: ``registry`` as written (Docker Hub normalised to ``docker.io``),
    ``repository``, and a ``tag`` or a ``digest`` (hex, no prefix; wins over the tag)."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def host(self) -> str:
        """``host[:port]`` to connect to (Docker Hub's API host for Docker Hub)."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def auth_key(self) -> str:
        """The key ``docker login`` files credentials for this registry under."""
        return DOCKER_HUB_AUTH_KEY if self.registry == DOCKER_HUB else self.registry

    @property
    def identifier(self) -> str:
        """What to ask the manifests endpoint for: the digest when pinned, else the tag."""
        return f"sha256:{self.digest}" if self.digest else self.tag

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@sha256:{self.digest}" if self.digest else ""
        return f"{self.registry}/{self.repository}{tag}{digest}"


def parse_reference(url: str) -> Reference:
    """Parse ``oci://REF`` (or a bare ``REF``); raises :class:`InvalidReferenceError`."""
    display_url = redact_url(url)
    text = url[len(OCI_PREFIX) :] if url[: len(OCI_PREFIX)].lower() == OCI_PREFIX else url

    def invalid(why: str) -> InvalidReferenceError:
        return InvalidReferenceError(f"not a valid OCI image reference: {why}", url=display_url)

    if not text:
        raise invalid("it is empty")
    if any(c in text for c in "?#") or any(c.isspace() for c in text):
        raise invalid("queries, fragments and spaces are not allowed")
    if "@" in text.split("/", 1)[0] or text.count("@") > 1:
        raise invalid("credentials in the URL are not supported; use imagePullSecret")
    rest, at, digest_text = text.partition("@")
    digest = ""
    if at:
        match = _DIGEST.match(digest_text)
        if match is None:
            raise invalid("the digest must be sha256: and 64 lower-case hex characters")
        digest = match.group(1)
    try:
        registry, path = _split_registry(rest)
    except InvalidReferenceError as exc:
        raise invalid(str(exc)) from None
    tag = ""
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
        if not _TAG.match(tag):
            raise invalid(f"tag {tag!r} has characters a tag cannot have")
    if not path:
        raise invalid("the repository name is missing")
    for component in path.split("/"):
        if not _COMPONENT.match(component):
            raise invalid(
                f"repository component {component!r} must be lower-case letters and digits,"
                " separated by '.', '_', '__' or '-'"
            )
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"  # Docker Hub's official images
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise invalid(f"the name is longer than {_MAX_NAME} characters")
    if not tag and not digest:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


def _split_registry(text: str) -> tuple[str, str]:
    first, slash, remainder = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.match(first):
            raise InvalidReferenceError(f"{first!r} is not a valid registry host[:port]")
        registry = first.lower()
        if registry in _DOCKER_HUB_NAMES:
            registry = DOCKER_HUB
        return registry, remainder
    return DOCKER_HUB, text
