"""A hostile registry that knows another image's manifest but none of its layers.

A manifest is no secret: anyone who knows a module's digest and size can write
the manifest ``wasmxds push`` (or oras) would, byte for byte. This registry
serves such manifests for any repository and any tag (and by digest), answers
404 to every blob (it does not have them) and to cosign ``.sig`` tags, and
records every request, so a test can show that a server never hands the cached
module to a plugin that names it here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiohttp import web

from e2e.harness.images import Image

__all__ = ["Copycat", "running_copycat"]

_MANIFEST = re.compile(r"^/v2/(?P<repository>.+)/manifests/(?P<reference>[^/]+)$")
_UNKNOWN = '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'


class Copycat:
    """What the copycat serves and what it was asked; ``host`` is ``127.0.0.1:<port>``."""

    def __init__(self, images: Sequence[Image]) -> None:
        self._by_digest = {image.digest: image for image in images}
        self._first = images[0]
        self.host = ""
        self.requests: list[str] = []

    def url(self, repository: str, reference: str = "v1") -> str:
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"oci://{self.host}/{repository}{separator}{reference}"

    @property
    def blob_requests(self) -> int:
        return sum("/blobs/" in path for path in self.requests)

    def asked_for(self, digest: str) -> bool:
        """Whether any manifest was asked for by this digest (hex)."""
        return any(path.endswith(f"/manifests/sha256:{digest}") for path in self.requests)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path)
        if request.path == "/v2/":
            return web.Response(status=200)
        found = _MANIFEST.match(request.path)
        if found is None:
            return web.Response(status=404)  # blobs and anything else: not here
        reference = found["reference"]
        if reference.startswith("sha256-"):
            return web.Response(status=404, text=_UNKNOWN)  # no cosign signature
        if reference.startswith("sha256:"):
            image = self._by_digest.get(reference.removeprefix("sha256:"))
        else:
            image = self._first  # any tag names the copied image
        if image is None:
            return web.Response(status=404, text=_UNKNOWN)
        headers = {
            "Content-Type": image.media_type,
            "Docker-Content-Digest": f"sha256:{hashlib.sha256(image.manifest).hexdigest()}",
        }
        body = b"" if request.method == "HEAD" else image.manifest
        return web.Response(body=body, headers=headers)


@asynccontextmanager
async def running_copycat(images: Sequence[Image]) -> AsyncIterator[Copycat]:
    """Serve ``images``' manifests (the first for every tag) on a loopback port."""
    copycat = Copycat(images)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", copycat.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    copycat.host = f"127.0.0.1:{int(runner.addresses[0][1])}"
    try:
        yield copycat
    finally:
        await runner.cleanup()
