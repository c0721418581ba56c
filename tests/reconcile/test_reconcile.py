"""The reconcile stage: modules resolved before anything references them, make before break."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2

from tests.factories import make_node, make_plugin
from wasmxds.api.objects import WasmPlugin
from wasmxds.errors import ChecksumMismatchError
from wasmxds.modules.types import (
    Failed,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    PullPolicy,
    Ready,
)
from wasmxds.reconcile import Reconciler, module_request
from wasmxds.sources.state import SourceState
from wasmxds.translate.filters import StandIn
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.translate.typeurls import HTTP_RBAC, HTTP_WASM, TYPED_EXTENSION_CONFIG
from wasmxds.xds.snapshot import Snapshot

NODE = make_node()


class FakeModules:
    """Outcomes by URL, set by the test; anything unknown is still being fetched."""

    def __init__(self) -> None:
        self.outcomes: dict[str, ModuleOutcome] = {}
        self.retained: list[ModuleRequest] = []
        self.in_use: list[Module] = []

    def resolve(self, request: ModuleRequest) -> ModuleOutcome:
        return self.outcomes.get(request.url, Pending())

    def retain(self, requests: Iterable[ModuleRequest], in_use: Iterable[Module] = ()) -> None:
        self.retained = list(requests)
        self.in_use = list(in_use)

    def ready(self, url: str, digest: str) -> None:
        self.outcomes[url] = Ready(Module(digest, Path(f"/cache/modules/sha256/{digest}.wasm"), 8))


class Harness:
    def __init__(
        self,
        *plugins: WasmPlugin,
        initial_wait: float = 0.0,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.modules = FakeModules()
        self.state = SourceState({p.key: p for p in plugins})
        self.published: list[Snapshot] = []
        self.reconciler = Reconciler(
            sources=[lambda: self.state],
            resolver=self.modules,
            delivery=LocalDelivery(Path("/cache"), Path("/cache")),
            runtime="envoy.wasm.runtime.v8",
            publish=self._publish,
            root_namespace="istio-system",
            initial_wait=initial_wait,
            clock=clock,
        )

    def _publish(self, snapshot: Snapshot) -> int:
        self.published.append(snapshot)
        return 0

    def set(self, *plugins: WasmPlugin) -> None:
        self.state = SourceState({p.key: p for p in plugins})

    @property
    def snapshot(self) -> Snapshot:
        return self.published[-1]

    def filename(self, name: str) -> str:
        """The module path the latest snapshot gives proxies for ``name``."""
        resource = self.snapshot.ecds_for(NODE, name)
        assert resource is not None
        config = resource.message
        assert isinstance(config, extension_pb2.TypedExtensionConfig)
        assert config.typed_config.type_url == HTTP_WASM
        wasm = http_wasm_pb2.Wasm()
        config.typed_config.Unpack(wasm)
        filename: str = wasm.config.vm_config.code.local.filename
        return filename


async def test_new_plugin_waits_for_its_module():
    """A plugin is not referenced until its module is ready; then it is served."""
    plugin = make_plugin("a", url="http://m/a.wasm")
    h = Harness(plugin)
    await h.reconciler.reconcile()
    assert h.snapshot.ecds_for(NODE, "default.a") is None
    assert h.snapshot.is_pending(TYPED_EXTENSION_CONFIG, "default.a")
    h.modules.ready("http://m/a.wasm", "aa" * 32)
    await h.reconciler.reconcile()
    assert h.filename("default.a") == f"/cache/modules/sha256/{'aa' * 32}.wasm"


async def test_edit_keeps_previous_version_until_new_module_is_ready():
    """Make before break: an edited plugin serves its old filter while the new module downloads."""
    h = Harness(make_plugin("a", url="http://m/v1.wasm"))
    h.modules.ready("http://m/v1.wasm", "11" * 32)
    await h.reconciler.reconcile()
    assert "1111" * 16 in h.filename("default.a")
    h.set(make_plugin("a", url="http://m/v2.wasm"))
    await h.reconciler.reconcile()
    assert "1111" * 16 in h.filename("default.a")
    h.modules.ready("http://m/v2.wasm", "22" * 32)
    await h.reconciler.reconcile()
    assert "2222" * 16 in h.filename("default.a")


async def test_failed_module_is_served_as_standin_with_reason():
    """A failed module gives the fail-strategy stand-in and records why."""
    plugin = make_plugin("a", url="http://m/a.wasm")
    h = Harness(plugin)
    h.modules.outcomes["http://m/a.wasm"] = Failed(
        ChecksumMismatchError("sha256 mismatch"), attempts=2, next_retry_in=4.0
    )
    await h.reconciler.reconcile()
    resource = h.snapshot.ecds_for(NODE, "default.a")
    assert resource is not None
    assert isinstance(resource.message, extension_pb2.TypedExtensionConfig)
    assert resource.message.typed_config.type_url == HTTP_RBAC
    status = h.reconciler.status[plugin.key]
    assert status.served is not None
    assert status.served.standin is StandIn.DENY_ALL
    assert "mismatch" in status.served.reason


async def test_removed_plugin_leaves_snapshot_and_retention():
    """Deleting a plugin drops its resource and stops retaining its module."""
    a, b = make_plugin("a", url="http://m/a.wasm"), make_plugin("b", url="http://m/b.wasm")
    h = Harness(a, b)
    h.modules.ready("http://m/a.wasm", "aa" * 32)
    h.modules.ready("http://m/b.wasm", "bb" * 32)
    await h.reconciler.reconcile()
    h.set(a)
    await h.reconciler.reconcile()
    assert set(h.snapshot.ecds) == {"default.a"}
    assert [r.url for r in h.modules.retained] == ["http://m/a.wasm"]


async def test_nothing_changed_nothing_published():
    """A reconcile that produces the same snapshot does not publish it again."""
    h = Harness(make_plugin("a", url="http://m/a.wasm"))
    h.modules.ready("http://m/a.wasm", "aa" * 32)
    await h.reconciler.reconcile()
    await h.reconciler.reconcile()
    assert len(h.published) == 1


async def test_first_snapshot_is_published_even_when_empty():
    """Streams wait for a first snapshot, so an empty one is still published."""
    h = Harness()
    await h.reconciler.reconcile()
    assert len(h.published) == 1


async def test_sources_merge_first_wins():
    """With several sources, the first one defining a namespace/name wins."""
    first, second = make_plugin("a", url="http://m/1.wasm"), make_plugin("a", url="http://m/2.wasm")
    h = Harness()
    h.reconciler._sources = [
        lambda: SourceState({first.key: first}),
        lambda: SourceState({second.key: second}),
    ]
    await h.reconciler.reconcile()
    assert [r.url for r in h.modules.retained] == ["http://m/1.wasm"]


@pytest.mark.parametrize(
    ("spec", "url", "policy"),
    [
        ({"url": "registry.io/f:v1"}, "oci://registry.io/f:v1", PullPolicy.IF_NOT_PRESENT),
        ({"url": "oci://registry.io/f:latest"}, "oci://registry.io/f:latest", PullPolicy.ALWAYS),
        ({"url": "registry.io/f:latest"}, "oci://registry.io/f:latest", PullPolicy.ALWAYS),
        ({"url": "oci://registry.io/f"}, "oci://registry.io/f", PullPolicy.IF_NOT_PRESENT),
        ({"url": "http://h/latest"}, "http://h/latest", PullPolicy.IF_NOT_PRESENT),
        (
            {"url": "oci://r/f:latest", "imagePullPolicy": "IfNotPresent"},
            "oci://r/f:latest",
            PullPolicy.IF_NOT_PRESENT,
        ),
        (
            {"url": "http://h/f.wasm", "imagePullPolicy": "Always"},
            "http://h/f.wasm",
            PullPolicy.ALWAYS,
        ),
    ],
)
def test_module_request_follows_istio_defaults(spec, url, policy):
    """No scheme means oci://; unspecified policy is Always only for an OCI :latest tag."""
    request = module_request(make_plugin("p", **spec))
    assert (request.url, request.pull_policy) == (url, policy)


