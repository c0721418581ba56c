"""OCI layers are written to the store as they arrive, not gathered in memory first."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from e2e.harness.images import artifact_image
from e2e.harness.registry import Registry
from tests.modules.conftest import BIG, PEAK_BOUND, big_wasm, temporaries, traced_peak
from tests.modules.oci.conftest import pusher, settings
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.store import ModuleStore


async def test_a_large_oci_layer_is_streamed_to_the_store(
    registry: Registry, tmp_path: Path
) -> None:
    """A 48 MiB Wasm layer is pulled into the store while the pull allocates a few MiB."""
    store = ModuleStore(tmp_path / "cache")
    big = big_wasm()
    digest = hashlib.sha256(big).hexdigest()
    await asyncio.to_thread(pusher(registry).push, "big", "v1", artifact_image(big))
    del big  # not part of what the pull holds
    fetcher = OciFetcher(
        store=store,
        index=ModuleIndex(),
        settings=settings(max_size=64 << 20),
        docker_config=lambda: tmp_path / "none" / "config.json",
    )
    try:
        ref = parse_reference(registry.url("big"))
        fetched, peak = await traced_peak(lambda: fetcher.pull(ref, Credentials()))
    finally:
        await fetcher.aclose()
    print(f"\noci: {BIG >> 20} MiB layer pulled with a peak of {peak / (1 << 20):.1f} MiB")
    assert fetched.module.digest == digest
    assert fetched.module.path.stat().st_size == BIG
    assert peak < PEAK_BOUND
    assert temporaries(store) == []
