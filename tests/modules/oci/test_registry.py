"""Pulls from a real registry (Debian's docker-registry on loopback), images pushed by oras-py."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from e2e.harness.images import (
    Image,
    artifact_image,
    cncf_image,
    compat_image,
    index_image,
    maistra_image,
)
from e2e.harness.registry import Registry, TokenService
from tests.modules.oci.conftest import PASSWORD, USER, WASM, pusher, settings
from wasmxds.api.dockerconfig import RegistryCredentials
from wasmxds.errors import (
    BlockedRealmError,
    ChecksumMismatchError,
    FetchError,
    RegistryAuthError,
    UnknownLayoutError,
)
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.store import ModuleStore

MODULE_DIGEST = hashlib.sha256(WASM).hexdigest()
BASIC = Credentials(RegistryCredentials(username=USER, password=PASSWORD), "pull secret ns/creds")
WRONG = Credentials(RegistryCredentials(username=USER, password="not-it"), "pull secret ns/wrong")


async def push(
    registry: Registry, repository: str, image: Image, tag: str = "v1", **kw: object
) -> str:
    return await asyncio.to_thread(pusher(registry, **kw).push, repository, tag, image)


def blob_gets(registry: Registry, repository: str) -> int:
    """How many blob GETs the registry's access log shows for ``repository``."""
    return registry.log_text().count(f"GET /v2/{repository}/blobs/")


@pytest.mark.parametrize(
    ("image", "layout"),
    [
        pytest.param(artifact_image(WASM), "wasm-artifact", id="artifact"),
        pytest.param(artifact_image(WASM, runtime_config=False), "wasm-artifact", id="artifact-1"),
        pytest.param(cncf_image(WASM), "cncf-wasm", id="cncf"),
        pytest.param(compat_image(WASM), "oci-compat", id="oci-compat"),
        pytest.param(compat_image(WASM, docker=True), "docker-compat", id="docker-compat"),
        pytest.param(maistra_image(WASM), "maistra", id="maistra"),
    ],
)
async def test_every_layout_from_a_real_registry(
    registry: Registry, fetcher: OciFetcher, image: Image, layout: str
) -> None:
    """Each layout pushed by oras-py is pulled, unpacked and stored under the module's digest."""
    await push(registry, "filters/header", image)
    fetched = await fetcher.pull(parse_reference(registry.url("filters/header")), Credentials())
    assert fetched.layout == layout
    assert fetched.module.digest == MODULE_DIGEST
    assert fetched.module.path.read_bytes() == WASM
    assert fetched.manifest_digest == image.digest


async def test_index_resolves_to_a_usable_manifest(registry: Registry, fetcher: OciFetcher) -> None:
    """An image index is followed to its linux/amd64 entry; sha256 may name the index."""
    amd64, arm64 = compat_image(WASM), artifact_image(WASM)
    index = index_image([(arm64, "linux", "arm64"), (amd64, "linux", "amd64")])
    await asyncio.to_thread(pusher(registry).push_index, "multi", "v1", [amd64, arm64], index)
    ref = parse_reference(registry.url("multi"))
    fetched = await fetcher.pull(ref, Credentials(), sha256=index.digest)
    assert (fetched.layout, fetched.manifest_digest, fetched.index_digest) == (
        "oci-compat",
        amd64.digest,
        index.digest,
    )


async def test_tag_and_digest_and_both_sha256_meanings(
    registry: Registry, fetcher: OciFetcher
) -> None:
    """@sha256: pulls by digest; sha256 may be the manifest's digest or the module's own."""
    image = artifact_image(WASM)
    await push(registry, "pinned", image)
    by_digest = parse_reference(f"oci://{registry.host}/pinned@sha256:{image.digest}")
    assert (await fetcher.pull(by_digest, Credentials())).module.digest == MODULE_DIGEST
    tagged = parse_reference(registry.url("pinned"))
    for sha256 in (image.digest, MODULE_DIGEST):
        assert (
            await fetcher.pull(tagged, Credentials(), sha256=sha256)
        ).module.digest == MODULE_DIGEST


