"""pluginConfig values from Secrets: merged into the filter, masked, refused without TLS."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from google.protobuf import json_format, wrappers_pb2
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from tests.factories import make_plugin
from tests.modules.conftest import WASM
from tests.reconcile.test_last_good import GOOD, collect
from tests.reconcile.test_reconcile import NODE, FakeModules
from wasmxds.admin.views import config_dump, plugins_view
from wasmxds.api.configsecrets import ANNOTATION, ConfigSecret, parse_config_secret
from wasmxds.api.objects import ObjectKey, WasmPlugin
from wasmxds.metrics import Metrics
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Ready
from wasmxds.reconcile import Reconciler, Serving
from wasmxds.reconcile.kubestatus import ObservedObject, desired_status
from wasmxds.reconcile.last_good import LAST_GOOD_FILE, LastGoodFile
from wasmxds.reconcile.reports import plugin_reports
from wasmxds.sources.state import SourceState
from wasmxds.translate.filters import StandIn
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.translate.typeurls import HTTP_WASM
from wasmxds.xds.resources import prepare
from wasmxds.xds.snapshot import Snapshot

LABEL = "secrets.wasmxds.io/plugin-config"
FIRST = "sk-first-value-7f3a"
SECOND = "sk-second-value-91c2"
REFS = "headers.x-api-key=api-keys/primary"


def plugin(refs: str | None = REFS, tag: str = "v1") -> WasmPlugin:
    base = make_plugin("a", url=GOOD, pluginConfig={"headers": {"x-version": tag}})
    annotations = {ANNOTATION: refs} if refs is not None else {}
    digest = hashlib.sha256((base.fingerprint + json.dumps(annotations)).encode()).hexdigest()
    return dataclasses.replace(base, annotations=annotations, fingerprint=digest)


def secret(value: str | None, name: str = "api-keys", *, labelled: bool = True) -> ConfigSecret:
    """An Opaque Secret as the sources parse it (opted in with the label unless not
    ``labelled``)."""
    metadata: dict[str, object] = {"name": name, "namespace": "default"}
    if labelled:
        metadata["labels"] = {LABEL: "true"}
    parsed = parse_config_secret(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "stringData": {"primary": value} if value is not None else {"other": "x"},
        },
        source="s.yaml",
        line=1,
        locate=lambda _path: 0,
        default_namespace="default",
    )
    assert parsed is not None
    assert parsed.secret is not None
    return parsed.secret


class Server:
    """One Reconciler as `wasmxds serve` builds it, over ``cache``."""

    def __init__(
        self,
        cache: Path,
        *,
        tls: bool = True,
        loaded: Callable[[], bool] = lambda: True,
        metrics: Metrics | None = None,
    ) -> None:
        self.modules = FakeModules()
        self.state = SourceState()
        self.published: list[Snapshot] = []
        self.reconciler = Reconciler(
            sources=[lambda: self.state],
            resolver=self.modules,
            delivery=LocalDelivery(cache, cache),
            runtime="envoy.wasm.runtime.v8",
            publish=collect(self.published),
            root_namespace="istio-system",
            saved=LastGoodFile.load(cache / LAST_GOOD_FILE),
            find_module=ModuleStore(cache).get,
            sources_loaded=loaded,
            config_secrets_allowed=tls,
            metrics=metrics,
        )

    def set(self, plugin: WasmPlugin, *secrets: ConfigSecret) -> None:
        self.state = SourceState({plugin.key: plugin}, config_secrets={s.key: s for s in secrets})

    def now(self) -> Serving:
        """What proxies get for the plugin now."""
        return self.reconciler.status[ObjectKey("default", "a")].serving

    def resource(self) -> extension_pb2.TypedExtensionConfig:
        found = self.published[-1].ecds_for(NODE, "default.a")
        assert found is not None
        assert isinstance(found.message, extension_pb2.TypedExtensionConfig)
        return found.message

    def configuration(self) -> dict[str, object]:
        """The pluginConfig JSON the proxy gets (the filter must be the Wasm one)."""
        config = self.resource()
        assert config.typed_config.type_url == HTTP_WASM
        wasm = http_wasm_pb2.Wasm()
        config.typed_config.Unpack(wasm)
        value = wrappers_pb2.StringValue()
        wasm.config.configuration.Unpack(value)
        loaded: dict[str, object] = json.loads(value.value)
        return loaded


async def serving(tmp_path: Path, **kwargs: object) -> Server:
    module = await ModuleStore(tmp_path).put(WASM)
    server = Server(tmp_path, **kwargs)  # type: ignore[arg-type]
    server.modules.outcomes[GOOD] = Ready(module)
    return server


async def test_value_is_merged_and_a_secret_edit_pushes(tmp_path):
    """The proxy gets the Secret's value at the path; editing the Secret serves the new one."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    assert server.configuration() == {"headers": {"x-version": "v1", "x-api-key": FIRST}}
    before = server.published[-1].version
    server.set(plugin(), secret(SECOND))
    await server.reconciler.reconcile()
    assert server.published[-1].version != before
    assert server.configuration()["headers"] == {"x-version": "v1", "x-api-key": SECOND}


