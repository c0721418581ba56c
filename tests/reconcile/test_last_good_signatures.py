"""A persisted last good version is served after a restart only if it was verified under the
signature requirement in force now (``--verification-key`` added since does not let an
unsigned module back in)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.reconcile.test_last_good import NOT_FOUND, TYPO, collect, version
from tests.reconcile.test_last_good_persisted import served_v1_then_failing_v2
from tests.reconcile.test_reconcile import FakeModules
from wasmxds.api.keys import VerificationKey, parse_verification_key
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import ModuleRequest
from wasmxds.reconcile import Reconciler, Serving
from wasmxds.reconcile.last_good import LAST_GOOD_FILE, LastGoodFile
from wasmxds.sources.state import SourceState
from wasmxds.translate.plugins import LocalDelivery
from wasmxds.xds.snapshot import Snapshot


def server_key() -> VerificationKey:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return parse_verification_key(pem.decode(), source="server.pem")


async def restart(
    cache: Path, verified: Callable[[ModuleRequest, str], bool]
) -> tuple[Reconciler, list[ModuleRequest]]:
    """A second process, now with --verification-key, whose edit still fails."""
    modules = FakeModules()
    modules.outcomes[TYPO] = NOT_FOUND
    asked: list[ModuleRequest] = []

    def module_verified(request: ModuleRequest, digest: str) -> bool:
        asked.append(request)
        return verified(request, digest)

    published: list[Snapshot] = []
    state = SourceState({version("v2", TYPO).key: version("v2", TYPO)})
    reconciler = Reconciler(
        sources=[lambda: state],
        resolver=modules,
        delivery=LocalDelivery(cache, cache),
        runtime="envoy.wasm.runtime.v8",
        publish=collect(published),
        root_namespace="istio-system",
        saved=LastGoodFile.load(cache / LAST_GOOD_FILE),
        find_module=ModuleStore(cache).get,
        verification_keys=[server_key()],
        module_verified=module_verified,
    )
    await reconciler.reconcile()
    return reconciler, asked


async def test_unverified_last_good_is_dropped_when_keys_are_required(tmp_path: Path) -> None:
    """Saved before --verification-key existed: dropped with a warning, the stand-in served."""
    await served_v1_then_failing_v2(tmp_path)
    with structlog.testing.capture_logs() as events:
        reconciler, asked = await restart(tmp_path, lambda request, digest: False)
    assert reconciler.status[version("v2").key].serving is Serving.STANDIN
    assert [request.verify[0].source for request in asked] == ["--verification-key"]
    assert any(event["event"] == "reconcile.last_good_unverified" for event in events)


async def test_verified_last_good_is_kept(tmp_path: Path) -> None:
    """The control: a last good version pulled under the same requirement is served."""
    await served_v1_then_failing_v2(tmp_path)
    reconciler, _ = await restart(tmp_path, lambda request, digest: True)
    assert reconciler.status[version("v2").key].serving is Serving.LAST_GOOD