async def test_sha256_mismatch_names_both_digests(registry: Registry, fetcher: OciFetcher) -> None:
    """A sha256 matching neither digest is a checksum error naming the manifest and the module."""
    image = compat_image(WASM)
    await push(registry, "mismatch", image)
    with pytest.raises(ChecksumMismatchError) as caught:
        await fetcher.pull(
            parse_reference(registry.url("mismatch")), Credentials(), sha256="0" * 64
        )
    message = str(caught.value)
    assert image.digest in message
    assert MODULE_DIGEST in message
    assert message.startswith(f"oci://{registry.host}/mismatch:v1: ")


async def test_moved_tag_is_seen_and_known_manifests_skip_the_download(
    registry: Registry, fetcher: OciFetcher
) -> None:
    """Pulling a tag again finds a moved tag; an unchanged one costs no blob download."""
    ref = parse_reference(registry.url("moving"))
    await push(registry, "moving", artifact_image(WASM))
    first = await fetcher.pull(ref, Credentials())
    gets = blob_gets(registry, "moving")
    again = await fetcher.pull(ref, Credentials())
    assert again.module == first.module
    assert blob_gets(registry, "moving") == gets
    other = WASM + b"\0"  # still Wasm: a trailing byte in a custom section position is fine here
    await push(registry, "moving", artifact_image(other))
    moved = await fetcher.pull(ref, Credentials())
    assert moved.module.digest == hashlib.sha256(other).hexdigest()


async def test_one_download_for_concurrent_pulls_of_one_image(
    registry: Registry, fetcher: OciFetcher
) -> None:
    """Tag and digest references to one image, pulled at once, download its layer once."""
    image = artifact_image(WASM, runtime_config=False)
    await push(registry, "shared", image)
    refs = [parse_reference(registry.url("shared"))] * 3 + [
        parse_reference(f"oci://{registry.host}/shared@sha256:{image.digest}")
    ] * 3
    results = await asyncio.gather(*(fetcher.pull(ref, Credentials()) for ref in refs))
    assert {r.module.digest for r in results} == {MODULE_DIGEST}
    assert blob_gets(registry, "shared") == 1


async def test_unknown_layout_from_the_registry(registry: Registry, fetcher: OciFetcher) -> None:
    """An image with no module fails with the media types it has."""
    await push(registry, "notwasm", compat_image(WASM, path="app/server"))
    with pytest.raises(
        UnknownLayoutError, match=r"application/vnd\.oci\.image\.layer\.v1\.tar\+gzip"
    ):
        await fetcher.pull(parse_reference(registry.url("notwasm")), Credentials())


async def test_missing_tag_is_a_retryable_not_found(
    registry: Registry, fetcher: OciFetcher
) -> None:
    """A tag that does not exist (yet) says not found, and may be retried later."""
    with pytest.raises(FetchError, match="not found") as caught:
        await fetcher.pull(parse_reference(registry.url("nothing", "v9")), Credentials())
    assert caught.value.retryable
    assert "MANIFEST_UNKNOWN" in str(caught.value) or "NAME_UNKNOWN" in str(caught.value)


async def test_htpasswd_registry_with_and_without_credentials(
    auth_registry: Registry, fetcher: OciFetcher
) -> None:
    """Basic auth: right credentials pull; none or wrong ones fail naming their source only."""
    await push(auth_registry, "private", artifact_image(WASM), basic=(USER, PASSWORD))
    ref = parse_reference(auth_registry.url("private"))
    assert (await fetcher.pull(ref, BASIC)).module.digest == MODULE_DIGEST
    with pytest.raises(RegistryAuthError, match="requires a username and password") as none:
        await fetcher.pull(ref, Credentials(None, "no pull secret and no docker config"))
    with pytest.raises(RegistryAuthError, match="refused pull secret ns/wrong") as wrong:
        await fetcher.pull(ref, WRONG)
    for error in (none.value, wrong.value):
        assert PASSWORD not in str(error)
        assert "not-it" not in str(error)


