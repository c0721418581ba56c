"""Figures for OCI pulls and the cache index (prints; asserts nothing).

    .venv/bin/python -m benchmarks.oci_pull

Starts a loopback docker-registry, pushes a small (the example filter) and an
8 MiB module in two layouts with oras-py, and times cold pulls (manifest,
layer, unpack, store) and re-checks of an unchanged tag (manifest only, the
cost of ``imagePullPolicy: Always`` or ``--repull-interval``). Then times
writing and loading index files of 1,000 and 10,000 references.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from e2e.harness.images import OrasPusher, artifact_image, compat_image
from e2e.harness.registry import running_registry
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.client import Credentials
from wasmxds.modules.oci.fetcher import OciFetcher
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore

REPO = Path(__file__).resolve().parents[1]
SMALL = (REPO / "examples" / "header-filter" / "header-filter.wasm").read_bytes()
BIG = SMALL + bytes(8 << 20)
ROUNDS = 5


async def pulls(tmp: Path) -> None:
    settings = FetcherSettings(tries=2, insecure_hosts=frozenset({"127.0.0.1"}))
    async with running_registry(tmp / "registry") as registry:
        pusher = OrasPusher(registry.host)
        for size, data in (("small", SMALL), ("8MiB", BIG)):
            for layout, image in (
                ("artifact", artifact_image(data)),
                ("compat", compat_image(data)),
            ):
                repository = f"{size.lower()}-{layout}"
                await asyncio.to_thread(pusher.push, repository, "v1", image)
                ref = parse_reference(registry.url(repository))
                cold: list[float] = []
                warm: list[float] = []
                for round_ in range(ROUNDS):
                    store = ModuleStore(tmp / f"cache-{repository}-{round_}")
                    fetcher = OciFetcher(store=store, index=ModuleIndex(), settings=settings)
                    try:
                        started = time.perf_counter()
                        await fetcher.pull(ref, Credentials())
                        cold.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        await fetcher.pull(ref, Credentials())
                        warm.append(time.perf_counter() - started)
                    finally:
                        await fetcher.aclose()
                print(
                    f"pull {size:>5} {layout:8}  cold {statistics.median(cold) * 1000:6.1f} ms"
                    f"   unchanged tag {statistics.median(warm) * 1000:5.1f} ms"
                    f"   (median of {ROUNDS})"
                )


def index_files(tmp: Path) -> None:
    for count in (1_000, 10_000):
        path = tmp / f"index-{count}.json"
        index = ModuleIndex(path)
        for i in range(count):
            digest = hashlib.sha256(str(i).encode()).hexdigest()
            index.record(f"oci://r.example/f{i}:v1", "", digest, 1000, manifest=digest)
            index.record_manifest(digest, digest, 1000, "wasm-artifact")
        started = time.perf_counter()
        index.flush_sync()
        written = time.perf_counter() - started
        started = time.perf_counter()
        ModuleIndex.load(path)
        loaded = time.perf_counter() - started
        size = path.stat().st_size / 1024
        print(
            f"index {count:6} refs  write {written * 1000:6.1f} ms  load {loaded * 1000:6.1f} ms"
            f"  {size:5.0f} KiB"
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(pulls(Path(tmp)))
        index_files(Path(tmp))


if __name__ == "__main__":
    main()