async def test_debug_views_mask_the_value(tmp_path):
    """config_dump and /debug/plugins show where the value comes from, never the value."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    dump = json.dumps(config_dump(server.published[-1], NODE, None))
    assert FIRST not in dump
    assert "[from secret api-keys/primary]" in dump
    view = plugins_view(server.reconciler.status, server.published[-1], [], "local")
    assert FIRST not in json.dumps(view)
    assert view[0]["config_secrets"] == {
        "references": [
            {"line": 1, "path": "headers.x-api-key", "value": "[from secret api-keys/primary]"}
        ],
        "state": "resolved",
        "error": None,
    }
    assert FIRST not in repr(server.reconciler.status)
    assert FIRST not in repr(server.published[-1].ecds)


async def test_missing_secret_or_key_keeps_the_last_good_version(tmp_path):
    """A Secret or key that goes away is reported (plugin, line, Secret, key); the last
    good version (with the old value) stays; a new plugin gets its stand-in."""
    server = await serving(tmp_path)
    server.set(plugin())
    await server.reconciler.reconcile()
    assert server.now() is Serving.STANDIN
    status = server.reconciler.status[ObjectKey("default", "a")]
    assert status.config is not None
    assert status.config.error == (
        f"WasmPlugin default/a: {ANNOTATION} line 1 ({REFS}): Secret default/api-keys not"
        f' found (an Opaque Secret in the plugin\'s namespace, labelled {LABEL}: "true")'
    )
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    assert server.now() is Serving.FILTER
    server.set(plugin(tag="v2"), secret(None))
    await server.reconciler.reconcile()
    assert server.now() is Serving.LAST_GOOD
    assert server.configuration()["headers"] == {"x-version": "v1", "x-api-key": FIRST}
    config = server.reconciler.status[ObjectKey("default", "a")].config
    assert config is not None
    assert "Secret default/api-keys has no key 'primary'" in config.error


async def test_plaintext_is_refused_and_reported(tmp_path):
    """Without TLS a plugin with references is refused: stand-in with the reason in
    /debug/plugins, Kubernetes status and the metric; the value goes nowhere."""
    metrics = Metrics()
    server = await serving(tmp_path, tls=False, metrics=metrics)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    assert server.now() is Serving.STANDIN
    assert server.resource().name == "default.a"
    assert FIRST not in str(server.resource())
    view = plugins_view(server.reconciler.status, server.published[-1], [], "local")[0]
    assert view["standin"]["kind"] == StandIn.DENY_ALL.name.lower().replace("_", "-")
    assert "--allow-secrets-in-plaintext" in view["standin"]["reason"]
    assert view["config_secrets"]["state"] == "plaintext"
    report = plugin_reports(server.reconciler.status, [], server.published[-1])
    key = ObjectKey("default", "a")
    patch, _ = desired_status(ObservedObject(key, 1), report[key])
    condition = patch["status"]["conditions"][-1]
    assert condition["reason"] == "SecretsNeedTLS"
    assert "--tls-cert" in condition["message"]
    assert "stand-in" in condition["message"]
    scraped = generate_latest(metrics.registry).decode()
    assert 'wasmxds_plugin_config_secrets{state="plaintext"} 1.0' in scraped


async def test_plaintext_keeps_a_last_good_version_without_secret_values(tmp_path):
    """Adding references on a plaintext server keeps the earlier version, which had none."""
    server = await serving(tmp_path, tls=False)
    server.set(plugin(refs=None))
    await server.reconciler.reconcile()
    assert server.now() is Serving.FILTER
    server.set(plugin(tag="v2"), secret(FIRST))
    await server.reconciler.reconcile()
    assert server.now() is Serving.LAST_GOOD
    assert server.configuration() == {"headers": {"x-version": "v1"}}


async def test_last_good_file_holds_no_value_and_a_restart_looks_it_up_again(tmp_path):
    """The persisted last good version keeps the references only; a restarted server
    looks them up once the sources have loaded, and drops it (logged) if they do not resolve."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    server.set(plugin(tag="v2"), secret(None))
    await server.reconciler.reconcile()
    assert server.now() is Serving.LAST_GOOD
    text = (tmp_path / LAST_GOOD_FILE).read_text()
    assert FIRST not in text
    assert ANNOTATION in text

    loaded = False
    restarted = await serving(tmp_path, loaded=lambda: loaded)
    restarted.set(plugin(tag="v2"), secret(None))
    await restarted.reconciler.reconcile()
    assert restarted.now() is Serving.STANDIN  # nothing to look the values up in yet
    assert ANNOTATION in (tmp_path / LAST_GOOD_FILE).read_text()  # kept meanwhile
    loaded = True
    with capture_logs() as logs:
        await restarted.reconciler.reconcile()
    assert restarted.now() is Serving.STANDIN
    (dropped,) = [e for e in logs if e["event"] == "reconcile.last_good_values_missing"]
    assert "has no key 'primary'" in dropped["error"]


