"""Fixtures for end-to-end tests: real Envoy, real wasmxds, real sockets on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from e2e.harness.modules import ModuleServer, module_server
from e2e.harness.upstream import EchoUpstream, echo_upstream

REPO = Path(__file__).resolve().parents[1]
HEADER_FILTER = REPO / "examples" / "header-filter" / "header-filter.wasm"


@pytest.fixture(name="header_filter_wasm")
def _header_filter_wasm() -> bytes:
    return HEADER_FILTER.read_bytes()


@pytest.fixture(name="upstream")
async def _upstream() -> AsyncIterator[EchoUpstream]:
    async with echo_upstream() as upstream:
        yield upstream


@pytest.fixture(name="modules")
async def _modules(header_filter_wasm: bytes) -> AsyncIterator[ModuleServer]:
    async with module_server() as server:
        server.files["header-filter.wasm"] = header_filter_wasm
        yield server
