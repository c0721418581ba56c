"""TrafficExtensions from the fake API server: list/watch beside WasmPlugins, status, no CRD."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from tests.sources.kube.fakeapi import running_fake_kube, trafficextension
from tests.sources.test_kubernetes import KEY, plugin, running_source, value_of
from wasmxds.api.objects import TRAFFIC_EXTENSION_KIND, ObjectKey
from wasmxds.reconcile.kubestatus import ModuleReadiness, PluginReport, StatusWriter
from wasmxds.sources.state import SourceState

EXT = ObjectKey("default", "one", TRAFFIC_EXTENSION_KIND)


def lua(code: str) -> dict[str, object]:
    return {"phase": "AUTHN", "lua": {"inlineCode": code}}


def code_of(state: SourceState) -> str | None:
    found = state.plugins.get(EXT)
    return None if found is None else found.lua


async def test_listed_and_watched_beside_a_wasmplugin_of_the_same_name(tmp_path: Path) -> None:
    """Both kinds of default/one are kept apart (the reconciler picks one); edits flow."""
    async with running_fake_kube() as fake:
        fake.apply(plugin("one"))
        fake.apply(trafficextension("one", spec=lua("-- v1")))
        async with running_source(fake, tmp_path) as running:
            state = running.source.state
            assert value_of(state) == "v1"
            assert code_of(state) == "-- v1"
            assert state.plugins[EXT].resource_name == "default.one"
            assert state.plugins[KEY].resource_name == "default.one"

            fake.apply(trafficextension("one", spec=lua("-- v2")))
            await running.until(lambda s: code_of(s) == "-- v2")

            fake.apply(trafficextension("one", spec={"lua": {"inlineCode": "x"}, "wasm": {}}))
            state = await running.until(lambda s: bool(s.problems))
            assert code_of(state) == "-- v2"
            assert [str(p) for p in state.problems] == [
                "kubernetes:TrafficExtension default/one:0: spec: exactly one of wasm or lua"
                " must be set (the CRD's rule), not both",
                "kubernetes:TrafficExtension default/one:0: spec.wasm.url: required: the URL of"
                " the Wasm module (oci://, https://, http:// or file://; no scheme means oci://)",
                "kubernetes:TrafficExtension default/one:0: warning: keeping the last valid"
                " version of TrafficExtension default/one until the error above is fixed",
            ]

            fake.delete("TrafficExtension", "one")
            state = await running.until(lambda s: EXT not in s.plugins)
            assert value_of(state) == "v1"


async def test_cluster_without_the_crd_still_serves_wasmplugins(tmp_path: Path) -> None:
    """A 404 for trafficextensions (Istio before 1.30) is logged with a hint; WasmPlugins load."""
    async with running_fake_kube(traffic_extensions=False) as fake:
        fake.apply(plugin("one"))
        with capture_logs() as logs:
            async with running_source(fake, tmp_path) as running:
                assert value_of(running.source.state) == "v1"
        hints = [e.get("hint", "") for e in logs if e["event"] == "kubernetes.request_failed"]
        assert any("trafficextensions.extensions.istio.io" in hint for hint in hints)


async def test_status_is_written_to_the_trafficextension(tmp_path: Path) -> None:
    """--write-status patches trafficextensions/NAME/status for an extension."""
    async with running_fake_kube() as fake:
        fake.apply(trafficextension("one", spec=lua("-- v1")))
        async with running_source(fake, tmp_path) as running:
            source = running.source
            writer = StatusWriter(
                source.client,
                objects=source.observed,
                reports=lambda: {EXT: PluginReport(ModuleReadiness.FETCHED, proxies=1)},
                max_rate=1000,
            )
            assert await writer.flush() == 1
            (patch,) = fake.status_patches
            assert (patch.resource, patch.namespace, patch.name) == (
                "trafficextensions",
                "default",
                "one",
            )
            stored = fake.objects[("trafficextensions", "default", "one")]["status"]
            assert stored["proxies"] == 1
