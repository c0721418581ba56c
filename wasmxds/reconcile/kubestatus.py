"""Status write-back (``--write-status``): a ``Ready`` condition on each WasmPlugin.

The condition says whether the plugin's module was fetched (or why not) and
how many proxies run it::

    status:
      conditions:
      - type: Ready
        status: "True"            # "False" when unavailable or invalid, "Unknown" while fetching
        reason: ModuleFetched     # ModuleUnavailable | SignatureInvalid | ModuleAccessDenied
                                  # | ModuleIncompatible
                                  # | Pending | Invalid
                                  # | SecretsNeedTLS | ConfigSecretMissing
                                  # | ConfigSecretTooLarge | Superseded

An edit whose module cannot be fetched is ``Ready=False`` with reason
``ModuleUnavailable``; its message says whether proxies keep the last good
version or get the failStrategy stand-in (a plugin with no good version yet).
Refusals have reasons of their own, so alerts can tell them from a
registry outage: ``SignatureInvalid`` (no signature by a trusted key),
``ModuleAccessDenied`` (the module is cached, but this plugin's credentials
may not read it) and ``ModuleIncompatible`` (the pre-flight check found that
Envoy could not run the module; the message names the export or import).
A WasmPlugin that a TrafficExtension of the same namespace/name supersedes
(:func:`wasmxds.api.trafficextension.supersede`) is not served: ``Ready=False``
with reason ``Superseded``, the message saying which object and what to do.
        message: module fetched; running on 3 proxies
        observedGeneration: 4
        lastTransitionTime: "2025-01-01T00:00:00Z"
      proxies: 3

A patch is sent only when what the condition says changed (its time stamp is
not a change), at most one pass every ``interval`` and ``max_rate`` patches a
second, so proxies coming and going, or a burst of edits, cannot turn into a
write storm. Conditions other than ``Ready`` (another controller's) are kept.

A plugin in a staged rollout (:mod:`wasmxds.rollout`) also gets one rollout
condition: ``RolloutProgressing`` (``True`` with reason ``Progressing`` or
``Paused`` while it runs, ``False`` with reason ``Complete`` once every proxy
has the new version) or ``RolledBack`` (``True``, reason ``Nack``, ``Health``
or ``Abort``, the message saying why and which version is served again).
Each replica counts its own proxies: with several replicas, the last writer
wins, and each writes only when its own view changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from wasmxds.api.objects import ObjectKey
from wasmxds.sources.kube.objects import ObservedObject
from wasmxds.sources.kube.protocol import KubeApiError

__all__ = [
    "CONDITION_TYPE",
    "ModuleReadiness",
    "ObservedObject",
    "PluginReport",
    "StatusPatcher",
    "StatusWriter",
    "desired_status",
]

log = structlog.get_logger(__name__)

CONDITION_TYPE = "Ready"
# How much of the validation problems goes into a condition message.
_MAX_MESSAGE = 1024
# Failures whose condition reason is more precise than ModuleUnavailable.
_UNAVAILABLE_REASONS = {
    "signature_invalid": "SignatureInvalid",
    "module_access_denied": "ModuleAccessDenied",
    # The pre-flight check: the module cannot run in Envoy (which export or import is wrong).
    "module_incompatible": "ModuleIncompatible",
}


class ModuleReadiness(enum.StrEnum):
    """Where a plugin's module stands, as the reconcile stage last saw it."""

    FETCHED = "fetched"
    UNAVAILABLE = "unavailable"
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class PluginReport:
    """What the rest of wasmxds knows about one plugin: its module and its proxies."""

    state: ModuleReadiness
    error: str = ""
    proxies: int = 0
    # Proxies get an earlier version of the plugin (module and config), not this one.
    last_good: bool = False
    # Proxies get the failStrategy stand-in.
    standin: bool = False
    # For a module that nothing retries (fetched, but the delivery mode cannot carry
    # it): what the user has to do. Empty while the fetch is retried.
    action: str = ""
    # The failed fetch's reason (``ModuleError.reason``), when there is one.
    reason: str = ""
    # Why its pluginConfig values from Secrets cannot be served ("plaintext": xDS is
    # not TLS; "missing": a Secret or key not found); ``error`` says which. Empty when
    # they can, or it has none.
    config_refusal: str = ""
    # The plugin's staged rollout, when it has one (a condition of its own).
    rollout: RolloutCondition | None = None
    # Why it is not served at all: a TrafficExtension of its name supersedes it.
    superseded: str = ""


