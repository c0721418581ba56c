"""Load the generated modules for the Envoy types a config names in ``@type``.

xds-protos registers a message type only when its ``_pb2`` module is
imported, and nothing imports all ~1,000 of them. Before parsing Envoy config
that packs extensions in ``Any`` fields, every ``@type`` it names is looked up
and the modules of that proto package are imported, so the parse can resolve
them. Unknown types stay unknown and the parse reports them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator

__all__ = ["ensure_types", "type_names"]

_TYPE_PREFIX = "type.googleapis.com/"


def type_names(value: object) -> Iterator[str]:
    """Every full message name named by an ``@type`` key anywhere in ``value``."""
    if isinstance(value, dict):
        kind = value.get("@type")
        if isinstance(kind, str):
            yield kind.rsplit("/", 1)[-1]
        for item in value.values():
            yield from type_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from type_names(item)


@functools.cache
def _import_package(package: str) -> None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for module in pkgutil.iter_modules(spec.submodule_search_locations):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{module.name}")


def ensure_types(value: object) -> None:
    """Import the proto packages of every ``@type`` in ``value`` (cached per package)."""
    for full_name in set(type_names(value)):
        _import_package(full_name.rpartition(".")[0])
