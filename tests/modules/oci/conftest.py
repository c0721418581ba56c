"""Fixtures for the OCI tests: real ``docker-registry`` processes on loopback, and the module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from e2e.harness.images import OrasPusher
from e2e.harness.registry import Registry, TokenService, running_registry, token_service
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore

REPO = Path(__file__).resolve().parents[3]
# The example header filter: a real proxy-wasm module, so layouts carry realistic bytes.
WASM = (REPO / "examples" / "header-filter" / "header-filter.wasm").read_bytes()
USER, PASSWORD = "puller", "s3cret-Pa55word"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with running_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
async def auth_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with running_registry(tmp_path / "auth-registry", htpasswd={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def registry_ca_file(registry_ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "registry-ca.pem"
    registry_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
async def tls_registry(tmp_path: Path, registry_ca: trustme.CA) -> AsyncIterator[Registry]:
    async with running_registry(tmp_path / "tls-registry", tls=registry_ca) as reg:
        yield reg


@pytest.fixture
async def tokens() -> AsyncIterator[TokenService]:
    async with token_service(users={USER: PASSWORD}) as service:
        yield service


@pytest.fixture
async def token_registry(tmp_path: Path, tokens: TokenService) -> AsyncIterator[Registry]:
    async with running_registry(tmp_path / "token-registry", token=tokens) as reg:
        yield reg


def pusher(registry: Registry, **kwargs: object) -> OrasPusher:
    return OrasPusher(registry.host, **kwargs)  # type: ignore[arg-type]


def settings(**overrides: object) -> FetcherSettings:
    base: dict[str, object] = {"tries": 2, "insecure_hosts": frozenset({"127.0.0.1"})}
    base.update(overrides)
    return FetcherSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    return ModuleStore(tmp_path / "cache")


@pytest.fixture
def index() -> ModuleIndex:
    return ModuleIndex()


@pytest.fixture
async def fetcher(
    store: ModuleStore, index: ModuleIndex, tmp_path: Path
) -> AsyncIterator[OciFetcher]:
    fetcher = OciFetcher(
        store=store,
        index=index,
        settings=settings(),
        docker_config=lambda: tmp_path / "no-docker-config" / "config.json",
    )
    try:
        yield fetcher
    finally:
        await fetcher.aclose()