@dataclass(frozen=True, slots=True)
class RolloutCondition:
    """A ``RolloutProgressing`` or ``RolledBack`` condition (see the module docstring)."""

    type: str
    status: str
    reason: str
    message: str


ROLLOUT_CONDITION_TYPES = ("RolloutProgressing", "RolledBack")


class StatusPatcher(Protocol):
    async def patch_status(self, key: ObjectKey, patch: Mapping[str, Any]) -> None: ...


def _resource_plural(key: ObjectKey) -> str:
    """The resource an object's status lives under."""
    return "trafficextensions" if key.kind else "wasmplugins"


def _plural(count: int) -> str:
    return f"{count} prox{'y' if count == 1 else 'ies'}"


def _verb(count: int, verb: str) -> str:
    return f"{verb}s" if count == 1 else verb


def _condition(observed: ObservedObject, report: PluginReport | None) -> dict[str, Any]:
    """The Ready condition, without its transition time."""
    if observed.problems:
        details = "; ".join(problem.message for problem in observed.problems)
        if len(details) > _MAX_MESSAGE:
            details = details[: _MAX_MESSAGE - 3] + "..."
        kept = " (the last valid version is still served)" if observed.served else ""
        status, reason, message = "False", "Invalid", f"invalid{kept}: {details}"
    elif report is None:
        status, reason, message = "Unknown", "Pending", "not reconciled yet"
    elif report.superseded:
        status, reason, message = "False", "Superseded", report.superseded
    elif report.config_refusal:
        status = "False"
        reason = {"plaintext": "SecretsNeedTLS", "too_large": "ConfigSecretTooLarge"}.get(
            report.config_refusal, "ConfigSecretMissing"
        )
        fallback = (
            f"{_verb(report.proxies, 'keep')} running the last good version"
            if report.last_good
            else f"{_verb(report.proxies, 'get')} the failStrategy stand-in"
        )
        message = f"{report.error}; {_plural(report.proxies)} {fallback}"
    elif report.state is ModuleReadiness.FETCHED:
        note = f" ({report.error})" if report.error else ""
        status, reason = "True", "ModuleFetched"
        message = f"module fetched{note}; running on {_plural(report.proxies)}"
    elif report.state is ModuleReadiness.UNAVAILABLE:
        status, reason = "False", _UNAVAILABLE_REASONS.get(report.reason, "ModuleUnavailable")
        if report.last_good:
            fallback = (
                f"{_verb(report.proxies, 'keep')} running the last good version (module and config)"
            )
        else:
            fallback = f"{_verb(report.proxies, 'get')} the failStrategy stand-in"
        if report.action:
            # Nothing retries this one: say what to do instead of "until fetched".
            tail = f"; {report.action}"
        elif report.last_good:
            tail = " until this one's module is fetched, while the fetch is retried"
        else:
            tail = " while the fetch is retried"
        message = (
            f"module unavailable: {report.error or 'unknown error'}; {_plural(report.proxies)}"
            f" {fallback}{tail}"
        )
    else:
        status, reason = "Unknown", "Pending"
        if report.last_good:
            message = (
                f"fetching the module; {_plural(report.proxies)} {_verb(report.proxies, 'run')}"
                " the previous version"
            )
        elif report.standin:
            message = (
                f"fetching the module; {_plural(report.proxies)} {_verb(report.proxies, 'get')}"
                " the failStrategy stand-in until it is fetched"
            )
        else:
            message = "fetching the module; its filter is not served until it is fetched"
    return {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": observed.generation,
    }


def _proxies(report: PluginReport | None) -> int:
    return report.proxies if report is not None else 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _current(
    status: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[Any]]:
    """Our Ready and rollout conditions in ``status`` (if any), and everyone else's."""
    conditions = status.get("conditions")
    ours: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None
    others: list[Any] = []
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == CONDITION_TYPE:
            ours = condition
        elif isinstance(condition, dict) and condition.get("type") in ROLLOUT_CONDITION_TYPES:
            rollout = condition
        else:
            others.append(condition)
    return ours, rollout, others


def _fields(condition: Mapping[str, Any] | None) -> tuple[object, ...]:
    if condition is None:
        return ()
    return tuple(condition.get(k) for k in sorted(condition) if k != "lastTransitionTime")


