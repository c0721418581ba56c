"""``wasmxds validate --fetch``: fetch and verify every plugin's module the way ``serve`` does.

The modules go through the server's own pieces (the module resolver, the HTTP
and OCI fetchers, the content-addressed store) into a temporary cache that is
deleted afterwards, so a module that passes here passes the same checks in
``serve``: reachable, within the size limit, Wasm, matching ``sha256``, and
passing the pre-flight check (a module Envoy's proxy-wasm host could not run
is a problem; one whose callbacks do not match the plugin's ``spec.type`` is a
warning). ``file://`` modules are paths on the proxies and are not checked.
Each plugin whose module fails becomes a problem at the plugin's
``path:line``, for CI to refuse a commit before it lands. Within one fetch the
fetchers retry as in ``serve`` (a dropped connection or a server error, say),
under the same progress limits; a fetch that has failed is not tried
again later, as ``serve``'s background retry would: a CI run wants the
answer, not a wait. A cancelled check (SIGTERM, Ctrl-C) deletes its
temporary cache before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wasmxds.api.objects import ObjectKey, Problem, Severity, WasmPlugin
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.secrets import PullSecret
from wasmxds.backoff import Backoff
from wasmxds.errors import (
    ChecksumMismatchError,
    DigestMismatchError,
    MissingPullSecretError,
    ModuleError,
    RegistryAuthError,
)
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.index import ModuleIndex
from wasmxds.modules.oci.fetcher import DEFAULT_OCI_SETTINGS, OciFetcher
from wasmxds.modules.preflight import Preflight
from wasmxds.modules.proxyabi import plugin_type_warning
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.settings import FetcherSettings
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Failed, Module, ModuleOutcome, ModuleRequest, Pending
from wasmxds.reconcile import module_request

__all__ = ["FetchOptions", "check_modules"]

# The resolver retries a failed fetch after this long; the check is over well before.
_NO_RETRY = Backoff(initial=3600.0, max=3600.0)


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """The fetch settings ``serve`` would use, plus how long the whole check may take."""

    fetch: FetcherSettings = field(default_factory=FetcherSettings)
    timeout: float = 120.0
    max_parallel: int = 4


def _field(error: ModuleError) -> str:
    """The spec field a user changes to fix ``error``."""
    if isinstance(error, ChecksumMismatchError | DigestMismatchError):
        return "spec.sha256"
    if isinstance(error, MissingPullSecretError | RegistryAuthError):
        return "spec.imagePullSecret"
    return "spec.url"


def _problem(plugin: WasmPlugin, message: str) -> Problem:
    if plugin.key.kind and message.startswith("spec."):
        # A TrafficExtension keeps its module fields under spec.wasm.
        message = "spec.wasm." + message.removeprefix("spec.")
    return Problem(plugin.origin.path, plugin.origin.line, message)


async def _settle(
    resolver: ModuleResolver,
    requests: Sequence[ModuleRequest],
    changed: asyncio.Event,
    deadline: float,
) -> list[ModuleOutcome]:
    """Each request's first settled outcome (or Pending when the deadline passed first)."""
    while True:
        changed.clear()
        outcomes = [resolver.resolve(request) for request in requests]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(isinstance(o, Pending) for o in outcomes):
            return outcomes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await changed.wait()


async def check_modules(
    plugins: Sequence[WasmPlugin],
    secrets: Mapping[ObjectKey, PullSecret],
    options: FetchOptions,
) -> list[Problem]:
    """Fetch and verify each plugin's module; one problem per plugin whose module fails."""
    plugins = [plugin for plugin in plugins if plugin.lua is None]  # Lua has no module
    if not plugins:
        return []
    settings = options.fetch
    requests = [module_request(plugin) for plugin in plugins]
    changed = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="wasmxds-validate-") as cache:
        store = ModuleStore(Path(cache))
        index = ModuleIndex()
        pull_secrets = PullSecrets(secrets)
        preflight = Preflight()
        async with HttpFetcher(store=store, settings=settings) as http:
            oci = OciFetcher(
                store=store,
                index=index,
                settings=dataclasses.replace(settings, tries=DEFAULT_OCI_SETTINGS.tries),
                pull_secrets=pull_secrets,
            )
            resolver = ModuleResolver(
                store=store,
                fetchers={"http": http, "https": http, "oci": oci},
                on_change=changed.set,
                retry=_NO_RETRY,
                max_parallel=options.max_parallel,
                index=index,
                pull_secrets=pull_secrets,
                preflight=preflight,
            )
            running = asyncio.create_task(resolver.run(), name="validate fetches")
            try:
                outcomes = await _settle(
                    resolver, requests, changed, time.monotonic() + options.timeout
                )
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
                await oci.aclose()
                preflight.close()
    problems = []
    for plugin, request, outcome in zip(plugins, requests, outcomes, strict=True):
        if isinstance(outcome, Failed):
            error = outcome.error
            problems.append(_problem(plugin, f"{_field(error)}: module unavailable: {error}"))
        elif isinstance(outcome, Pending):
            problems.append(
                _problem(
                    plugin,
                    f"spec.url: module unavailable: {request.display_url}: not fetched within"
                    f" {options.timeout:g}s (--fetch-timeout sets how long to wait)",
                )
            )
        elif isinstance(outcome.module, Module):
            abi = outcome.module.abi
            kind = "NETWORK" if plugin.spec.type == wasm_pb2.NETWORK else "HTTP"
            warning = plugin_type_warning(kind, abi) if abi is not None else ""
            if warning:
                problems.append(
                    Problem(plugin.origin.path, plugin.origin.line, warning, Severity.WARNING)
                )
    return problems