def test_module_request_generation_tracks_the_object():
    """The request's generation changes whenever the plugin object changes."""
    one = module_request(make_plugin("p", url="http://h/f.wasm"))
    two = module_request(make_plugin("p", url="http://h/f.wasm", pluginConfig={"x": 1}))
    assert one.generation != two.generation


async def test_first_push_waits_for_pending_modules_until_the_deadline():
    """At start-up the first snapshot waits for fetches under way, but not past the deadline."""
    now = [0.0]
    h = Harness(make_plugin("a", url="http://m/a.wasm"), initial_wait=30.0, clock=lambda: now[0])
    await h.reconciler.reconcile()
    assert h.published == []
    h.modules.ready("http://m/a.wasm", "aa" * 32)
    await h.reconciler.reconcile()
    assert len(h.published) == 1
    assert h.snapshot.ecds_for(NODE, "default.a") is not None


async def test_first_push_goes_out_at_the_deadline_with_modules_still_pending():
    """A download that outlasts the start-up wait does not hold every other proxy back."""
    now = [0.0]
    h = Harness(make_plugin("a", url="http://m/slow.wasm"), initial_wait=30.0, clock=lambda: now[0])
    await h.reconciler.reconcile()
    assert h.published == []
    now[0] = 31.0
    await h.reconciler.reconcile()
    assert len(h.published) == 1
    assert h.snapshot.is_pending(TYPED_EXTENSION_CONFIG, "default.a")