async def test_bearer_token_registry(
    token_registry: Registry, tokens: TokenService, fetcher: OciFetcher
) -> None:
    """Token auth: credentials go to the realm once, the token is reused, bad ones are refused."""
    await push(
        token_registry, "tok/filter", artifact_image(WASM), basic=(USER, PASSWORD), token_auth=True
    )
    tokens.requests.clear()
    ref = parse_reference(token_registry.url("tok/filter"))
    assert (await fetcher.pull(ref, BASIC)).module.digest == MODULE_DIGEST
    assert (await fetcher.pull(ref, BASIC)).module.digest == MODULE_DIGEST
    assert tokens.requests == [(True, ["repository:tok/filter:pull"])]
    with pytest.raises(RegistryAuthError, match=r"token service on 127\.0\.0\.1.* refused"):
        await fetcher.pull(ref, WRONG)


async def test_tls_registry_needs_its_ca(
    tls_registry: Registry, registry_ca_file: Path, store: ModuleStore, index: ModuleIndex
) -> None:
    """A self-signed registry fails verification, works with its CA, or when listed insecure."""
    await push(tls_registry, "secure", artifact_image(WASM), tls_ca=registry_ca_file)
    ref = parse_reference(tls_registry.url("secure"))
    for fetch_settings, works in (
        (settings(insecure_hosts=frozenset()), False),
        (settings(insecure_hosts=frozenset(), ca_file=registry_ca_file), True),
        (settings(insecure_hosts=frozenset({tls_registry.host})), True),
    ):
        fetcher = OciFetcher(store=store, index=ModuleIndex(), settings=fetch_settings)
        try:
            if works:
                assert (await fetcher.pull(ref, Credentials())).module.digest == MODULE_DIGEST
            else:
                with pytest.raises(
                    FetchError, match=r"certificate verification failed.*--registry-ca"
                ):
                    await fetcher.pull(ref, Credentials())
        finally:
            await fetcher.aclose()


async def test_plain_http_only_for_listed_registries(
    registry: Registry, store: ModuleStore
) -> None:
    """A plain-HTTP registry not listed as insecure is refused with the flag to use."""
    await push(registry, "plain", artifact_image(WASM))
    fetcher = OciFetcher(
        store=store, index=ModuleIndex(), settings=settings(insecure_hosts=frozenset())
    )
    try:
        with pytest.raises(FetchError, match=f"--insecure-registry {registry.host}"):
            await fetcher.pull(parse_reference(registry.url("plain")), Credentials())
    finally:
        await fetcher.aclose()


async def test_hostile_token_realm_is_refused(fetcher: OciFetcher) -> None:
    """A registry whose challenge points at the metadata service gets no request there."""
    from aiohttp import web

    seen: list[str] = []

    async def challenge(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="http://169.254.169.254/token",service="x"'},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", challenge)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(BlockedRealmError, match="link-local"):
            await fetcher.pull(parse_reference(f"oci://127.0.0.1:{port}/x:v1"), BASIC)
    finally:
        await runner.cleanup()
    assert seen == ["/v2/x/manifests/v1"]


async def test_registry_outage_then_recovery(registry: Registry, fetcher: OciFetcher) -> None:
    """While the registry is down pulls fail as retryable; once it is back they work again."""
    await push(registry, "flaky", cncf_image(WASM))
    ref = parse_reference(registry.url("flaky"))
    await registry.stop()
    with pytest.raises(FetchError, match="cannot reach registry") as caught:
        await fetcher.pull(ref, Credentials())
    assert caught.value.retryable
    await registry.start()
    assert (await fetcher.pull(ref, Credentials())).module.digest == MODULE_DIGEST