async def test_restart_restores_the_last_good_version_with_current_values(tmp_path):
    """After a restart, v1 (last good) is served again with the value its Secret has now."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    server.set(plugin(tag="v2", refs="headers.x-api-key=gone/primary"), secret(FIRST))
    await server.reconciler.reconcile()
    assert server.now() is Serving.LAST_GOOD
    await server.reconciler._saved.flush()

    restarted = await serving(tmp_path)
    restarted.set(plugin(tag="v2", refs="headers.x-api-key=gone/primary"), secret(SECOND))
    await restarted.reconciler.reconcile()
    assert restarted.now() is Serving.LAST_GOOD
    assert restarted.configuration()["headers"] == {"x-version": "v1", "x-api-key": SECOND}
    dump = json.dumps(config_dump(restarted.published[-1], NODE, None))
    assert SECOND not in dump


async def test_unlabelled_secret_is_refused_saying_to_add_the_label(tmp_path):
    """A Secret without the opt-in label gives no value: the plugin gets its stand-in and
    the problem names the plugin, line, Secret and the label to add."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST, labelled=False))
    await server.reconciler.reconcile()
    assert server.now() is Serving.STANDIN
    status = server.reconciler.status[ObjectKey("default", "a")]
    assert status.config is not None
    assert status.config.refusal is not None
    assert status.config.error == (
        f"WasmPlugin default/a: {ANNOTATION} line 1 ({REFS}): Secret default/api-keys is not"
        f' labelled {LABEL}: "true"; its owner must add that label to let plugins take values'
        " from it"
    )
    assert FIRST not in json.dumps(
        plugins_view(server.reconciler.status, server.published[-1], [], "local")
    )


