"""The module-fetching flags ``wasmxds serve`` and ``wasmxds validate --fetch`` share.

Both commands take them from the same declarations (:mod:`wasmxds.settings`), so
they parse, default and refuse bad values alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wasmxds.flags import add_flags, values
from wasmxds.settings import (
    CREDENTIAL_HELPERS,
    FETCH_LIMITS,
    INSECURE_REGISTRIES,
    MAX_MODULE_SIZE,
    REGISTRY_CA,
)

__all__ = ["FETCH_FLAGS", "add_registry_arguments", "fetch_values", "registry_settings"]

FETCH_FLAGS = (INSECURE_REGISTRIES, REGISTRY_CA, CREDENTIAL_HELPERS, MAX_MODULE_SIZE, *FETCH_LIMITS)
"""What a fetch needs besides the module's URL: hosts, trust, credentials, size and time limits."""


def add_registry_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the shared fetch flags (``wasmxds serve`` adds them with its other groups)."""
    add_flags(parser, FETCH_FLAGS)


def fetch_values(args: argparse.Namespace) -> dict[str, Any]:
    """The shared fetch flags' values, parsed and checked as ``wasmxds serve`` does."""
    given = values(args, FETCH_FLAGS)
    return {**given, **registry_settings(given)}


def registry_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """The fields settled once parsed: the CA file made absolute (the cwd may change)."""
    ca_file: Path | None = given["registry_ca"]
    return {"registry_ca": ca_file.absolute() if ca_file is not None else None}
