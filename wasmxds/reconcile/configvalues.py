"""pluginConfig values from Secrets, looked up for one plugin at one reconcile.

The references come from the plugin's ``secrets.wasmxds.io/plugin-config``
annotation (validated with the plugin, :mod:`wasmxds.api.configsecrets`); the
Secrets from the sources, in the plugin's own namespace only. The values go
to translation, which merges them into the filter's configuration; nothing
here logs, stores or shows them. Errors name the plugin, the annotation line,
the Secret and the key, never a value.

Only Secrets labelled ``secrets.wasmxds.io/plugin-config: "true"`` are read
(their owner opted in), and the values are bounded (64 KiB each, 256 KiB per
plugin): a larger one is refused like a missing one, naming where it is.
``ConfigValues.version`` names the Secret versions the values came from, so
translation builds a plugin's configuration once per (plugin, Secret versions).

Values travel only on TLS streams. wasmxds has one xDS port, TLS or not, so
this is decided for the whole server: without TLS (and without
``--allow-secrets-in-plaintext``) a plugin that references Secrets is refused.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from wasmxds.api.configsecrets import (
    ANNOTATION,
    LABEL,
    MAX_PLUGIN_BYTES,
    MAX_VALUE_BYTES,
    ConfigSecret,
    SecretRef,
    SecretValue,
    config_secret_refs,
)
from wasmxds.api.objects import ObjectKey, WasmPlugin

__all__ = ["ConfigValues", "Refusal", "resolve_values"]


class Refusal(enum.StrEnum):
    """Why a plugin's values from Secrets cannot be served (metric label, status reason)."""

    PLAINTEXT = "plaintext"
    MISSING = "missing"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class ConfigValues:
    """A plugin's references and, when all resolved, their values; else why not.

    ``version`` changes exactly when the values may have (a digest of each reference
    and its Secret's fingerprint; never shown)."""

    refs: tuple[SecretRef, ...]
    values: tuple[SecretValue, ...] = ()
    error: str = ""
    refusal: Refusal | None = None
    version: str = field(default="", repr=False)


def _plaintext(plugin: WasmPlugin) -> str:
    return (
        f"WasmPlugin {plugin.key} takes pluginConfig values from Secrets ({ANNOTATION}), and"
        " wasmxds sends those only over TLS: serve xDS with --tls-cert and --tls-key, or accept"
        " plaintext with --allow-secrets-in-plaintext"
    )


def resolve_values(
    plugin: WasmPlugin, secrets: Mapping[ObjectKey, ConfigSecret], *, allowed: bool
) -> ConfigValues | None:
    """The plugin's values from Secrets; None when it references none.

    ``allowed`` says whether values may be sent at all (TLS, or the plaintext flag).
    """
    refs = config_secret_refs(plugin.annotations)
    if not refs:
        return None
    if not allowed:
        return ConfigValues(refs, error=_plaintext(plugin), refusal=Refusal.PLAINTEXT)
    values: list[SecretValue] = []
    errors: list[str] = []
    refusal = Refusal.TOO_LARGE
    total = 0
    version = hashlib.sha256()
    for ref in refs:
        key = ObjectKey(plugin.key.namespace, ref.secret)
        where = f"{ANNOTATION} line {ref.line} ({ref})"
        secret = secrets.get(key)
        raw = secret.data.get(ref.key) if secret is not None else None
        if secret is None:
            errors.append(
                f"{where}: Secret {key} not found (an Opaque Secret in the plugin's namespace,"
                f' labelled {LABEL}: "true")'
            )
            refusal = Refusal.MISSING
        elif not secret.labelled:
            errors.append(
                f'{where}: Secret {key} is not labelled {LABEL}: "true"; its owner must add'
                " that label to let plugins take values from it"
            )
            refusal = Refusal.MISSING
        elif raw is None:
            errors.append(f"{where}: Secret {key} has no key {ref.key!r}")
            refusal = Refusal.MISSING
        elif len(raw) > MAX_VALUE_BYTES:
            errors.append(
                f"{where}: key {ref.key!r} of Secret {key} is {len(raw)} bytes; a value from a"
                f" Secret may be at most {MAX_VALUE_BYTES}"
            )
        elif total + len(raw) > MAX_PLUGIN_BYTES:
            total += len(raw)
            errors.append(
                f"{where}: key {ref.key!r} of Secret {key} brings the plugin's values from"
                f" Secrets to {total} bytes; at most {MAX_PLUGIN_BYTES} in all (each reference"
                " counts)"
            )
        else:
            total += len(raw)
            try:
                values.append(SecretValue(ref, raw.decode("utf-8")))
            except UnicodeDecodeError:
                errors.append(f"{where}: key {ref.key!r} of Secret {key} is not UTF-8 text")
                refusal = Refusal.MISSING
            version.update(f"{ref}\0{secret.fingerprint}\0".encode())
    if errors:
        message = f"WasmPlugin {plugin.key}: " + "; ".join(errors)
        return ConfigValues(refs, error=message, refusal=refusal)
    return ConfigValues(refs, tuple(values), version=version.hexdigest())
