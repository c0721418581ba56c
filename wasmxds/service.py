"""Wire the stages together and supervise them (``wasmxds serve``).

:meth:`Service.open` reads what the cache directory kept (the module index and
the last good versions) and builds one stage at a time, in the order data
flows: modules, sources, xDS, reconcile, admin. :meth:`Service.run` starts each
stage as a named task under a :class:`~wasmxds.supervisor.Supervisor`: a stage
that returns or fails before stop takes the whole service down with a clear
log line rather than leaving a half-working control plane. Shutdown has a
fixed order: stop taking xDS streams and close the open ones within the grace
period, then stop the sources, the debouncer, the module fetches and the admin
server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc

import structlog

from wasmxds.admin.server import AdminServer, AdminState, AdminTls, Pulse
from wasmxds.admin.views import Readiness
from wasmxds.api.objects import ObjectKey
from wasmxds.api.proto import wasm_pb2
from wasmxds.api.rollout import RolloutPolicy
from wasmxds.backoff import Backoff
from wasmxds.bootstrap import MODULES_CLUSTER
from wasmxds.debounce import Debouncer
from wasmxds.health.metrics_service import MetricsService
from wasmxds.health.verdict import FleetHealth
from wasmxds.heap import HeapFreezer, StreamCounts
from wasmxds.metrics import HealthMetrics, Metrics, StreamMetrics
from wasmxds.modules.access import puller
from wasmxds.modules.http import HttpFetcher
from wasmxds.modules.index import INDEX_FILE, ModuleIndex
from wasmxds.modules.oci.fetcher import DEFAULT_OCI_SETTINGS, OciFetcher
from wasmxds.modules.preflight import Preflight
from wasmxds.modules.proxyabi import plugin_type_warning
from wasmxds.modules.purge import CachePurger
from wasmxds.modules.resolver import ModuleResolver
from wasmxds.modules.secrets import PullSecrets
from wasmxds.modules.slots import STALLED_PULL_SECONDS
from wasmxds.modules.store import ModuleStore
from wasmxds.modules.types import Module, Ready
from wasmxds.reconcile import Reconciler
from wasmxds.reconcile.kubestatus import PluginReport, StatusWriter
from wasmxds.reconcile.last_good import LAST_GOOD_FILE, LastGoodFile
from wasmxds.reconcile.reports import plugin_reports
from wasmxds.reconcile.staging import ROLLOUT_STABLE_FILE, Staging
from wasmxds.rollout import Rollouts
from wasmxds.rollout.state import ROLLOUTS_FILE, RolloutFile
from wasmxds.settings import ModuleDelivery, ServeSettings, fetcher_settings
from wasmxds.sources.directory import DirectorySource
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.protocol import ClientConfig
from wasmxds.sources.kubernetes import KubernetesSource
from wasmxds.sources.state import SourceState, TemplateState
from wasmxds.sources.templates import TemplateSource
from wasmxds.supervisor import Supervisor
from wasmxds.translate.plugins import Delivery, InlineDelivery, LocalDelivery, RemoteDelivery
from wasmxds.xds.identity import IdentityPolicy, parse_identity_pattern
from wasmxds.xds.server import TlsFiles, XdsServer

__all__ = ["Service"]

log = structlog.get_logger(__name__)


def _delivery(settings: ServeSettings) -> Delivery:
    match settings.module_delivery:
        case ModuleDelivery.REMOTE:
            assert settings.module_base_url is not None  # checked when flags are parsed
            return RemoteDelivery(settings.module_base_url, MODULES_CLUSTER)
        case ModuleDelivery.INLINE:
            return InlineDelivery(settings.inline_max_size)
        case _:
            return LocalDelivery(settings.cache_dir, settings.module_dir_for_proxies)


def admin_tls(settings: ServeSettings) -> AdminTls | None:
    """HTTPS (and client certificates) for the admin port, if asked for."""
    if settings.admin_tls_cert is None or settings.admin_tls_key is None:
        return None
    return AdminTls(settings.admin_tls_cert, settings.admin_tls_key, settings.admin_client_ca)


class Service:
    """All of wasmxds in one object: :meth:`open` it, then :meth:`run` until ``stop`` is set."""

    def __init__(
        self, settings: ServeSettings, *, index: ModuleIndex, last_good: LastGoodFile
    ) -> None:
        """Build every stage from ``settings`` and what the cache kept; nothing runs yet."""
        self.settings = settings
        self.metrics = Metrics()
        self.module_arrived = Pulse()
        self.xds_started = asyncio.Event()
        self.admin_started = asyncio.Event()
        self.debouncer = Debouncer(
            after=settings.debounce_after, max_wait=settings.debounce_max, metrics=self.metrics
        )
        self._build_modules(index)
        self._build_sources()
        self._build_rollouts()
        self._build_xds()
        self._build_health()
        self._build_reconcile(last_good)
        self._build_admin()

    @classmethod
    async def open(cls, settings: ServeSettings) -> Service:
        """Create the cache directory, read what it kept, and build the service."""
        index, last_good = await asyncio.to_thread(_read_cache, settings)
        log.info("modules.index_loaded", path=str(index.path), refs=len(index))
        return cls(settings, index=index, last_good=last_good)

    def _build_modules(self, index: ModuleIndex) -> None:
        """Fetchers, the content-addressed store and its index, the resolver, the purger."""
        settings = self.settings
        self.index = index
        self.store = ModuleStore(settings.cache_dir)
        fetch_settings = fetcher_settings(settings)
        self.http = HttpFetcher(store=self.store, settings=fetch_settings)
        self.pull_secrets = PullSecrets()
        self.oci = OciFetcher(
            store=self.store,
            index=self.index,
            settings=dataclasses.replace(fetch_settings, tries=DEFAULT_OCI_SETTINGS.tries),
            pull_secrets=self.pull_secrets,
            verified_ttl=settings.module_access_ttl,
        )
        # No module reaches a proxy before wasmtime checked it against Envoy's ABI (--preflight).
        self.preflight = Preflight() if settings.preflight == "on" else None
        # (plugin, module digest, type) already warned about: each mismatch is logged once.
        self._type_warned: set[tuple[ObjectKey, str, int]] = set()
        self.resolver = ModuleResolver(
            store=self.store,
            fetchers={"http": self.http, "https": self.http, "oci": self.oci},
            index=self.index,
            pull_secrets=self.pull_secrets,
            max_parallel=settings.max_parallel_pulls,
            max_per_host=settings.max_pulls_per_host,
            lend_stalled_after=STALLED_PULL_SECONDS,
            on_fetched=self._fetched,
            metrics=self.metrics,
            access_ttl=settings.module_access_ttl,
            preflight=self.preflight,
            on_change=self.debouncer.trigger,
            retry=Backoff(
                initial=min(1.0, settings.fetch_retry_max),
                factor=2.0,
                max=settings.fetch_retry_max,
                jitter=0.1,
            ),
        )
        self.purger = CachePurger(
            store=self.store,
            index=self.index,
            # Last good modules too, persisted ones included (before the first reconcile).
            in_use=lambda: self.resolver.in_use() | self.reconciler.kept_modules(),
            expiry=settings.module_expiry,
            max_bytes=settings.cache_max_bytes,
        )

    def _build_sources(self) -> None:
        """Directories, the cluster (and its status writer), listener templates."""
        settings = self.settings
        self.source = DirectorySource(settings.config_dirs, on_change=self.debouncer.trigger)
        if not settings.config_dirs:
            self.source.loaded.set()  # Kubernetes only: no directories to wait for
        self.kube_client: KubeClient | None = None
        self.kubernetes: KubernetesSource | None = None
        self.status_writer: StatusWriter | None = None
        if settings.kubernetes:
            self.kube_client = KubeClient(ClientConfig(kubeconfig=settings.kubeconfig))
            self.kubernetes = KubernetesSource(
                self.kube_client, namespaces=settings.namespaces, on_change=self.debouncer.trigger
            )
            if settings.write_status:
                self.status_writer = StatusWriter(
                    self.kube_client, objects=self.kubernetes.observed, reports=self._plugin_reports
                )
        self.templates = (
            TemplateSource(settings.listener_dirs, on_change=self.debouncer.trigger)
            if settings.listener_dirs
            else None
        )

    def _build_xds(self) -> None:
        settings = self.settings
        tls = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = TlsFiles(settings.tls_cert, settings.tls_key, settings.client_ca)
        self.xds = XdsServer(
            address=settings.xds_address,
            root_namespace=settings.root_namespace,
            max_resource_names=settings.max_resource_names,
            tls=tls,
            events=StreamMetrics(self.metrics),
            rejections=self.rollouts,
            node_identity=(
                IdentityPolicy(settings.trust_domains)
                if settings.identity_from_certificate
                else None
            ),
        )
        xds = self.xds
        self.heap = HeapFreezer(lambda: StreamCounts(xds.streams_opened, xds.streams_closed))

    def _build_health(self) -> None:
        """Envoy's metrics service on the xDS port, feeding the proxies' health figures."""
        settings = self.settings
        self.health = FleetHealth()
        self.metrics_service = MetricsService(
            self.health,
            xds_identities=self.xds.node_identities,
            # Health reports count only from the identity the node's xDS stream proved.
            identity=(
                IdentityPolicy(settings.trust_domains)
                if settings.identity_from_certificate
                else None
            ),
            events=HealthMetrics(self.metrics, lambda: self.metrics_service.open_streams),
        )
        self.xds.add_service(self.metrics_service.handlers())

    def _build_rollouts(self) -> None:
        """The staged-rollout engine and what it kept (small files, read once at start)."""
        settings = self.settings
        cache = settings.cache_dir
        self.rollouts = Rollouts(
            default=RolloutPolicy(settings.rollout_steps, settings.rollout_interval),
            root_namespace=settings.root_namespace,
            sessions=lambda: self.xds.sessions,
            changed=self.debouncer.trigger,
            saved=RolloutFile.load(cache / ROLLOUTS_FILE),
            metrics=self.metrics,
        )
        self.staging = Staging(self.rollouts, LastGoodFile.load(cache / ROLLOUT_STABLE_FILE))

    def _build_reconcile(self, last_good: LastGoodFile) -> None:
        """Sources and modules in, a snapshot for the xDS server out."""
        settings = self.settings
        self.last_good = last_good
        # Rollouts roll back on the proxies' own health signals too.
        self.rollouts.health = self.health
        self.reconciler = Reconciler(
            # First source wins on duplicates: directories before the cluster.
            sources=[lambda: self.source.state, self._kubernetes_state],
            resolver=self.resolver,
            delivery=_delivery(settings),
            runtime=settings.wasm_runtime,
            publish=self.xds.publish,
            root_namespace=settings.root_namespace,
            pull_secrets=self.pull_secrets,
            templates=self._template_state if self.templates is not None else None,
            initial_wait=settings.initial_fetch_wait,
            change_seen=lambda: self.debouncer.window_opened_at,
            metrics=self.metrics,
            saved=self.last_good,
            find_module=self.store.get,
            sources_loaded=lambda: self.readiness().sources_loaded,
            # One xDS port: values from Secrets go out only if it is TLS, or if told to.
            config_secrets_allowed=settings.tls_cert is not None
            or settings.allow_secrets_in_plaintext,
            verification_keys=settings.verification_keys,
            module_verified=lambda request, digest: self.index.pulled_by(digest, puller(request)),
            staging=self.staging,
        )
        if settings.verification_keys:
            log.info(
                "modules.signatures_required",
                keys=[str(key) for key in settings.verification_keys],
            )
        if settings.allow_secrets_in_plaintext and settings.tls_cert is None:
            log.warning(
                "service.secrets_in_plaintext",
                detail="pluginConfig values from Secrets are sent over plaintext xDS"
                " (--allow-secrets-in-plaintext): anyone on the path can read them",
            )

    def _build_admin(self) -> None:
        """The admin server and the gauges it reads when scraped."""
        self.metrics.live_gauge(
            "wasmxds_module_cache_entries",
            "modules in the cache",
            (),
            lambda: [((), float(self.index.totals()[0]))],
        )
        self.metrics.live_gauge(
            "wasmxds_module_cache_bytes",
            "bytes of modules in the cache",
            (),
            lambda: [((), float(self.index.totals()[1]))],
        )
        self.metrics.live_gauge(
            "wasmxds_heap_frozen_objects",
            "objects kept out of the cyclic garbage collector's walk (gc.freeze: start-up and"
            " the streams' long-lived objects)",
            (),
            lambda: [((), float(gc.get_freeze_count()))],
        )
        self.metrics.live_gauge(
            "wasmxds_heap_freezes",
            "heap freezes since start: after a burst of new streams (burst), or a full"
            " collection after streams closed (collect)",
            ("kind",),
            lambda: [
                (("burst",), float(self.heap.freezes)),
                (("collect",), float(self.heap.refreshes)),
            ],
        )
        self.metrics.live_gauge(
            "wasmxds_source_problems",
            "problems the sources report now (each file or object keeps its last good version)",
            ("severity",),
            self._problem_counts,
        )
        self.admin = AdminServer(
            address=self.settings.admin_address,
            state=AdminState(
                readiness=self.readiness,
                sessions=lambda: self.xds.sessions,
                snapshot=lambda: self.xds.snapshot,
                plugins=lambda: self.reconciler.status,
                problems=lambda: self.reconciler.problems,
                delivery=self.settings.module_delivery.value,
                store=self.store,
                metrics=self.metrics,
                module_arrived=self.module_arrived,
                index=self.index,
                health=self.health.node_health,
                rollouts=self.rollouts,
            ),
            tls=admin_tls(self.settings),
            debug_public=self.settings.debug_public,
            root_namespace=self.settings.root_namespace,
            # The admin port proves namespaces by the xDS port's rules.
            identity=IdentityPolicy(self.settings.trust_domains),
            debug_identities=[
                parse_identity_pattern(text) for text in sorted(self.settings.debug_identities)
            ],
        )

    async def _first_push_deadline(self) -> None:
        """Make sure a reconcile runs when the start-up wait for module fetches ends."""
        await asyncio.sleep(self.settings.initial_fetch_wait)
        self.debouncer.trigger()

    def _kubernetes_state(self) -> SourceState:
        return self.kubernetes.state if self.kubernetes is not None else SourceState()

    def _plugin_reports(self) -> dict[ObjectKey, PluginReport]:
        return plugin_reports(
            self.reconciler.status,
            self.xds.sessions,
            self.xds.snapshot,
            self.staging.condition,
            superseded=self.reconciler.superseded,
        )

    async def _reconcile(self) -> None:
        await self.reconciler.reconcile()
        self._warn_type_mismatches()
        # A fetch that failed lands no module: module downloads waiting for it look again.
        self.module_arrived.fire()
        if self.status_writer is not None:
            self.status_writer.trigger()

    def _template_state(self) -> TemplateState:
        return self.templates.state if self.templates is not None else TemplateState()

    def _warn_type_mismatches(self) -> None:
        """Log once per plugin and module when the module implements no callbacks of the
        plugin's ``type`` (it is served all the same; /debug/plugins shows it too)."""
        for key, status in self.reconciler.status.items():
            outcome = status.outcome
            if not isinstance(outcome, Ready) or not isinstance(outcome.module, Module):
                continue
            abi = outcome.module.abi
            spec_type = status.plugin.spec.type
            seen = (key, outcome.module.digest, spec_type)
            if abi is None or seen in self._type_warned:
                continue
            self._type_warned.add(seen)
            kind = "NETWORK" if spec_type == wasm_pb2.NETWORK else "HTTP"
            warning = plugin_type_warning(kind, abi)
            if warning:
                log.warning("plugin.type_mismatch", plugin=str(key), detail=warning)

    def _fetched(self, module: Module) -> None:
        self.purger.wake()
        self.module_arrived.fire()

    def _problem_counts(self) -> list[tuple[tuple[str, ...], float]]:
        errors = sum(1 for p in self.reconciler.problems if p.is_error)
        warnings = len(self.reconciler.problems) - errors
        return [(("error",), float(errors)), (("warning",), float(warnings))]

    def readiness(self) -> Readiness:
        templates_loaded = self.templates is None or self.templates.loaded
        return Readiness(
            sources_loaded=self.source.loaded.is_set()
            and templates_loaded
            and (self.kubernetes is None or self.kubernetes.loaded.is_set()),
            first_push=self.reconciler.published,
            xds_listening=self.xds_started.is_set(),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run every stage until ``stop`` is set, then shut down in order."""
        settings = self.settings
        try:
            async with Supervisor() as tasks:
                tasks.start("modules.resolver", self.resolver.run())
                tasks.start("modules.purge", self.purger.run())
                tasks.start("debounce", self.debouncer.run(self._reconcile))
                tasks.start("admin", self.admin.run(self.admin_started))
                tasks.start(
                    "reconcile.first-push-deadline", self._first_push_deadline(), may_end=True
                )
                if settings.config_dirs:
                    tasks.start("sources.directory", self.source.run())
                if self.kubernetes is not None:
                    tasks.start("sources.kubernetes", self.kubernetes.run())
                if self.templates is not None:
                    tasks.start("sources.templates", self.templates.run())
                if self.status_writer is not None:
                    tasks.start("kubernetes.status", self.status_writer.run())
                if settings.repull_interval is not None:
                    tasks.start(
                        "modules.repull", self.resolver.run_repull(settings.repull_interval)
                    )
                tasks.start("rollout.timers", self.rollouts.run())
                tasks.start("xds", self.xds.run(self.xds_started))
                tasks.start("heap", self.heap.run())
                await stop.wait()
                log.info("service.stopping")
                tasks.begin_stop()
                await self.xds.stop()
                tasks.cancel("xds")
                tasks.cancel()
        finally:
            await self.http.aclose()
            await self.oci.aclose()
            if self.preflight is not None:
                self.preflight.close()
            await self.index.flush()
            await self.last_good.flush()
            await self.staging.flush()
            await self.rollouts.flush()
            if self.kube_client is not None:
                await self.kube_client.aclose()
        log.info("service.stopped")


def _read_cache(settings: ServeSettings) -> tuple[ModuleIndex, LastGoodFile]:
    """The module index and the last good versions kept in the cache directory."""
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    index = ModuleIndex.load(settings.cache_dir / INDEX_FILE)
    last_good = LastGoodFile.load(settings.cache_dir / LAST_GOOD_FILE)
    return index, last_good
