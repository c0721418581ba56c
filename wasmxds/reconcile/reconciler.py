"""The stage between sources and the xDS server.

On every debounced change it takes the sources' desired state, resolves each
plugin's module through the cache, translates, and publishes one new snapshot.
A plugin whose module is not settled yet is never referenced half-ready:

- a new plugin stays out of the snapshot (proxies get nothing for it yet);
- an edited plugin keeps serving its previous version until the new module is
  ready (make before break);
- an edit whose module fails (fetch error, checksum, not Wasm, ...) keeps
  serving the plugin's last good version, module and config exactly as they
  were served, while the resolver retries in the background; the edit applies
  by itself once its module is good (each settled fetch triggers another
  reconcile);
- only a plugin with no good version yet gets the fail-strategy stand-in.

The last good versions outlive the process: they are written to
``<cache>/last-good.json`` (:mod:`wasmxds.reconcile.last_good`) whenever they change and
read back at the first reconcile, so a restarted server, or a replica started
after a bad edit on the same cache directory, serves what the others serve
instead of the stand-in (when the module is still in the cache; the purge
keeps it there). A plugin that
leaves the sources keeps its last good version for ``forget_after`` seconds,
so moving it between files (gone from one, then added to another, in two
reconciles) loses nothing; nothing is forgotten before the sources have
loaded, so a restart does not forget everything before the directories are
read. A plugin re-created after the grace starts over: stand-in until its
module is good.

pluginConfig values from Secrets (:mod:`wasmxds.reconcile.configvalues`) are
looked up here, on every pass, and handed to translation; a Secret edit
therefore pushes like any other change. A reference that does not resolve (a
missing Secret or key), or any reference while values may not be sent (no
TLS), is handled like a module failure: the last good version stays (for
plaintext, only one without values from Secrets), else the stand-in. The
last-good file never holds the values: it keeps the WasmPlugin, whose
annotation holds only the references, and a restarted server looks them up
again once the sources have loaded (dropping the entry, with a log line, if
they do not resolve then).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from wasmxds.api.configsecrets import ConfigSecret, config_secret_refs
from wasmxds.api.keys import VerificationKey
from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin
from wasmxds.api.secrets import PullSecret
from wasmxds.api.trafficextension import supersede
from wasmxds.metrics import Metrics
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.types import (
    Failed,
    LocalFile,
    Module,
    ModuleOutcome,
    ModuleRequest,
    Pending,
    Ready,
)
from wasmxds.reconcile.configvalues import ConfigValues, Refusal, resolve_values
from wasmxds.reconcile.last_good import LastGoodFile, SavedGood
from wasmxds.reconcile.requests import LUA_REQUEST, LUA_SOURCE, module_request
from wasmxds.reconcile.staging import Staging
from wasmxds.sources.state import SourceState, TemplateState
from wasmxds.translate.plugins import (
    Delivery,
    InlineDelivery,
    PluginResources,
    SecretConfigMemo,
    lua_resources,
    plugin_resources,
    standin_resources,
)
from wasmxds.translate.snapshot import build_snapshot
from wasmxds.xds.snapshot import Snapshot

__all__ = ["ModuleLookup", "PluginStatus", "Reconciler", "Serving"]

log = structlog.get_logger(__name__)


class ModuleLookup(Protocol):
    """What reconcile needs of the module resolver (a :class:`ModuleResolver` in production)."""

    def resolve(self, request: ModuleRequest) -> ModuleOutcome: ...

    def retain(self, requests: Iterable[ModuleRequest], in_use: Iterable[Module] = ()) -> None: ...


class Serving(enum.StrEnum):
    """What proxies get for a plugin now."""

    FILTER = "filter"
    # An earlier version (module and config), while the current one's module is
    # pending or failed.
    LAST_GOOD = "last_good"
    STANDIN = "stand-in"
    NOT_YET = "not yet"


@dataclass(frozen=True, slots=True)
class PluginStatus:
    """What the last reconcile decided for one plugin (for logs, debug and status).

    ``served`` is what proxies get under the plugin's name; with
    ``serving=LAST_GOOD`` it belongs to an earlier version of the plugin
    (``served.plugin``), whose module is ``served_module``. ``unavailable`` says
    why this version's module cannot be served (a failed fetch, or a module the
    delivery mode cannot carry), empty when it can. ``config`` is what became of
    its pluginConfig values from Secrets (None when it references none);
    ``config.error`` says why they cannot be served.
    """

    plugin: WasmPlugin
    request: ModuleRequest
    outcome: ModuleOutcome
    served: PluginResources | None
    served_module: Module | None = None
    serving: Serving = Serving.NOT_YET
    unavailable: str = ""
    config: ConfigValues | None = None


@dataclass(frozen=True, slots=True)
class _Good:
    """A plugin version that was served with its real filter, and the module behind it."""

    resources: PluginResources
    module: Module | None


class Reconciler:
    """Turns source state into published snapshots (see module docstring)."""

    def __init__(
        self,
        *,
        sources: Sequence[Callable[[], SourceState]],
        resolver: ModuleLookup,
        delivery: Delivery,
        runtime: str,
        publish: Callable[[Snapshot], int],
        root_namespace: str,
        templates: Callable[[], TemplateState] | None = None,
        initial_wait: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        pull_secrets: PullSecrets | None = None,
        change_seen: Callable[[], float | None] = lambda: None,
        metrics: Metrics | None = None,
        saved: LastGoodFile | None = None,
        find_module: Callable[[str], Module | None] | None = None,
        sources_loaded: Callable[[], bool] = lambda: True,
        forget_after: float = 60.0,
        verification_keys: Sequence[VerificationKey] = (),
        module_verified: Callable[[ModuleRequest, str], bool] | None = None,
        config_secrets_allowed: bool = False,
        staging: Staging | None = None,
    ) -> None:
        self._sources = sources
        self._resolver = resolver
        self._delivery = delivery
        self._runtime = runtime
        self._publish = publish
        self._templates = templates
        self._snapshot = Snapshot.empty(root_namespace)
        self._served: dict[str, PluginResources] = {}
        # The module behind each served resource, so the purge never deletes one in use.
        self._served_modules: dict[str, Module] = {}
        # Per resource name, the latest version served with its real filter: what an
        # edit whose module fails keeps serving.
        self._last_good: dict[str, _Good] = {}
        # The persisted copy of _last_good, read back once, at the first reconcile.
        self._saved = saved if saved is not None else LastGoodFile()
        self._find_module = find_module
        self._restored = False
        self._sources_loaded = sources_loaded
        self._forget_after = forget_after
        # --verification-key: every module must be signed by one of these.
        self._verification_keys = tuple(verification_keys)
        # Whether a module (digest) was pulled, and so verified, under a request's
        # signature requirement: a persisted last good version must have been.
        self._module_verified = module_verified
        # Resource name → when its plugin was first seen missing from the loaded sources.
        self._absent_since: dict[str, float] = {}
        self._pull_secrets = pull_secrets
        # Whether pluginConfig values from Secrets may be sent at all (TLS, or the flag).
        self._config_secrets_allowed = config_secrets_allowed
        self._config_secrets: dict[ObjectKey, ConfigSecret] = {}
        # Filters with values from Secrets, reused while plugin and Secrets stay the same.
        self._config_memo = SecretConfigMemo()
        # Persisted last good versions that take values from Secrets: restored once the
        # sources have loaded and the values can be looked up (the file never holds them).
        self._awaiting_values: dict[str, tuple[SavedGood, Module]] = {}
        # Staged rollouts (wasmxds.rollout); None: every change goes everywhere at once.
        self._staging = staging
        self._published = False
        self._clock = clock
        self._first_deadline = clock() + initial_wait
        self._change_seen = change_seen
        self._metrics = metrics
        self.status: dict[ObjectKey, PluginStatus] = {}
        self.problems: tuple[Problem, ...] = ()
        # WasmPlugins not served because a TrafficExtension of the same namespace/name
        # supersedes them (wasmxds.api.trafficextension.supersede), with the warning.
        self.superseded: dict[ObjectKey, Problem] = {}
        if metrics is not None:
            metrics.live_gauge(
                "wasmxds_plugins",
                "WasmPlugins by what proxies get (filter, last_good, stand-in, not yet) "
                "and the state of their current module",
                ("served", "module"),
                self._plugin_counts,
            )
            metrics.live_gauge(
                "wasmxds_plugin_config_secrets",
                "WasmPlugins that take pluginConfig values from Secrets, by state: resolved,"
                " missing (a Secret, its opt-in label or a key not found), too_large (over the"
                " size limits) or plaintext (refused: xDS is not TLS)",
                ("state",),
                self._config_counts,
            )

    def _config_counts(self) -> list[tuple[tuple[str, ...], float]]:
        counts = Counter(
            entry.config.refusal.value if entry.config.refusal else "resolved"
            for entry in self.status.values()
            if entry.config is not None
        )
        states = ("resolved", *(refusal.value for refusal in Refusal))
        return [((state,), float(counts[state])) for state in states]

    def _plugin_counts(self) -> list[tuple[tuple[str, ...], float]]:
        counts = Counter(
            (entry.serving.value, _module_state(entry.outcome)) for entry in self.status.values()
        )
        return [(labels, float(count)) for labels, count in sorted(counts.items())]

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def kept_modules(self) -> set[str]:
        """Digests of every last good module, persisted ones included: the purge keeps them."""
        digests = {saved.digest for saved in self._saved.entries.values()}
        digests.update(g.module.digest for g in self._last_good.values() if g.module is not None)
        if self._staging is not None:
            digests |= self._staging.kept_modules()
        return digests

    async def _restore(self) -> None:
        """Make the persisted last good versions usable again (the first reconcile only)."""
        if self._staging is not None:
            await self._staging.restore(
                self._find_module,
                self._prepare_delivery,
                runtime=self._runtime,
                usable=self._verified_before,
            )
        found: dict[str, tuple[SavedGood, Module]] = {}
        for name, saved in self._saved.entries.items():
            if name in self._last_good:
                continue
            module = None
            if self._find_module is not None:
                # A stat: off the event loop, like all disk I/O.
                module = await asyncio.to_thread(self._find_module, saved.digest)
            if module is None:
                log.warning(
                    "reconcile.last_good_module_missing",
                    plugin=str(saved.plugin.key),
                    digest=saved.digest,
                    action="dropped; the plugin gets its stand-in while its module fails",
                )
                continue
            if not self._verified_before(saved):
                log.warning(
                    "reconcile.last_good_unverified",
                    plugin=str(saved.plugin.key),
                    digest=saved.digest,
                    action="dropped: it was not verified under the signature requirement in"
                    " force now (--verification-key, verificationKey); the plugin gets its"
                    " stand-in until its module verifies",
                )
                continue
            if config_secret_refs(saved.plugin.annotations):
                self._awaiting_values[name] = (saved, module)
                continue
            found[name] = (saved, module)
        if not found:
            return
        delivery = await self._prepare_delivery([Ready(module) for _, module in found.values()])
        for name, (saved, module) in found.items():
            resources = plugin_resources(
                saved.plugin, Ready(module), delivery, runtime=self._runtime
            )
            if resources.standin is not None:
                log.warning(
                    "reconcile.last_good_unusable",
                    plugin=str(saved.plugin.key),
                    error=resources.reason,
                )
                continue
            self._last_good[name] = _Good(resources, module)
        log.info("reconcile.last_good_restored", plugins=len(found))

    def _verified_before(self, saved: SavedGood) -> bool:
        """Whether a persisted version may be served under today's signature requirement
        (the server's keys may have been added since it was saved)."""
        request = module_request(saved.plugin, self._verification_keys)
        if not request.verify:
            return True
        return self._module_verified is not None and self._module_verified(request, saved.digest)

    async def _restore_with_values(self) -> None:
        """Restore persisted last good versions that take values from Secrets, once the
        sources have loaded; an entry whose values do not resolve then is dropped."""
        if not self._awaiting_values or not self._sources_loaded():
            return
        awaiting, self._awaiting_values = self._awaiting_values, {}
        delivery = await self._prepare_delivery([Ready(module) for _, module in awaiting.values()])
        for name, (saved, module) in awaiting.items():
            if name in self._last_good:
                continue
            config = resolve_values(
                saved.plugin, self._config_secrets, allowed=self._config_secrets_allowed
            )
            if config is not None and config.error:
                log.warning(
                    "reconcile.last_good_values_missing",
                    plugin=str(saved.plugin.key),
                    error=config.error,
                    action="dropped; the plugin gets its stand-in until it can be served",
                )
                continue
            resources = plugin_resources(
                saved.plugin,
                Ready(module),
                delivery,
                runtime=self._runtime,
                secret_values=config.values if config is not None else (),
            )
            if resources.standin is None:
                self._last_good[name] = _Good(resources, module)
                log.info("reconcile.last_good_restored", plugins=1, plugin=str(saved.plugin.key))

    def _forget_expired(self) -> None:
        """Drop last good versions of plugins absent for the whole grace (before using any)."""
        now = self._clock()
        for name, since in list(self._absent_since.items()):
            if now - since >= self._forget_after:
                del self._absent_since[name]
                good = self._last_good.pop(name, None)
                if good is not None:
                    log.info("reconcile.last_good_forgotten", plugin=str(good.resources.plugin.key))

    def _keep_absent(self, last_good: dict[str, _Good], desired: Iterable[str]) -> None:
        """Carry last good versions of plugins missing from the sources through the grace."""
        present = set(desired)
        for name in present:
            self._absent_since.pop(name, None)
        loaded = self._sources_loaded()
        now = self._clock()
        for name, good in self._last_good.items():
            if name in present:
                continue
            if loaded:
                since = self._absent_since.setdefault(name, now)
                if now - since >= self._forget_after:
                    self._absent_since.pop(name, None)
                    log.info("reconcile.last_good_forgotten", plugin=str(good.resources.plugin.key))
                    continue
            last_good[name] = good

    async def _persist(self, last_good: dict[str, _Good]) -> None:
        # The WasmPlugin only: values from Secrets stay in memory (its annotation holds
        # the references, looked up again after a restart).
        entries = {name: saved for name, (saved, _) in self._awaiting_values.items()}
        entries.update(
            (name, SavedGood(good.resources.plugin, good.module.digest))
            for name, good in last_good.items()
            if good.module is not None  # file:// modules are not in the cache
        )
        self._saved.replace(dict(sorted(entries.items())))
        await self._saved.flush()

    @property
    def published(self) -> bool:
        return self._published

    def _desired(self) -> dict[ObjectKey, WasmPlugin]:
        plugins: dict[ObjectKey, WasmPlugin] = {}
        secrets: dict[ObjectKey, PullSecret] = {}
        config_secrets: dict[ObjectKey, ConfigSecret] = {}
        problems: list[Problem] = []
        for source in self._sources:
            state = source()
            problems.extend(state.problems)
            for key, plugin in state.plugins.items():
                plugins.setdefault(key, plugin)
            for key, secret in state.secrets.items():
                secrets.setdefault(key, secret)
            for key, config_secret in state.config_secrets.items():
                config_secrets.setdefault(key, config_secret)
        self._config_secrets = config_secrets
        if self._pull_secrets is not None and self._pull_secrets.update(secrets):
            log.info("reconcile.pull_secrets", secrets=len(secrets))
        # After merging: the two kinds of one name may come from different sources.
        plugins, superseded = supersede(plugins)
        for key, problem in sorted(superseded.items()):
            # Once per change, not every pass (the problem stays listed with the others).
            if self.superseded.get(key) != problem:
                log.warning("reconcile.superseded", plugin=str(key), error=problem.message)
        self.superseded = superseded
        problems.extend(superseded.values())
        self.problems = tuple(problems)
        return plugins

    async def _prepare_delivery(self, outcomes: Iterable[ModuleOutcome]) -> Delivery:
        """For inline delivery, load the bytes of the modules about to be translated."""
        delivery = self._delivery
        if not isinstance(delivery, InlineDelivery):
            return delivery
        wanted = {
            o.module.digest: o.module
            for o in outcomes
            if isinstance(o, Ready)
            and isinstance(o.module, Module)
            and o.module.size <= delivery.max_size
        }
        blobs = {d: b for d, b in delivery.blobs.items() if d in wanted}
        for digest, module in wanted.items():
            if digest not in blobs:
                blobs[digest] = await asyncio.to_thread(module.path.read_bytes)
        self._delivery = InlineDelivery(delivery.max_size, blobs)
        return self._delivery

    @staticmethod
    def _log_unavailable(
        plugin: WasmPlugin,
        request: ModuleRequest,
        outcome: Ready | Failed,
        unavailable: PluginResources,
        serving: Serving,
    ) -> None:
        """Warn that the plugin's module cannot be used, and what proxies get instead."""
        log.warning(
            # Events keep their names (tests and alerting match on them).
            "reconcile.last_good" if serving is Serving.LAST_GOOD else "reconcile.standin",
            plugin=str(plugin.key),
            url=request.display_url,
            serving=serving.value,
            standin=unavailable.standin.value
            if unavailable.standin and serving is Serving.STANDIN
            else None,
            error=unavailable.reason,
            retry_in=round(outcome.next_retry_in, 1) if isinstance(outcome, Failed) else None,
        )

    def _config_refused(
        self,
        plugin: WasmPlugin,
        config: ConfigValues,
        good: _Good | None,
        served: dict[str, PluginResources],
        served_modules: dict[str, Module],
    ) -> Serving:
        """Serve what a plugin whose values from Secrets cannot be served gets instead.

        The last good version, unless values may not be sent at all and it holds
        some; else the fail-strategy stand-in.
        """
        name = plugin.resource_name
        if good is not None and (
            self._config_secrets_allowed or not good.resources.has_secret_values
        ):
            served[name] = good.resources
            if good.module is not None:
                served_modules[name] = good.module
            serving = Serving.LAST_GOOD
        else:
            served[name] = standin_resources(plugin, config.error)
            serving = Serving.STANDIN
        log.warning(
            "reconcile.config_secrets_unavailable",
            plugin=str(plugin.key),
            refusal=config.refusal.value if config.refusal else None,
            serving=serving.value,
            error=config.error,
        )
        return serving

    @staticmethod
    def _lua(
        plugin: WasmPlugin,
        code: str,
        served: dict[str, PluginResources],
        last_good: dict[str, _Good],
    ) -> PluginStatus:
        """A Lua TrafficExtension: its filter, with nothing to fetch."""
        fresh = lua_resources(plugin, code)
        served[plugin.resource_name] = fresh
        last_good[plugin.resource_name] = _Good(fresh, None)
        return PluginStatus(
            plugin, LUA_REQUEST, Ready(LocalFile(LUA_SOURCE)), fresh, None, Serving.FILTER
        )

    async def reconcile(self) -> None:
        started = time.perf_counter()
        if not self._restored:
            self._restored = True
            await self._restore()
        self._forget_expired()
        desired = self._desired()
        await self._restore_with_values()
        requests = {
            key: module_request(plugin, self._verification_keys)
            for key, plugin in desired.items()
            if plugin.lua is None  # Lua has no module
        }

        served: dict[str, PluginResources] = {}
        served_modules: dict[str, Module] = {}
        last_good: dict[str, _Good] = {}
        pending: list[str] = []
        status: dict[ObjectKey, PluginStatus] = {}
        outcomes = {key: self._resolver.resolve(request) for key, request in requests.items()}
        delivery = await self._prepare_delivery(outcomes.values())
        for key, plugin in sorted(desired.items()):
            name = plugin.resource_name
            if plugin.lua is not None:
                status[key] = self._lua(plugin, plugin.lua, served, last_good)
                continue
            request = requests[key]
            outcome = outcomes[key]
            good = self._last_good.get(name)
            if good is not None:
                last_good[name] = good
            serving = Serving.NOT_YET
            unavailable = ""
            config = resolve_values(
                plugin, self._config_secrets, allowed=self._config_secrets_allowed
            )
            if config is not None and config.error:
                serving = self._config_refused(plugin, config, good, served, served_modules)
            elif isinstance(outcome, Pending):
                previous = self._served.get(name)
                if previous is not None:
                    served[name] = previous
                    if name in self._served_modules:
                        served_modules[name] = self._served_modules[name]
                    serving = Serving.STANDIN if previous.standin else Serving.LAST_GOOD
                elif good is not None:
                    # Not served by this process yet (a restart, or a plugin back within
                    # the grace): make before break with the last good version.
                    served[name] = good.resources
                    if good.module is not None:
                        served_modules[name] = good.module
                    serving = Serving.LAST_GOOD
                else:
                    pending.append(name)
            else:
                fresh = plugin_resources(
                    plugin,
                    outcome,
                    delivery,
                    runtime=self._runtime,
                    secret_values=config.values if config is not None else (),
                    values_version=config.version if config is not None else "",
                    memo=self._config_memo,
                )
                if fresh.standin is None:
                    served[name] = fresh
                    serving = Serving.FILTER
                    if isinstance(outcome, Ready) and isinstance(outcome.module, Module):
                        served_modules[name] = outcome.module
                    last_good[name] = _Good(fresh, served_modules.get(name))
                elif good is not None:
                    unavailable = fresh.reason
                    # Module unavailable after an edit: exactly what was served before.
                    served[name] = good.resources
                    if good.module is not None:
                        served_modules[name] = good.module
                    serving = Serving.LAST_GOOD
                    self._log_unavailable(plugin, request, outcome, fresh, serving)
                else:
                    unavailable = fresh.reason
                    served[name] = fresh
                    serving = Serving.STANDIN
                    self._log_unavailable(plugin, request, outcome, fresh, serving)
            status[key] = PluginStatus(
                plugin,
                request,
                outcome,
                served.get(name),
                served_modules.get(name),
                serving,
                unavailable,
                config,
            )
        staged = {}
        if self._staging is not None:
            plan = self._staging.plan(served, served_modules)
            staged = plan.staged
            for key, entry in status.items():
                # Rolled back: the previous version is served (the rollout says why).
                if self._staging.rolled_back(key) is not None:
                    status[key] = dataclasses.replace(
                        entry,
                        served=served.get(key.resource_name),
                        served_module=served_modules.get(key.resource_name),
                        serving=Serving.LAST_GOOD,
                    )
        self._keep_absent(last_good, (plugin.resource_name for plugin in desired.values()))
        self._last_good = last_good
        # After resolving: new requests exist now, and what is served is known (and kept),
        # and so are the last good modules (a later failing edit falls back to them).
        in_use = {m.digest: m for m in served_modules.values()}
        if self._staging is not None:
            for module in plan.modules.values():
                in_use.setdefault(module.digest, module)
        for good in last_good.values():
            if good.module is not None:
                in_use.setdefault(good.module.digest, good.module)
        self._resolver.retain(requests.values(), in_use=in_use.values())
        self._served_modules = served_modules
        self._config_memo.sweep()
        await self._persist(last_good)
        if self._staging is not None:
            await self._staging.flush()

        templates = self._templates() if self._templates is not None else TemplateState()
        self.problems += templates.problems
        snapshot = build_snapshot(
            served.values(),
            pending=pending,
            previous=self._snapshot,
            templates=templates.templates,
            changed_at=self._change_seen(),
            staged=staged,
        )
        self._served = served
        self.status = status
        if self._published and snapshot.version == self._snapshot.version:
            return
        if not self._published and pending and self._clock() < self._first_deadline:
            # The first snapshot waits for the first fetches (bounded): a proxy that
            # connects now must not get listeners without plugins that merely have
            # not finished downloading, nor lose ones it already runs.
            log.info("reconcile.waiting_for_modules", pending=len(pending))
            return
        self._published = True
        self._snapshot = snapshot
        woken = self._publish(snapshot)
        if self._metrics is not None:
            self._metrics.reconcile_duration.observe(time.perf_counter() - started)
        log.info(
            "reconcile.pushed",
            version=snapshot.version,
            plugins=len(served),
            pending=len(pending),
            streams=woken,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )


def _module_state(outcome: ModuleOutcome) -> str:
    if isinstance(outcome, Ready):
        return "ready" if outcome.stale is None else "stale"
    return "failed" if isinstance(outcome, Failed) else "pending"