async def test_oversized_value_is_refused_and_the_last_good_version_kept(tmp_path):
    """A value over 64 KiB is refused, naming plugin, line, Secret and key; proxies keep
    the last good version (with its old value)."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    server.set(plugin(tag="v2"), secret("A" * (64 * 1024 + 1)))
    await server.reconciler.reconcile()
    assert server.now() is Serving.LAST_GOOD
    assert server.configuration()["headers"] == {"x-version": "v1", "x-api-key": FIRST}
    status = server.reconciler.status[ObjectKey("default", "a")]
    assert status.config is not None
    assert status.config.refusal is not None
    assert status.config.refusal.value == "too_large"
    assert status.config.error == (
        f"WasmPlugin default/a: {ANNOTATION} line 1 ({REFS}): key 'primary' of Secret"
        " default/api-keys is 65537 bytes; a value from a Secret may be at most 65536"
    )


async def test_values_of_one_plugin_are_bounded_in_total(tmp_path):
    """References multiply a value: 5 x 60 KiB of one key is over the 256 KiB per plugin,
    refused at the line that crosses it, with no value served."""
    server = await serving(tmp_path)
    refs = "\n".join(f"k{i}=api-keys/primary" for i in range(5))
    server.set(plugin(refs=refs), secret("B" * (60 * 1024)))
    await server.reconciler.reconcile()
    assert server.now() is Serving.STANDIN
    status = server.reconciler.status[ObjectKey("default", "a")]
    assert status.config is not None
    assert status.config.refusal is not None
    assert status.config.refusal.value == "too_large"
    assert (
        f"{ANNOTATION} line 5 (k4=api-keys/primary): key 'primary' of Secret default/api-keys"
        " brings the plugin's values from Secrets to 307200 bytes; at most 262144 in all"
    ) in status.config.error
    assert "line 4" not in status.config.error
    assert "BBBB" not in status.config.error


async def test_filter_with_values_is_built_once_per_plugin_and_secret_version(tmp_path):
    """Passes with the same plugin and Secrets reuse the filter built before (the same
    messages, so nothing is merged, rendered or hashed again); a Secret edit builds anew."""
    server = await serving(tmp_path)
    server.set(plugin(), secret(FIRST))
    await server.reconciler.reconcile()
    first = server.reconciler.status[ObjectKey("default", "a")].served
    server.set(plugin(), secret(FIRST))  # the same content, parsed again (a re-list, say)
    await server.reconciler.reconcile()
    await server.reconciler.reconcile()
    again = server.reconciler.status[ObjectKey("default", "a")].served
    assert first is not None
    assert again is not None
    assert again.config is first.config
    assert again.display is first.display
    server.set(plugin(), secret(SECOND))
    await server.reconciler.reconcile()
    edited = server.reconciler.status[ObjectKey("default", "a")].served
    assert edited is not None
    assert edited.config is not first.config
    assert server.configuration()["headers"] == {"x-version": "v1", "x-api-key": SECOND}


async def test_config_dump_version_does_not_let_a_reader_test_guesses(tmp_path):
    """The masked dump plus its version cannot confirm a guessed value: the real version
    (and the snapshot's, derived from it) appears nowhere; a guess rebuilt from the dump
    does not match what is shown, although it matches the version sent to proxies."""
    server = await serving(tmp_path)
    pin = "4711"
    server.set(plugin(), secret(pin))
    await server.reconciler.reconcile()
    snapshot = server.published[-1]
    dump = config_dump(snapshot, NODE, None)
    (entry,) = dump["resources"]["ECDS"]
    text = json.dumps(entry["resource"]).replace("[from secret api-keys/primary]", pin)
    rebuilt = json_format.ParseDict(json.loads(text), extension_pb2.TypedExtensionConfig())
    guessed = prepare(entry["name"], rebuilt).version
    real = snapshot.ecds["default.a"].active.version
    assert guessed == real  # the attack's premise: the rebuilt guess hashes like the real one
    assert entry["version"] != guessed
    assert real not in json.dumps(dump)
    assert snapshot.version not in json.dumps(dump)
    # Stable within the process: the page still shows when the resource changes.
    assert config_dump(snapshot, NODE, None)["resources"]["ECDS"][0]["version"] == entry["version"]
