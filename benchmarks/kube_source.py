"""Figures for the Kubernetes source against the fake API server (prints; asserts nothing).

    .venv/bin/python -m benchmarks.kube_source

For 100, 1,000 and 5,000 WasmPlugins: the time from ``run()`` to ``loaded``
(connect, the paged list over HTTPS, validating every object, building the
state), then the time for a burst of 1,000 edits made through the API to be
in the source's state (watch events, validation, one state rebuild per
network read), not counting the fake's own time to make the edits. The fake
runs in the same process and event loop, so these are upper bounds for the
client side.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from tests.sources.kube.fakeapi import running_fake_kube, wasmplugin
from wasmxds.api.objects import ObjectKey
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.protocol import ClientConfig
from wasmxds.sources.kubernetes import KubernetesSource

SIZES = (100, 1000, 5000)
EDITS = 1000


def _plugin(index: int, value: str) -> dict[str, object]:
    return wasmplugin(
        f"plugin-{index}",
        f"ns-{index % 20}",
        url=f"http://modules.example/{index}.wasm",
        config={"value": value, "headers": {"x-index": str(index)}},
    )


async def measure(count: int, tmp: Path) -> tuple[float, float]:
    async with running_fake_kube() as fake:
        for index in range(count):
            fake.apply(_plugin(index, "v1"))
        client = KubeClient(ClientConfig(kubeconfig=fake.kubeconfig(tmp / f"kubeconfig-{count}")))
        source = KubernetesSource(client)
        started = time.perf_counter()
        task = asyncio.create_task(source.run())
        try:
            await source.loaded.wait()
            loaded = time.perf_counter() - started
            assert len(source.state.plugins) == count
            await fake.wait_for(lambda: bool(fake.open_watches()))
            started = time.perf_counter()
            for index in range(min(EDITS, count)):
                fake.apply(_plugin(index, "v2"))
            applied = time.perf_counter() - started
            target = min(EDITS, count) - 1
            last = ObjectKey(f"ns-{target % 20}", f"plugin-{target}")
            while True:
                plugin = source.state.plugins.get(last)
                if plugin is not None and plugin.generation == 2:
                    break
                await asyncio.sleep(0.001)
            # The fake's own work (applying the edits) runs on the same loop; leave it out.
            edits = time.perf_counter() - started - applied
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()
    return loaded, edits


async def main() -> None:
    print(f"{'plugins':>8} {'initial list → loaded':>22} {'edits':>6} {'edits → state':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for count in SIZES:
            loaded, edits = await measure(count, Path(tmp))
            burst = min(EDITS, count)
            print(f"{count:>8} {loaded * 1000:>19.0f} ms {burst:>6} {edits * 1000:>11.0f} ms")


if __name__ == "__main__":
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    asyncio.run(main())
