"""Signed modules end to end: real registry, real wasmxds, a real Envoy running (or refusing) them.

A plugin with ``verificationKey`` runs a module only when its manifest carries
a cosign signature by that key. Refused: an unsigned image, one signed by
another key, and one whose tag was moved to another manifest after signing
(the signature copied along, as an attacker with push rights would). With no
last good version the plugin gets its stand-in; with one, proxies keep it.
The reason is ``signature_invalid`` in ``/debug/plugins`` and the metrics.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from e2e.harness.registry import Registry, running_registry
from e2e.harness.upstream import EchoUpstream
from e2e.harness.wasmxds import WasmxdsProcess, run_cli
from e2e.test_core import HEADER, plugin_yaml, stack
from wasmxds.api.keys import parse_private_key
from wasmxds.modules.oci.client import Credentials, RegistryClient
from wasmxds.modules.oci.push import PushLayout, build_image, push_image
from wasmxds.modules.oci.reference import parse_reference
from wasmxds.modules.oci.signature import docker_reference, push_signature
from wasmxds.modules.settings import FetcherSettings

pytestmark = pytest.mark.envoy

ARGS = ("--fetch-retry-max", "500ms", "--insecure-registry", "127.0.0.1")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(autouse=True)
def _no_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


class Key:
    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(exist_ok=True)
        private = ec.generate_private_key(ec.SECP256R1())
        self.private = directory / f"{name}.pem"
        self.private.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )


async def push(registry: Registry, tmp_path: Path, tag: str, key: Key | None = None) -> str:
    """Push a distinct module to filters/signed:TAG (signed with ``key``); its digest."""
    wasm = (Path(__file__).parents[1] / "examples/header-filter/header-filter.wasm").read_bytes()
    # A custom section named after the tag makes each image distinct; Envoy still loads it.
    name = tag.encode()
    module = tmp_path / f"{tag}.wasm"
    module.write_bytes(wasm + b"\x00" + bytes([len(name) + 1, len(name)]) + name)
    url = registry.url("filters/signed", tag)
    ref = parse_reference(url)
    settings = FetcherSettings(insecure_hosts=frozenset({"127.0.0.1"}))
    async with RegistryClient(settings=settings) as client:
        repo = client.repository(ref, Credentials(), display_url=url, push=True)
        image = build_image(module.read_bytes(), PushLayout.ARTIFACT)
        digest = await push_image(repo, tag, image)
        if key is not None:
            signing = parse_private_key(key.private.read_bytes(), source="test", password=None)
            await push_signature(repo, digest, signing, docker_reference(ref))
    return digest


async def images(registry: Registry, tmp_path: Path, trusted: Key, other: Key) -> dict[str, str]:
    """The four images the tests use, by name: their manifest digests."""
    digests = {
        "signed": await push(registry, tmp_path, "signed", trusted),
        "unsigned": await push(registry, tmp_path, "unsigned"),
        "other-key": await push(registry, tmp_path, "other-key", other),
        # Signed by the trusted key, then the tag is moved to another manifest and the
        # signature copied to that manifest's .sig tag.
        "moved": await push(registry, tmp_path, "moved", trusted),
    }
    replacement = await push(registry, tmp_path, "replacement")
    base = f"http://{registry.host}/v2/filters/signed/manifests"
    async with httpx.AsyncClient() as http:
        for source, target in (
            ("replacement", "moved"),
            (f"sha256-{digests['moved']}.sig", f"sha256-{replacement}.sig"),
        ):
            got = await http.get(f"{base}/{source}", headers={"Accept": MANIFEST})
            put = await http.put(
                f"{base}/{target}", content=got.content, headers={"Content-Type": MANIFEST}
            )
            assert put.status_code == 201, put.text
    digests["moved-to"] = replacement
    return digests


def plugin(registry: Registry, name: str, tag: str, key: Key, value: str) -> str:
    extra = "verificationKey: |\n" + textwrap.indent(key.public_pem, "  ")
    config = {"response_headers": {HEADER: value}}
    return plugin_yaml(name, registry.url("filters/signed", tag), config, extra=extra)


async def admin_get(wasmxds: WasmxdsProcess, path: str) -> httpx.Response:
    port = await wasmxds.port_of("admin.listening")
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
    response.raise_for_status()
    return response


async def until_plugins(
    wasmxds: WasmxdsProcess, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """/debug/plugins by resource name, once ``check`` holds for it."""
    plugins: dict[str, Any] = {}
    try:
        async with asyncio.timeout(20):
            while True:
                response = await admin_get(wasmxds, "/debug/plugins")
                plugins = {entry["resource"]: entry for entry in response.json()}
                if check(plugins):
                    return plugins
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what} not seen; /debug/plugins: {plugins}") from None


async def refusals_counted(wasmxds: WasmxdsProcess) -> float:
    text = (await admin_get(wasmxds, "/metrics")).text
    pattern = r'^wasmxds_module_fetches_total\{result="signature_invalid",scheme="oci"\} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def expected_errors(registry: Registry, digests: dict[str, str]) -> dict[str, str]:
    repo = f"oci://{registry.host}/filters/signed"
    return {
        "unsigned": f"not signed: no cosign signature (tag sha256-{digests['unsigned']}.sig)"
        f" in {repo}",
        "other-key": "not signed by a trusted key: 1 signature(s) in"
        f" sha256-{digests['other-key']}.sig were made by other keys",
        "moved": f"is for manifest sha256:{digests['moved']}, not sha256:{digests['moved-to']}"
        " that was pulled: the signature was copied from another image, or the tag was moved"
        " after signing",
    }


@pytest.mark.parametrize("refused", ["unsigned", "other-key", "moved"])
async def test_a_refused_module_gets_the_stand_in_and_a_signed_one_runs(
    tmp_path: Path, upstream: EchoUpstream, refused: str
) -> None:
    """With no last good version a refused image gets the fail-close stand-in (reason
    signature_invalid); pointing the plugin at the signed image runs it in Envoy."""
    trusted, other = Key(tmp_path / "keys", "trusted"), Key(tmp_path / "keys", "other")
    async with running_registry(tmp_path / "registry") as registry:
        digests = await images(registry, tmp_path, trusted, other)
        files = {"p.yaml": plugin(registry, "header-filter", refused, trusted, refused)}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.status_code == 403, timeout=20)
            plugins = await until_plugins(
                s.wasmxds,
                lambda p: p.get("default.header-filter", {}).get("served") == "stand-in",
                "the stand-in",
            )
            entry = plugins["default.header-filter"]
            print(f"{refused}: {entry['served']}: {entry['module']['error']}")
            assert entry["module"]["state"] == "failed"
            assert entry["module"]["reason"] == "signature_invalid"
            assert expected_errors(registry, digests)[refused] in entry["module"]["error"]
            assert entry["standin"]["kind"] == "deny-all"
            assert await refusals_counted(s.wasmxds) >= 1
            (s.config_dir / "p.yaml").write_text(
                plugin(registry, "header-filter", "signed", trusted, "signed")
            )
            await s.eventually(lambda r: r.headers.get(HEADER) == "signed", timeout=20)
            plugins = await until_plugins(
                s.wasmxds,
                lambda p: p["default.header-filter"]["served"] == "filter",
                "the signed module served",
            )
            assert plugins["default.header-filter"]["module"]["state"] == "ready"


@pytest.mark.parametrize("refused", ["unsigned", "other-key", "moved"])
async def test_a_refused_edit_keeps_the_last_good_module(
    tmp_path: Path, upstream: EchoUpstream, refused: str
) -> None:
    """Editing a running plugin to a refused image keeps the signed version in Envoy, and
    /debug/plugins and the metrics say why; the edit applies once the image is signed."""
    trusted, other = Key(tmp_path / "keys", "trusted"), Key(tmp_path / "keys", "other")
    async with running_registry(tmp_path / "registry") as registry:
        digests = await images(registry, tmp_path, trusted, other)
        files = {"p.yaml": plugin(registry, "header-filter", "signed", trusted, "signed")}
        async with stack(tmp_path, upstream, files, wasmxds_args=ARGS) as s:
            await s.eventually(lambda r: r.headers.get(HEADER) == "signed", timeout=20)
            (s.config_dir / "p.yaml").write_text(
                plugin(registry, "header-filter", refused, trusted, f"edited-{refused}")
            )
            plugins = await until_plugins(
                s.wasmxds,
                lambda p: p["default.header-filter"]["module"].get("reason") == "signature_invalid",
                "the refused edit",
            )
            entry = plugins["default.header-filter"]
            print(f"{refused}: {entry['served']}: {entry['module']['error']}")
            assert entry["served"] == "last_good"
            assert entry["last_good"]["url"] == registry.url("filters/signed", "signed")
            assert expected_errors(registry, digests)[refused] in entry["module"]["error"]
            assert await refusals_counted(s.wasmxds) >= 1
            for _ in range(10):  # still the signed module, while the refusal is retried
                assert (await s.get()).headers.get(HEADER) == "signed"
            if refused == "unsigned":
                # Signing it later is enough: the retry picks the signature up by itself.
                code, _, err = await run_cli(
                    "push", str(tmp_path / "unsigned.wasm"),
                    registry.url("filters/signed", "unsigned"), "--insecure-registry",
                    registry.host, "--sign", str(trusted.private),
                )  # fmt: skip
                assert code == 0, err
                await s.eventually(lambda r: r.headers.get(HEADER) == "edited-unsigned", 20)


async def test_verification_key_flag_requires_signatures_of_every_oci_module(
    tmp_path: Path, upstream: EchoUpstream
) -> None:
    """--verification-key: a plugin without verificationKey still needs a trusted signature."""
    trusted, other = Key(tmp_path / "keys", "trusted"), Key(tmp_path / "keys", "other")
    key_file = tmp_path / "keys" / "trusted.pub"
    key_file.write_text(trusted.public_pem)
    async with running_registry(tmp_path / "registry") as registry:
        await images(registry, tmp_path, trusted, other)
        config = {"response_headers": {HEADER: "flag"}}
        files = {
            "p.yaml": plugin_yaml(
                "header-filter", registry.url("filters/signed", "other-key"), config
            )
        }
        args = (*ARGS, "--verification-key", str(key_file))
        async with stack(tmp_path, upstream, files, wasmxds_args=args) as s:
            await s.eventually(lambda r: r.status_code == 403, timeout=20)
            plugins = await until_plugins(
                s.wasmxds,
                lambda p: p["default.header-filter"]["module"].get("reason") == "signature_invalid",
                "the refusal",
            )
            assert (
                "not signed by a trusted key" in plugins["default.header-filter"]["module"]["error"]
            )
            (s.config_dir / "p.yaml").write_text(
                plugin_yaml("header-filter", registry.url("filters/signed", "signed"), config)
            )
            await s.eventually(lambda r: r.headers.get(HEADER) == "flag", timeout=20)
