"""WasmPlugins and TrafficExtensions (and the pull secrets they name) from a Kubernetes
API server.

Plugins are listed and watched cluster-wide, or in each ``--namespace``;
TrafficExtensions (Istio 1.30) the same way, beside them: a cluster without
their CRD answers 404, which is logged (with a hint) and retried, and
WasmPlugins are served meanwhile. The
``kubernetes.io/dockerconfigjson`` Secrets are watched only in the namespaces
where a plugin names an ``imagePullSecret``, and only the Secrets named are
handed on. Secrets a plugin's configuration takes values from (annotation
``secrets.wasmxds.io/plugin-config``) must opt in with the label
``secrets.wasmxds.io/plugin-config: "true"``; they are listed and watched with
one ``labelSelector`` list/watch per namespace whose plugins reference any
(bounded by namespaces, not by the names plugin authors write), started when
the first plugin there references one and stopped when none does. wasmxds never
receives a namespace's unlabelled Secrets, and only the referenced ones are
handed on. The list/watch protocol (resume, bookmarks, 410, backoff) is
:mod:`wasmxds.sources.kube.reflector`'s.

The rules are the directory source's: every object is validated as a file's
would be (problems come from ``kubernetes:<namespace>/<name>``); an invalid
object is reported and skipped, an object that turns invalid keeps its last
valid version, and a deleted object goes. Nothing is removed because the API
server is unreachable.

``metadata.resourceVersion`` and ``creationTimestamp`` are carried into each
WasmPlugin. Its fingerprint, though, leaves the resourceVersion and
managedFields out: they change on every status write (ours included), and a
new fingerprint means a new snapshot and, with ``imagePullPolicy: Always``, a
re-pull. Istio re-pulls on any resourceVersion change; it also does not write
WasmPlugin status.

Objects are validated in a worker thread, never on the event loop (a large
object within the input limits takes a second or more to check). Changes
queue up in the order the reflectors report them and one task applies them
in that order, so a later version of an object always wins.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping, Sequence, Set
from typing import Any

import structlog

from wasmxds.api.configsecrets import ConfigSecret, config_secret_refs
from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin
from wasmxds.api.pullsecretref import pull_secret_ref
from wasmxds.api.secrets import PullSecret
from wasmxds.backoff import Backoff
from wasmxds.sources.kube.client import KubeClient
from wasmxds.sources.kube.objects import (
    ObservedObject,
    Parser,
    Record,
    needs_parse,
    origin_of,
    parse_config_secret_object,
    parse_plugin,
    parse_secret_object,
    update,
)
from wasmxds.sources.kube.protocol import Collection
from wasmxds.sources.kube.reflector import DEFAULT_BACKOFF, DEFAULT_WATCH_TIMEOUT, Reflector
from wasmxds.sources.state import SourceState

__all__ = ["KubernetesSource", "origin_of"]

log = structlog.get_logger(__name__)

# What one reflector batch changed: (key, object or None when deleted).
_Changes = list[tuple[ObjectKey, Mapping[str, Any] | None]]
# Which records a batch is for: plugins, pull secrets, or Secrets for plugin configuration.
_PLUGINS, _PULL, _CONFIG = "WasmPlugin", "pull", "config"


class KubernetesSource:
    """Keeps a validated :class:`SourceState` from the API server (see module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespaces: Sequence[str] = (),
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff = DEFAULT_BACKOFF,
        watch_timeout: tuple[int, int] = DEFAULT_WATCH_TIMEOUT,
        page_size: int = 500,
    ) -> None:
        self.client = client
        self._page_size = page_size
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self._on_change = on_change
        self._backoff = backoff
        self._watch_timeout = watch_timeout
        self._plugins: dict[ObjectKey, Record] = {}
        self._secrets: dict[ObjectKey, Record] = {}
        self._plugin_reflectors = [
            self._reflector(Collection.plugins(namespace), self._plugins_changed)
            for namespace in (self.namespaces or (None,))
        ]
        # Same records, same handling: a TrafficExtension's key carries its kind.
        self._extension_reflectors = [
            self._reflector(Collection.extensions(namespace), self._plugins_changed)
            for namespace in (self.namespaces or (None,))
        ]
        self._secret_reflectors: dict[str, tuple[Reflector, asyncio.Task[None]]] = {}
        self._config_secrets: dict[ObjectKey, Record] = {}
        self._config_reflectors: dict[str, tuple[Reflector, asyncio.Task[None]]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._state = SourceState()
        self._logged: frozenset[Problem] = frozenset()
        self._pending: collections.deque[tuple[str, _Changes]] = collections.deque()
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.loaded = asyncio.Event()

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def reflectors(self) -> tuple[Reflector, ...]:
        """Every list/watch running now: plugins, pull secrets by namespace, then the
        Secrets plugin configuration takes values from."""
        secrets = (reflector for reflector, _ in self._secret_reflectors.values())
        config = (reflector for reflector, _ in self._config_reflectors.values())
        return (*self._plugin_reflectors, *self._extension_reflectors, *secrets, *config)

    def observed(self) -> dict[ObjectKey, ObservedObject]:
        """Every WasmPlugin seen, valid or not, for the status writer."""
        return {
            key: ObservedObject(
                key=key,
                generation=record.generation,
                problems=(
                    tuple(p for p in record.problems if p.is_error) if record.invalid else ()
                ),
                served=record.valid is not None,
                status=record.status,
            )
            for key, record in self._plugins.items()
        }

    def _reflector(
        self, collection: Collection, handler: Callable[[Reflector, Set[ObjectKey]], None]
    ) -> Reflector:
        reflector: Reflector

        def changed(keys: Set[ObjectKey]) -> None:
            handler(reflector, keys)

        reflector = Reflector(
            self.client,
            collection,
            on_change=changed,
            backoff=self._backoff,
            watch_timeout=self._watch_timeout,
            page_size=self._page_size,
        )
        return reflector

    async def run(self) -> None:
        """Connect, list everything, then follow changes until cancelled."""
        started = time.perf_counter()
        await self.client.connect()
        async with asyncio.TaskGroup() as group:
            self._group = group
            group.create_task(self._apply_changes(), name="kubernetes: validate")
            for reflector in (*self._plugin_reflectors, *self._extension_reflectors):
                group.create_task(reflector.run(), name=f"kubernetes: {reflector.collection}")
            await asyncio.gather(*(r.synced.wait() for r in self._plugin_reflectors))
            await asyncio.gather(*(_synced_or_absent(r) for r in self._extension_reflectors))
            await self._applied()
            self._sync_secret_watches()
            # Pull secrets are wanted at start-up (a first fetch without them fails), and
            # so are configuration Secrets (a plugin without them gets its stand-in), but
            # a Secret list that fails (RBAC, say) must not keep the source from loading.
            await asyncio.gather(*(r.tried.wait() for r, _ in self._secret_reflectors.values()))
            await asyncio.gather(*(r.tried.wait() for r, _ in self._config_reflectors.values()))
            await self._applied()
            self.loaded.set()
            self._publish(force=True)
            log.info(
                "kubernetes.synced",
                server=self.client.server,
                plugins=len(self._state.plugins),
                secrets=len(self._state.secrets),
                problems=len(self._state.problems),
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            await asyncio.Event().wait()  # the reflectors run in the group until cancelled

    def _plugins_changed(self, reflector: Reflector, keys: Set[ObjectKey]) -> None:
        self._queue(_PLUGINS, [(key, reflector.objects.get(key)) for key in sorted(keys)])

    def _secrets_changed(self, reflector: Reflector, keys: Set[ObjectKey]) -> None:
        self._queue(_PULL, [(key, reflector.objects.get(key)) for key in sorted(keys)])

    def _config_secrets_changed(self, reflector: Reflector, keys: Set[ObjectKey]) -> None:
        self._queue(_CONFIG, [(key, reflector.objects.get(key)) for key in sorted(keys)])

    def _queue(self, kind: str, changes: _Changes) -> None:
        """Note a reflector's changes (the objects as they are now) for the applying task."""
        self._pending.append((kind, changes))
        self._idle.clear()
        self._more.set()

    async def _applied(self) -> None:
        """Until every change noted so far has been applied."""
        await self._idle.wait()

    async def _apply_changes(self) -> None:
        """Validate queued changes in a worker thread and apply them, in the order they came."""
        while True:
            if not self._pending:
                self._idle.set()
                self._more.clear()
                await self._more.wait()
                continue
            kind, changes = self._pending.popleft()
            plugins = kind == _PLUGINS
            parse: Parser = parse_plugin
            records, what = self._plugins, "WasmPlugin"
            if kind == _PULL:
                # A namespace no longer watched was dropped while this waited.
                changes = [c for c in changes if c[0].namespace in self._secret_reflectors]
                records, parse, what = self._secrets, parse_secret_object, "Secret"
            elif kind == _CONFIG:
                changes = [c for c in changes if c[0].namespace in self._config_reflectors]
                records, parse, what = self._config_secrets, parse_config_secret_object, "Secret"
            todo = [(k, raw) for k, raw in changes if needs_parse(records, k, raw)]
            parsed = await asyncio.to_thread(_parse_all, parse, todo) if todo else {}
            for key, raw in changes:
                update(records, key, raw, parsed, what)
            if plugins and self._group is not None and self._plugin_reflectors_synced():
                self._sync_secret_watches()
            self._publish()

    def _plugin_reflectors_synced(self) -> bool:
        return all(r.synced.is_set() for r in self._plugin_reflectors) and all(
            r.synced.is_set() or r.not_found.is_set() for r in self._extension_reflectors
        )

    def _wanted_secrets(self) -> set[ObjectKey]:
        wanted: set[ObjectKey] = set()
        for key, record in self._plugins.items():
            plugin = record.valid
            if isinstance(plugin, WasmPlugin) and plugin.spec.image_pull_secret:
                # Istio looks the secret up in the plugin's own namespace, whatever it says.
                name = pull_secret_ref(plugin.spec.image_pull_secret).name
                if name:
                    wanted.add(ObjectKey(key.namespace, name))
        return wanted

    def _wanted_config_secrets(self) -> set[ObjectKey]:
        wanted: set[ObjectKey] = set()
        for key, record in self._plugins.items():
            plugin = record.valid
            if isinstance(plugin, WasmPlugin):
                for ref in config_secret_refs(plugin.annotations):
                    # The plugin's own namespace, always (the annotation cannot name another).
                    wanted.add(ObjectKey(key.namespace, ref.secret))
        return wanted

    def _sync_config_watches(self) -> None:
        """Watch the labelled Secrets of exactly the namespaces whose plugins take
        configuration values from Secrets: one list/watch per namespace."""
        assert self._group is not None
        namespaces = {key.namespace for key in self._wanted_config_secrets()}
        for namespace in sorted(namespaces - self._config_reflectors.keys()):
            reflector = self._reflector(
                Collection.config_secrets(namespace), self._config_secrets_changed
            )
            task = self._group.create_task(
                reflector.run(), name=f"kubernetes: {reflector.collection}"
            )
            self._config_reflectors[namespace] = (reflector, task)
        for namespace in self._config_reflectors.keys() - namespaces:
            _, task = self._config_reflectors.pop(namespace)
            task.cancel()
            for key in [k for k in self._config_secrets if k.namespace == namespace]:
                del self._config_secrets[key]

    def _sync_secret_watches(self) -> None:
        """Watch pull secrets in exactly the namespaces whose plugins name one (and the
        Secrets plugin configuration takes values from)."""
        assert self._group is not None
        self._sync_config_watches()
        namespaces = {key.namespace for key in self._wanted_secrets()}
        for namespace in namespaces - self._secret_reflectors.keys():
            reflector = self._reflector(Collection.pull_secrets(namespace), self._secrets_changed)
            task = self._group.create_task(
                reflector.run(), name=f"kubernetes: {reflector.collection}"
            )
            self._secret_reflectors[namespace] = (reflector, task)
        for namespace in self._secret_reflectors.keys() - namespaces:
            _, task = self._secret_reflectors.pop(namespace)
            task.cancel()
            for key in [k for k in self._secrets if k.namespace == namespace]:
                del self._secrets[key]

    def _publish(self, *, force: bool = False) -> None:
        """Rebuild the state; tell the owner when more than resourceVersions changed."""
        plugins = {
            key: record.valid
            for key, record in sorted(self._plugins.items())
            if isinstance(record.valid, WasmPlugin)
        }
        wanted = self._wanted_secrets()
        secrets = {
            key: record.valid
            for key, record in sorted(self._secrets.items())
            if key in wanted and isinstance(record.valid, PullSecret)
        }
        wanted_config = self._wanted_config_secrets()
        config_secrets = {
            key: record.valid
            for key, record in sorted(self._config_secrets.items())
            if key in wanted_config and isinstance(record.valid, ConfigSecret)
        }
        problems = [p for _, record in sorted(self._plugins.items()) for p in record.problems]
        problems += [
            p
            for key, record in sorted(self._secrets.items())
            if key in wanted
            for p in record.problems
        ]
        problems += [
            p
            for key, record in sorted(self._config_secrets.items())
            if key in wanted_config
            for p in record.problems
        ]
        previous = self._state
        self._state = SourceState(
            plugins=plugins,
            problems=tuple(problems),
            secrets=secrets,
            config_secrets=config_secrets,
        )
        self._log_new_problems()
        if self.loaded.is_set() and (force or _differs(previous, self._state)):
            self._on_change()

    def _log_new_problems(self) -> None:
        current = frozenset(self._state.problems)
        for problem in sorted(current - self._logged, key=lambda p: (p.path, p.message)):
            # Messages start with the field they are about ("spec.url: ..."), when there is one.
            head, _, rest = problem.message.partition(": ")
            log.warning(
                "kubernetes.invalid_object",
                object=problem.path.removeprefix("kubernetes:"),
                field=head if rest and " " not in head else "",
                message=problem.message,
                severity=problem.severity.value,
            )
        self._logged = current


async def _synced_or_absent(reflector: Reflector) -> None:
    """Until the first list succeeded, or the server said the resource does not exist
    (a cluster without the TrafficExtension CRD must still serve its WasmPlugins)."""
    waits = {
        asyncio.ensure_future(reflector.synced.wait()),
        asyncio.ensure_future(reflector.not_found.wait()),
    }
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def _parse_all(
    parse: Parser, changes: Sequence[tuple[ObjectKey, Mapping[str, Any] | None]]
) -> dict[ObjectKey, tuple[object | None, list[Problem]]]:
    """Every object in ``changes`` validated (run in a worker thread)."""
    return {key: parse(key, raw) for key, raw in changes if raw is not None}


def _differs(before: SourceState, after: SourceState) -> bool:
    """Whether anything but resourceVersions changed (see the module docstring)."""
    if before.problems != after.problems:
        return True
    if (
        before.plugins.keys() != after.plugins.keys()
        or before.secrets.keys() != after.secrets.keys()
        or before.config_secrets.keys() != after.config_secrets.keys()
    ):
        return True
    if any(
        before.config_secrets[key].fingerprint != secret.fingerprint
        for key, secret in after.config_secrets.items()
    ):
        return True
    return any(
        before.plugins[key].fingerprint != plugin.fingerprint
        for key, plugin in after.plugins.items()
    ) or any(
        before.secrets[key].fingerprint != secret.fingerprint
        for key, secret in after.secrets.items()
    )
