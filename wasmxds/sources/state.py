"""The shape every source hands to the reconcile stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wasmxds.api.configsecrets import ConfigSecret
from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin
from wasmxds.api.secrets import PullSecret
from wasmxds.api.templates import Templates

__all__ = ["SourceState"]


@dataclass(frozen=True, slots=True)
class SourceState:
    """Everything a source currently offers: valid plugins, image pull secrets
    (``kubernetes.io/dockerconfigjson`` Secrets), the ``Opaque`` Secrets plugin
    configuration takes values from, and the problems it saw."""

    plugins: Mapping[ObjectKey, WasmPlugin] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    secrets: Mapping[ObjectKey, PullSecret] = field(default_factory=dict)
    config_secrets: Mapping[ObjectKey, ConfigSecret] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TemplateState:
    """Listener-mode templates currently offered, and the problems seen reading them."""

    templates: Templates = field(default_factory=Templates)
    problems: tuple[Problem, ...] = ()