def _signature(
    condition: Mapping[str, Any], proxies: object, rollout: Mapping[str, Any] | None = None
) -> tuple[object, ...]:
    return (*_fields(condition), proxies, _fields(rollout))


def _rollout_condition(
    observed: ObservedObject, report: PluginReport | None
) -> dict[str, Any] | None:
    if report is None or report.rollout is None:
        return None
    rollout = report.rollout
    message = rollout.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return {
        "type": rollout.type,
        "status": rollout.status,
        "reason": rollout.reason,
        "message": message,
        "observedGeneration": observed.generation,
    }


def desired_status(
    observed: ObservedObject, report: PluginReport | None, *, now: Callable[[], str] = _now
) -> tuple[dict[str, Any], tuple[object, ...]]:
    """The merge patch for ``observed`` and a signature of what it says (no time stamp)."""
    condition = _condition(observed, report)
    proxies = _proxies(report)
    rollout = _rollout_condition(observed, report)
    signature = _signature(condition, proxies, rollout)
    current, current_rollout, others = _current(observed.status)
    for new, old in ((condition, current), (rollout, current_rollout)):
        if new is None:
            continue
        if old is not None and (old.get("type"), old.get("status")) == (new["type"], new["status"]):
            # Same truth value: the transition happened earlier; keep its time.
            new["lastTransitionTime"] = old.get("lastTransitionTime") or now()
        else:
            new["lastTransitionTime"] = now()
    conditions = [*others, condition] if rollout is None else [*others, condition, rollout]
    patch = {"status": {"conditions": conditions, "proxies": proxies}}
    return patch, signature


def _stored_signature(observed: ObservedObject) -> tuple[object, ...] | None:
    current, rollout, _ = _current(observed.status)
    if current is None:
        return None
    return _signature(current, observed.status.get("proxies"), rollout)


class StatusWriter:
    """Patches the status of the WasmPlugins ``objects`` returns (see module docstring).

    ``reports`` gives, per plugin, what the reconcile stage decided and how many
    proxies run it. Call :meth:`trigger` when either may have changed; a pass
    also runs every ``resync`` seconds to catch proxies coming and going.
    """

    def __init__(
        self,
        client: StatusPatcher,
        *,
        objects: Callable[[], Mapping[ObjectKey, ObservedObject]],
        reports: Callable[[], Mapping[ObjectKey, PluginReport]],
        interval: float = 1.0,
        resync: float = 10.0,
        max_rate: float = 10.0,
    ) -> None:
        self._client = client
        self._objects = objects
        self._reports = reports
        self._interval = interval
        self._resync = resync
        self._pause = 1.0 / max_rate
        self._wake = asyncio.Event()
        # What this process last wrote per object; it wins over the stored status,
        # which lags behind our own patches until the watch brings them back.
        self._written: dict[ObjectKey, tuple[object, ...]] = {}
        self._failing: dict[ObjectKey, str] = {}

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Write status until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._resync):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            await asyncio.sleep(self._interval)

    async def flush(self) -> int:
        """One pass: patch every object whose condition changed; returns how many were sent."""
        objects = self._objects()
        reports = self._reports()
        for gone in self._written.keys() - objects.keys():
            del self._written[gone]
        sent = 0
        for key in sorted(objects):
            observed = objects[key]
            patch, signature = desired_status(observed, reports.get(key))
            last = self._written.get(key)
            if last is None:
                last = _stored_signature(observed)
            if last == signature:
                continue
            try:
                await self._client.patch_status(key, patch)
            except KubeApiError as exc:
                self._failed(key, exc)
                continue
            self._failing.pop(key, None)
            self._written[key] = signature
            sent += 1
            condition = patch["status"]["conditions"][-1]
            log.info(
                "kubernetes.status_written",
                object=str(key),
                reason=condition["reason"],
                proxies=patch["status"]["proxies"],
            )
            await asyncio.sleep(self._pause)
        return sent

    def _failed(self, key: ObjectKey, exc: KubeApiError) -> None:
        if exc.status == 404:
            return  # deleted meanwhile; the watch will drop it
        # Once per object and error, not once per pass.
        if self._failing.get(key) != str(exc):
            self._failing[key] = str(exc)
            hint = (
                f" (--write-status needs RBAC to patch {_resource_plural(key)}/status)"
                if exc.status == 403
                else ""
            )
            log.warning("kubernetes.status_failed", object=str(key), error=f"{exc}{hint}")
