"""A hostile registry's deeply nested manifest is refused with a sentence naming the reference."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from wasmxds.errors import FetchError
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.manifest import OCI_MANIFEST, ImageManifest, parse_manifest
from wasmxds.modules.oci.reference import parse_reference

DEEP = b'{"schemaVersion": 2, "layers": ' + b"[" * 5000 + b"]" * 5000 + b"}"
TOO_DEEP = "the manifest nests JSON more than 32 levels deep"


@contextlib.asynccontextmanager
async def registry_serving(manifest: bytes) -> AsyncIterator[str]:
    """A loopback registry whose every manifest is ``manifest``; yields host:port."""

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({})

    async def manifests(request: web.Request) -> web.Response:
        return web.Response(body=manifest, headers={"Content-Type": OCI_MANIFEST})

    app = web.Application()
    app.router.add_get("/v2/", ping)
    app.router.add_route("*", "/v2/{name:.+}/manifests/{ref}", manifests)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_deep_manifest_from_a_registry_names_reference_and_problem(
    fetcher: OciFetcher,
) -> None:
    """A 5000-deep manifest says which image and what is wrong, not "unexpected RecursionError"."""
    async with registry_serving(DEEP) as host:
        reference = f"oci://{host}/filters/deep:v1"
        with pytest.raises(FetchError) as raised:
            await fetcher.pull(parse_reference(reference), Credentials())
    message = str(raised.value)
    assert message.startswith(f"{reference}: {TOO_DEEP}"), message
    assert not raised.value.retryable


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(DEEP, id="deeper-than-json-recursion"),
        pytest.param(
            b'{"layers": [' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"]}", id="past-the-limit"
        ),
    ],
)
def test_parse_refuses_deep_json(data: bytes) -> None:
    """Nesting past the limit is refused whether or not json could decode it."""
    with pytest.raises(FetchError, match=TOO_DEEP):
        parse_manifest(data, OCI_MANIFEST)


def test_parse_refuses_oversized_manifest() -> None:
    """A manifest over 4 MiB is refused before it is decoded."""
    data = json.dumps({"layers": [], "pad": "x" * (4 << 20)}).encode()
    with pytest.raises(FetchError, match="more than the 4194304 a manifest may be"):
        parse_manifest(data, OCI_MANIFEST)


def test_ordinary_manifest_is_within_the_limits() -> None:
    """A real manifest shape (annotations included) parses."""
    digest = "sha256:" + "0" * 64
    descriptor = {"mediaType": "x", "digest": digest, "size": 1, "annotations": {"a": "b"}}
    data = json.dumps({"config": descriptor, "layers": [descriptor]}).encode()
    assert isinstance(parse_manifest(data, OCI_MANIFEST), ImageManifest)
