"""The shape every source hands to the reconcile stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wasmxds.api.objects import ObjectKey, Problem, WasmPlugin

__all__ = ["SourceState"]


@dataclass(frozen=True, slots=True)
class SourceState:
    """Everything a source currently offers: valid plugins and the problems it saw."""

    plugins: Mapping[ObjectKey, WasmPlugin] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
