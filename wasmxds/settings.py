"""Settings for ``wasmxds serve``: each declared once, with its flag, default and meaning.

The declarations below (grouped by the stage they tune) make the argparse
flags (:mod:`wasmxds.cli.serve`, and ``wasmxds validate --fetch``'s share of
them), :class:`ServeSettings`' defaults and the flag table in
docs/running.md (``python -m wasmxds.settings --markdown``; a test fails when
the table is stale). See :mod:`wasmxds.flags` for how one declaration is used.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from wasmxds.api.dockerconfig import valid_helper_name
from wasmxds.api.keys import VerificationKey, parse_verification_key
from wasmxds.api.rollout import interval_in_bounds, parse_steps
from wasmxds.errors import KeyFormatError, SettingsError
from wasmxds.flags import Group, Kind, Setting, markdown_table
from wasmxds.log import LOG_FORMATS, LOG_LEVELS
from wasmxds.modules.oci.credhelper import ANY_HELPER
from wasmxds.modules.settings import FetcherSettings
from wasmxds.xds.identity import parse_identity_pattern, valid_trust_domain

__all__ = [
    "GROUPS",
    "HostPort",
    "ModuleDelivery",
    "ServeSettings",
    "default_cache_dir",
    "docs_with_table",
    "fetcher_settings",
    "parse_duration",
    "parse_host_port",
    "parse_rate",
    "parse_size",
]

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
    "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}  # fmt: skip


def parse_duration(text: str) -> float:
    """``100ms``, ``10s``, ``1.5m``, ``2h`` → seconds. A bare number is refused (unit required)."""
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(
            f"invalid duration {text!r}: use a number with ms, s, m or h (e.g. 100ms)"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """``256MiB``, ``10M``, ``4096`` → bytes."""
    match = _SIZE.match(text)
    if not match:
        raise SettingsError(f"invalid size {text!r}: use bytes or a unit such as KiB, MiB, GiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str) -> HostPort:
    """``HOST:PORT`` or ``[v6]:PORT``; port 0 asks the kernel for a free one."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"invalid address {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return HostPort(host, int(port))


class ModuleDelivery(enum.StrEnum):
    """How Envoy gets a module's bytes."""

    LOCAL = "local"
    """A content-addressed path in the cache directory, which Envoy must be able to read."""
    REMOTE = "remote"
    """Envoy downloads ``/modules/sha256/<hex>`` from wasmxds's admin server (sha256 enforced)."""
    INLINE = "inline"
    """The bytes travel inside the ECDS resource (small modules only)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmxds"


def parse_rate(text: str) -> float:
    """``1KiB/s``, ``64KiB``, ``512`` → bytes per second (the ``/s`` is optional)."""
    value = text.strip().removesuffix("/s").removesuffix("ps")
    try:
        return float(parse_size(value))
    except SettingsError:
        raise SettingsError(f"{text!r}: use a size per second such as 1KiB/s or 512/s") from None


def _optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """An empty value means the setting is off, as leaving the flag out does."""
    return lambda text: parse(text) if text else None


def _is_dir(flag: str, text: str, path: Path) -> str | None:
    return None if path.is_dir() else f"{flag} {path}: not a directory"


def _is_file(flag: str, text: str, path: Path) -> str | None:
    return None if path.is_file() else f"{flag} {path}: no such file"


def _positive(flag: str, text: str, seconds: float | None) -> str | None:
    return None if seconds is None or seconds > 0 else f"{flag} must be positive, got {text!r}"


def _at_least_one(flag: str, text: str, count: int) -> str | None:
    return None if count >= 1 else f"{flag} must be at least 1, got {count}"


def _http_url(flag: str, text: str, url: str) -> str | None:
    if not url or url.startswith(("http://", "https://")):
        return None
    return f"{flag} {url!r}: expected http(s)://HOST:PORT"


def _frozenset(items: list[str]) -> frozenset[str]:
    return frozenset(items)


# One setting each, grouped by the stage it tunes, in the order data flows.
# ``wasmxds serve --help`` and docs/running.md list them in this order.

CONFIG_DIRS: Setting[tuple[Path, ...]] = Setting(
    field="config_dirs",
    flag="--config-dir",
    kind=Kind.REPEATED,
    parse=Path,
    check=_is_dir,
    metavar="DIR",
    shown_default="none (repeatable)",
    help="directory of WasmPlugin YAML, watched recursively (repeatable; this, --kubernetes,"
    " or both)",
    doc="directories of WasmPlugin YAML, watched recursively (this, `--kubernetes`, or both)",
)
LISTENER_DIRS: Setting[tuple[Path, ...]] = Setting(
    field="listener_dirs",
    flag="--listeners",
    kind=Kind.REPEATED,
    parse=Path,
    check=_is_dir,
    metavar="DIR",
    help="directory of ListenerTemplate/ClusterTemplate YAML, watched recursively (repeatable)",
    doc="listener mode: ListenerTemplate/ClusterTemplate YAML served over LDS/CDS (repeatable;"
    " see [Listener mode](listener-mode.md))",
)
ROOT_NAMESPACE: Setting[str] = Setting(
    field="root_namespace",
    flag="--root-namespace",
    default="istio-system",
    metavar="NAME",
    help="plugins in this namespace apply to proxies in every namespace",
)
SOURCES = Group(
    "sources",
    "Where WasmPlugins (and, in listener mode, listener templates) are read from.",
    (CONFIG_DIRS, LISTENER_DIRS, ROOT_NAMESPACE),
)

DEBOUNCE_AFTER: Setting[float] = Setting(
    field="debounce_after",
    flag="--debounce-after",
    parse=parse_duration,
    default="100ms",
    metavar="DUR",
    help="push after this much quiet following a change (Istio's PILOT_DEBOUNCE_AFTER)",
)
DEBOUNCE_MAX: Setting[float] = Setting(
    field="debounce_max",
    flag="--debounce-max",
    parse=parse_duration,
    default="10s",
    metavar="DUR",
    help="...but no later than this after the first change (Istio's PILOT_DEBOUNCE_MAX)",
)
DEBOUNCE = Group(
    "debounce",
    "Changes are batched: one push per burst of edits.",
    (DEBOUNCE_AFTER, DEBOUNCE_MAX),
)

INSECURE_REGISTRIES: Setting[frozenset[str]] = Setting(
    field="insecure_registries",
    flag="--insecure-registry",
    kind=Kind.REPEATED,
    collect=_frozenset,
    metavar="HOST[:PORT]",
    help="reach this module host over plain HTTP or unverified TLS; '*' for all (repeatable)",
    doc="registries and module hosts reached over unverified TLS, or plain HTTP when they"
    " answer that way; `*` for all (repeatable)",
)


def _helper_name(flag: str, text: str, name: str) -> str | None:
    if name == ANY_HELPER or valid_helper_name(name):
        return None
    return (
        f"{flag} {text!r}: give the helper's name as in the docker config (ecr-login for"
        " docker-credential-ecr-login): letters, digits, '.', '_' and '-', or '*' for any"
    )


CREDENTIAL_HELPERS: Setting[frozenset[str]] = Setting(
    field="credential_helpers",
    flag="--credential-helpers",
    kind=Kind.REPEATED,
    collect=_frozenset,
    check=_helper_name,
    metavar="NAME",
    shown_default="none",
    help="let the docker config of the user running wasmxds run docker-credential-NAME for the"
    " registries its `credHelpers`/`credsStore` name; '*' for any (repeatable)",
    doc="let the docker config of the user running wasmxds (`$DOCKER_CONFIG/config.json`)"
    " run `docker-credential-NAME` for the registries its `credHelpers`/`credsStore` name,"
    " as Docker does (e.g. `ecr-login`, `gcloud`, `acr-env`); `*` for any (repeatable)."
    " Helpers named in an `imagePullSecret` never run",
)
REGISTRY_CA: Setting[Path | None] = Setting(
    field="registry_ca",
    flag="--registry-ca",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="trust these CA certificates (PEM) for registries and module hosts, besides the system's",
)


def _verification_key(text: str) -> VerificationKey:
    try:
        with open(text, encoding="ascii", errors="replace") as file:
            pem = file.read(1 << 20)
    except OSError as exc:
        raise SettingsError(f"cannot read {text}: {exc.strerror or exc}") from None
    try:
        return parse_verification_key(pem, source=text)
    except KeyFormatError as exc:
        raise SettingsError(str(exc)) from None


VERIFICATION_KEYS: Setting[tuple[VerificationKey, ...]] = Setting(
    field="verification_keys",
    flag="--verification-key",
    kind=Kind.REPEATED,
    parse=_verification_key,
    collect=lambda keys: tuple(dict.fromkeys(keys)),
    metavar="FILE",
    shown_default="none",
    help="every OCI module must carry a cosign signature by one of these PEM public keys"
    " (repeatable); other modules are refused",
    doc="every OCI module must carry a cosign signature by one of these PEM public keys"
    " (ECDSA P-256, RSA, Ed25519; repeatable), besides any `verificationKey` its plugin"
    " names; http(s) and file modules cannot be signed and are refused",
)
MODULE_ACCESS_TTL: Setting[float] = Setting(
    field="module_access_ttl",
    flag="--module-access-ttl",
    parse=parse_duration,
    default="5m",
    metavar="DUR",
    help="how long a registry's answer is reused: that a plugin's credentials may use a module"
    " cached for other credentials, and that a module's signature verified (0s: ask every time)",
)
MAX_MODULE_SIZE: Setting[int] = Setting(
    field="max_module_size",
    flag="--max-module-size",
    parse=parse_size,
    default="256MiB",
    metavar="SIZE",
    help="refuse modules larger than this after unpacking",
    doc="larger modules fail clearly (never truncated)",
)
PREFLIGHT: Setting[str] = Setting(
    field="preflight",
    flag="--preflight",
    choices=("on", "off"),
    default="on",
    help="check every fetched module before any proxy gets it: wasmtime validates it and its"
    " imports and exports must fit the proxy-wasm ABI Envoy implements; a module that fails"
    " is refused like a failed fetch (`module_incompatible`)",
)
INITIAL_FETCH_WAIT: Setting[float] = Setting(
    field="initial_fetch_wait",
    flag="--initial-fetch-wait",
    parse=parse_duration,
    default="30s",
    metavar="DUR",
    help="at start-up, hold the first push this long for module downloads still under way",
    doc="at start-up, the first push waits this long for module downloads under way, so a"
    " proxy never gets listeners missing a plugin that is merely still downloading",
)
FETCH_RETRY_MAX: Setting[float] = Setting(
    field="fetch_retry_max",
    flag="--fetch-retry-max",
    parse=parse_duration,
    default="60s",
    metavar="DUR",
    help="longest wait between background retries of a failed module fetch",
)
REPULL_INTERVAL: Setting[float | None] = Setting(
    field="repull_interval",
    flag="--repull-interval",
    parse=_optional(parse_duration),
    check=_positive,
    metavar="DUR",
    shown_default="off",
    help="re-check the tags of `imagePullPolicy: Always` OCI modules this often",
)
MAX_PARALLEL_PULLS: Setting[int] = Setting(
    field="max_parallel_pulls",
    flag="--max-parallel-pulls",
    parse=int,
    argparse_type=True,
    check=_at_least_one,
    default="4",
    metavar="N",
    help="module downloads running at once",
)
MAX_PULLS_PER_HOST: Setting[int] = Setting(
    field="max_pulls_per_host",
    flag="--max-pulls-per-host",
    parse=int,
    argparse_type=True,
    check=_at_least_one,
    default="2",
    metavar="N",
    help="of those, how many one host[:port] may hold while another host's pull waits, so"
    " slow hosts cannot starve the others; slots nobody else wants are used anyway (at most"
    " `--max-parallel-pulls`)",
)
FETCH_CONNECT_TIMEOUT: Setting[float] = Setting(
    field="fetch_connect_timeout",
    flag="--fetch-connect-timeout",
    parse=parse_duration,
    check=_positive,
    default="10s",
    metavar="DUR",
    help="fail a download whose connection or TLS handshake takes longer; retried later with"
    " backoff, not at once",
)
FETCH_IDLE_TIMEOUT: Setting[float] = Setting(
    field="fetch_idle_timeout",
    flag="--fetch-idle-timeout",
    parse=parse_duration,
    check=_positive,
    default="15s",
    metavar="DUR",
    help="fail a download that receives nothing for this long; retried later with backoff,"
    " not at once",
)
FETCH_MIN_RATE: Setting[float] = Setting(
    field="fetch_min_rate",
    flag="--fetch-min-rate",
    parse=parse_rate,
    refusal="{flag} {reason}",
    default="1KiB/s",
    metavar="RATE",
    help="fail a download slower than this over a `--fetch-rate-window` (e.g. `64KiB/s`;"
    " `0` turns the check off)",
)
FETCH_RATE_WINDOW: Setting[float] = Setting(
    field="fetch_rate_window",
    flag="--fetch-rate-window",
    parse=parse_duration,
    check=_positive,
    default="20s",
    metavar="DUR",
    help="the window `--fetch-min-rate` is averaged over; the first one of each download"
    " (redirects and registry round trips included) is the grace period",
)
FETCH_LIMITS = (FETCH_CONNECT_TIMEOUT, FETCH_IDLE_TIMEOUT, FETCH_MIN_RATE, FETCH_RATE_WINDOW)
MODULES = Group(
    "module fetching",
    "Modules from http(s):// and oci:// URLs (and URLs without a scheme) are fetched,"
    " verified and cached by wasmxds; a failed fetch is retried in the background.",
    (
        INSECURE_REGISTRIES,
        REGISTRY_CA,
        CREDENTIAL_HELPERS,
        VERIFICATION_KEYS,
        MODULE_ACCESS_TTL,
        MAX_MODULE_SIZE,
        PREFLIGHT,
        INITIAL_FETCH_WAIT,
        FETCH_RETRY_MAX,
        REPULL_INTERVAL,
        MAX_PARALLEL_PULLS,
        MAX_PULLS_PER_HOST,
        *FETCH_LIMITS,
    ),
)

CACHE_DIR: Setting[Path] = Setting(
    field="cache_dir",
    flag="--cache-dir",
    parse=Path,
    default_factory=lambda: str(default_cache_dir()),
    shown_default="`~/.cache/wasmxds`",
    metavar="DIR",
    help="where modules are cached by content: `modules/sha256/<hex>.wasm`; the cache index"
    " survives restarts",
)
MODULE_EXPIRY: Setting[float] = Setting(
    field="module_expiry",
    flag="--module-expiry",
    parse=parse_duration,
    check=_positive,
    default="24h",
    metavar="DUR",
    help="delete cached modules no snapshot has referenced for this long (Istio's"
    " WASM_MODULE_EXPIRY)",
)
CACHE_MAX_BYTES: Setting[int | None] = Setting(
    field="cache_max_bytes",
    flag="--cache-max-bytes",
    parse=_optional(parse_size),
    metavar="SIZE",
    shown_default="unlimited",
    help="evict least recently used modules beyond this cache size (never one in use)",
)
CACHE = Group(
    "module cache",
    "Verified modules are stored by content; the cache index survives restarts.",
    (CACHE_DIR, MODULE_EXPIRY, CACHE_MAX_BYTES),
)

MODULE_DELIVERY: Setting[ModuleDelivery] = Setting(
    field="module_delivery",
    flag="--module-delivery",
    parse=ModuleDelivery,
    choices=tuple(d.value for d in ModuleDelivery),
    default="local",
    help="how Envoy gets module bytes: a cached file path (local), a download from wasmxds"
    " (remote) or inside the resource (inline)",
    doc="how Envoy gets module bytes: `local` = a path in the shared cache; `remote` = Envoy"
    " downloads `/modules/sha256/<hex>` from the admin server with sha256 enforced; `inline` ="
    " the bytes inside the resource",
)
MODULE_BASE_URL: Setting[str | None] = Setting(
    field="module_base_url",
    flag="--module-base-url",
    check=_http_url,
    metavar="URL",
    help="with `--module-delivery remote`: wasmxds's admin server as proxies reach it"
    " (`http://wasmxds:18001`); proxies need the `wasmxds_modules` cluster (`wasmxds bootstrap"
    " --modules-address`)",
)
PROXY_CACHE_DIR: Setting[Path | None] = Setting(
    field="proxy_cache_dir",
    flag="--proxy-cache-dir",
    parse=Path,
    metavar="DIR",
    shown_default="`--cache-dir`",
    help="with `local` delivery: the cache directory as Envoy sees it, when the shared volume"
    " is mounted elsewhere",
)
INLINE_MAX_SIZE: Setting[int] = Setting(
    field="inline_max_size",
    flag="--inline-max-size",
    parse=parse_size,
    default="1MiB",
    metavar="SIZE",
    help="with `inline` delivery: the largest module sent inside a resource",
    doc="with `inline`: a larger module is unavailable — the plugin keeps its last good"
    " version, or gets its fail-strategy stand-in if it never had one — with the reason",
)
WASM_RUNTIME: Setting[str] = Setting(
    field="wasm_runtime",
    flag="--wasm-runtime",
    default="envoy.wasm.runtime.v8",
    metavar="NAME",
    help="the Wasm runtime named in every filter",
)
DELIVERY = Group(
    "delivery to Envoy",
    "What each generated filter carries so Envoy can load the module.",
    (MODULE_DELIVERY, MODULE_BASE_URL, PROXY_CACHE_DIR, INLINE_MAX_SIZE, WASM_RUNTIME),
)


def _parse_steps(text: str) -> tuple[float, ...]:
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise SettingsError(f"invalid rollout steps: {exc}") from exc


ROLLOUT_STEPS: Setting[tuple[float, ...]] = Setting(
    field="rollout_steps",
    flag="--rollout-steps",
    parse=_parse_steps,
    default="100",
    metavar="PCTS",
    help="default steps of a plugin change's rollout, in percent of the proxies it applies to"
    " (e.g. 5,25,100; the last is 100); 100 alone: no staging",
    doc="default steps of a staged rollout, in percent of the proxies a plugin applies to"
    " (e.g. `5,25,100`); a plugin's `rollout.wasmxds.io/steps` annotation overrides it;"
    " `100` alone (the default) sends every change everywhere at once",
)


def _parse_rollout_interval(text: str) -> float:
    seconds = parse_duration(text)
    if not interval_in_bounds(seconds):
        raise SettingsError(f"invalid rollout interval {text[:40]!r}: at most 7 days (168h)")
    return seconds


ROLLOUT_INTERVAL: Setting[float] = Setting(
    field="rollout_interval",
    flag="--rollout-interval",
    parse=_parse_rollout_interval,
    default="60s",
    metavar="DUR",
    help="default time each rollout step bakes (ACKed and healthy) before the next",
    doc="default time each rollout step bakes before the next (every proxy of the step"
    " ACKed, health verdict healthy); `rollout.wasmxds.io/interval` overrides it",
)
ROLLOUT = Group(
    "staged rollouts",
    "How plugin changes reach the fleet: in steps, rolled back on a NACK or bad health"
    " (docs/rollouts.md).",
    (ROLLOUT_STEPS, ROLLOUT_INTERVAL),
)

XDS_ADDRESS: Setting[HostPort] = Setting(
    field="xds_address",
    flag="--xds-address",
    parse=parse_host_port,
    default="127.0.0.1:18000",
    metavar="HOST:PORT",
    help="gRPC ADS listen address (loopback by default; use `0.0.0.0:18000` to serve other hosts)",
)
MAX_RESOURCE_NAMES: Setting[int] = Setting(
    field="max_resource_names",
    flag="--max-resource-names",
    parse=int,
    argparse_type=True,
    check=_at_least_one,
    default="1000",
    metavar="N",
    help="most resource names one xDS stream may subscribe to per type; a stream asking for"
    " more is refused with `RESOURCE_EXHAUSTED`",
)
TLS_CERT: Setting[Path | None] = Setting(
    field="tls_cert",
    flag="--tls-cert",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="serve xDS over TLS with this certificate chain (with `--tls-key`)",
)
TLS_KEY: Setting[Path | None] = Setting(
    field="tls_key",
    flag="--tls-key",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="the private key for `--tls-cert`",
)
CLIENT_CA: Setting[Path | None] = Setting(
    field="client_ca",
    flag="--client-ca",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="mutual TLS: only proxies with a certificate from this CA get a stream (needs"
    " `--tls-cert`)",
)
NODE_IDENTITY_MODES = ("certificate", "metadata")
NODE_IDENTITY: Setting[str | None] = Setting(
    field="node_identity",
    flag="--node-identity",
    choices=NODE_IDENTITY_MODES,
    shown_default="`certificate` with `--client-ca`, else `metadata`",
    help="where a proxy's namespace comes from: `certificate` (the SPIFFE ID of its client"
    " certificate; a stream whose metadata claims another namespace is refused with"
    " `PERMISSION_DENIED`; needs `--client-ca`) or `metadata` (node metadata `NAMESPACE`)",
)


def _trust_domain(flag: str, text: str, name: str) -> str | None:
    if valid_trust_domain(name):
        return None
    return (
        f"{flag} {text!r}: a trust domain is lowercase letters, digits, '.', '-' and '_'"
        " (the host part of spiffe://<trust-domain>/ns/<namespace>/sa/<account>)"
    )


TRUST_DOMAINS: Setting[frozenset[str]] = Setting(
    field="trust_domains",
    flag="--trust-domain",
    kind=Kind.REPEATED,
    collect=_frozenset,
    check=_trust_domain,
    metavar="NAME",
    shown_default="any (repeatable)",
    help="with `--node-identity certificate` or `--admin-client-ca`: accept only client"
    " certificates whose SPIFFE ID is in this trust domain, e.g. `cluster.local`, on the xDS"
    " and admin ports (repeatable)",
)
ALLOW_SECRETS_IN_PLAINTEXT: Setting[bool] = Setting(
    field="allow_secrets_in_plaintext",
    flag="--allow-secrets-in-plaintext",
    kind=Kind.SWITCH,
    help="send pluginConfig values from Secrets (annotation `secrets.wasmxds.io/plugin-config`)"
    " over plaintext xDS too; without it, and without `--tls-cert`, a plugin that references"
    " Secrets is refused (last good version without such values, else its stand-in)",
)
XDS = Group(
    "xDS server",
    "The gRPC ADS port Envoy connects to, optionally protected by (mutual) TLS.",
    (
        XDS_ADDRESS,
        MAX_RESOURCE_NAMES,
        TLS_CERT,
        TLS_KEY,
        CLIENT_CA,
        NODE_IDENTITY,
        TRUST_DOMAINS,
        ALLOW_SECRETS_IN_PLAINTEXT,
    ),
)

ADMIN_ADDRESS: Setting[HostPort] = Setting(
    field="admin_address",
    flag="--admin-address",
    parse=parse_host_port,
    default="127.0.0.1:18001",
    metavar="HOST:PORT",
    help="admin HTTP listen address: health, metrics, debug pages, module downloads",
    doc="admin HTTP: health, metrics, debug pages, module downloads (see [Operating"
    " wasmxds](operating.md))",
)
ADMIN_TLS_CERT: Setting[Path | None] = Setting(
    field="admin_tls_cert",
    flag="--admin-tls-cert",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="serve the admin port over HTTPS with this certificate chain (with `--admin-tls-key`)",
)
ADMIN_TLS_KEY: Setting[Path | None] = Setting(
    field="admin_tls_key",
    flag="--admin-tls-key",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="the private key for `--admin-tls-cert`",
)
ADMIN_CLIENT_CA: Setting[Path | None] = Setting(
    field="admin_client_ca",
    flag="--admin-client-ca",
    parse=Path,
    check=_is_file,
    metavar="FILE",
    help="admin mutual TLS: a module is served only to a client certificate from this CA whose"
    " SPIFFE ID (one URI SAN, a `--trust-domain`) names a namespace a plugin using it applies"
    " to; health, readiness and metrics need no certificate (needs `--admin-tls-cert`)",
)
DEBUG_PUBLIC: Setting[bool] = Setting(
    field="debug_public",
    flag="--debug-public",
    kind=Kind.SWITCH,
    help="let anyone who reaches a non-loopback admin address read the `/debug/` pages (without"
    " it they need a client certificate that `--debug-identity` names; `/metrics`, `/healthz`,"
    " `/readyz` are always open)",
)


def _debug_identity(flag: str, text: str, value: str) -> str | None:
    try:
        parse_identity_pattern(value)
    except ValueError as exc:
        return (
            f"{flag} {text!r}: expected a SPIFFE ID spiffe://<trust-domain>/ns/<namespace>/sa/"
            f"<account>, or spiffe://<trust-domain>/ns/<namespace>/* for every account of a"
            f" namespace ({exc})"
        )
    return None


DEBUG_IDENTITIES: Setting[frozenset[str]] = Setting(
    field="debug_identities",
    flag="--debug-identity",
    kind=Kind.REPEATED,
    collect=_frozenset,
    check=_debug_identity,
    metavar="ID",
    shown_default="none (repeatable)",
    help="with `--admin-client-ca`: a client certificate whose SPIFFE ID is this one (or"
    " matches `spiffe://<trust-domain>/ns/<namespace>/*`) reads the `/debug/` pages on a"
    " non-loopback admin address; other certificates from the CA only download modules"
    " (repeatable)",
)
ADMIN = Group(
    "admin server",
    "Health, readiness, metrics, debug pages and module downloads.",
    (ADMIN_ADDRESS, ADMIN_TLS_CERT, ADMIN_TLS_KEY, ADMIN_CLIENT_CA, DEBUG_PUBLIC, DEBUG_IDENTITIES),
)

KUBERNETES: Setting[bool] = Setting(
    field="kubernetes",
    flag="--kubernetes",
    kind=Kind.SWITCH,
    help="also read WasmPlugins and the pull Secrets they name from a Kubernetes API server"
    " (in-cluster config unless `--kubeconfig`); on duplicates the directories win",
)
KUBECONFIG: Setting[Path | None] = Setting(
    field="kubeconfig",
    flag="--kubeconfig",
    parse=Path,
    metavar="FILE",
    shown_default="in-cluster",
    help="with `--kubernetes`: use this kubeconfig's current context instead of the pod's"
    " service account",
)
NAMESPACES: Setting[tuple[str, ...]] = Setting(
    field="namespaces",
    flag="--namespace",
    kind=Kind.REPEATED,
    collect=lambda names: tuple(dict.fromkeys(names)),
    metavar="NS",
    shown_default="all",
    help="with `--kubernetes`: watch only these namespaces (repeatable)",
)
WRITE_STATUS: Setting[bool] = Setting(
    field="write_status",
    flag="--write-status",
    kind=Kind.SWITCH,
    help="with `--kubernetes`: write a `Ready` condition (module fetched or why not, proxy"
    " count) into each WasmPlugin's status; needs RBAC to patch wasmplugins/status",
)
KUBERNETES_GROUP = Group(
    "Kubernetes",
    "Read WasmPlugins (extensions.istio.io/v1alpha1) and the image pull secrets they name"
    " from a Kubernetes API server, alone or together with --config-dir.",
    (KUBERNETES, KUBECONFIG, NAMESPACES, WRITE_STATUS),
)

LOG_LEVEL: Setting[str] = Setting(
    field="log_level",
    flag="--log-level",
    choices=LOG_LEVELS,
    default="info",
    help="the least severe log lines written",
)
LOG_FORMAT: Setting[str] = Setting(
    field="log_format",
    flag="--log-format",
    choices=LOG_FORMATS,
    default="text",
    help="`text` for people; `json` gives one JSON object per line",
)
LOGGING = Group("logging", "Logs go to stderr.", (LOG_LEVEL, LOG_FORMAT))

GROUPS = (
    SOURCES,
    DEBOUNCE,
    MODULES,
    CACHE,
    DELIVERY,
    ROLLOUT,
    XDS,
    ADMIN,
    KUBERNETES_GROUP,
    LOGGING,
)
"""Every ``wasmxds serve`` setting, once."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``wasmxds serve`` was told; each field's flag, default and meaning is the
    declaration of the same name above (``wasmxds serve --help``, docs/running.md)."""

    config_dirs: tuple[Path, ...]
    xds_address: HostPort = XDS_ADDRESS.value_default
    admin_address: HostPort = ADMIN_ADDRESS.value_default
    admin_tls_cert: Path | None = ADMIN_TLS_CERT.value_default
    admin_tls_key: Path | None = ADMIN_TLS_KEY.value_default
    admin_client_ca: Path | None = ADMIN_CLIENT_CA.value_default
    debug_public: bool = DEBUG_PUBLIC.value_default
    debug_identities: frozenset[str] = DEBUG_IDENTITIES.value_default
    # The environment decides the cache directory, so it is read per instance.
    cache_dir: Path = field(default_factory=lambda: CACHE_DIR.value_default)
    proxy_cache_dir: Path | None = PROXY_CACHE_DIR.value_default
    root_namespace: str = ROOT_NAMESPACE.value_default
    debounce_after: float = DEBOUNCE_AFTER.value_default
    debounce_max: float = DEBOUNCE_MAX.value_default
    insecure_registries: frozenset[str] = INSECURE_REGISTRIES.value_default
    module_delivery: ModuleDelivery = MODULE_DELIVERY.value_default
    module_base_url: str | None = MODULE_BASE_URL.value_default
    inline_max_size: int = INLINE_MAX_SIZE.value_default
    max_module_size: int = MAX_MODULE_SIZE.value_default
    preflight: str = PREFLIGHT.value_default
    initial_fetch_wait: float = INITIAL_FETCH_WAIT.value_default
    fetch_retry_max: float = FETCH_RETRY_MAX.value_default
    registry_ca: Path | None = REGISTRY_CA.value_default
    credential_helpers: frozenset[str] = CREDENTIAL_HELPERS.value_default
    verification_keys: tuple[VerificationKey, ...] = VERIFICATION_KEYS.value_default
    module_access_ttl: float = MODULE_ACCESS_TTL.value_default
    repull_interval: float | None = REPULL_INTERVAL.value_default
    module_expiry: float = MODULE_EXPIRY.value_default
    cache_max_bytes: int | None = CACHE_MAX_BYTES.value_default
    max_parallel_pulls: int = MAX_PARALLEL_PULLS.value_default
    max_pulls_per_host: int = MAX_PULLS_PER_HOST.value_default
    fetch_connect_timeout: float = FETCH_CONNECT_TIMEOUT.value_default
    fetch_idle_timeout: float = FETCH_IDLE_TIMEOUT.value_default
    fetch_min_rate: float = FETCH_MIN_RATE.value_default
    fetch_rate_window: float = FETCH_RATE_WINDOW.value_default
    wasm_runtime: str = WASM_RUNTIME.value_default
    rollout_steps: tuple[float, ...] = ROLLOUT_STEPS.value_default
    rollout_interval: float = ROLLOUT_INTERVAL.value_default
    max_resource_names: int = MAX_RESOURCE_NAMES.value_default
    listener_dirs: tuple[Path, ...] = LISTENER_DIRS.value_default
    tls_cert: Path | None = TLS_CERT.value_default
    tls_key: Path | None = TLS_KEY.value_default
    client_ca: Path | None = CLIENT_CA.value_default
    node_identity: str | None = NODE_IDENTITY.value_default
    """None: the default for the TLS settings (see :attr:`identity_from_certificate`)."""
    trust_domains: frozenset[str] = TRUST_DOMAINS.value_default
    allow_secrets_in_plaintext: bool = ALLOW_SECRETS_IN_PLAINTEXT.value_default
    kubernetes: bool = KUBERNETES.value_default
    kubeconfig: Path | None = KUBECONFIG.value_default
    namespaces: tuple[str, ...] = NAMESPACES.value_default
    write_status: bool = WRITE_STATUS.value_default
    log_level: str = LOG_LEVEL.value_default
    log_format: str = LOG_FORMAT.value_default

    @property
    def module_dir_for_proxies(self) -> Path:
        return self.proxy_cache_dir or self.cache_dir

    @property
    def identity_from_certificate(self) -> bool:
        """Whether node namespaces come from client certificates (DESIGN "Node identity")."""
        if self.node_identity is None:
            return self.client_ca is not None
        return self.node_identity == "certificate"


def fetcher_settings(settings: ServeSettings) -> FetcherSettings:
    """How module downloads behave under ``settings`` (``serve`` and ``validate --fetch``)."""
    return FetcherSettings(
        max_size=settings.max_module_size,
        insecure_hosts=settings.insecure_registries,
        ca_file=settings.registry_ca,
        credential_helpers=settings.credential_helpers,
        connect_timeout=settings.fetch_connect_timeout,
        read_timeout=settings.fetch_idle_timeout,
        min_rate=settings.fetch_min_rate,
        rate_window=settings.fetch_rate_window,
        # Stalled pulls lend their slots: up to twice the limit may be connected.
        max_connections=max(10, 2 * settings.max_parallel_pulls),
    )


# The docs' table sits between these lines; `make flags-doc` rewrites it.
TABLE_START = (
    "<!-- flags: generated by `python -m wasmxds.settings --markdown`; edit wasmxds/settings.py -->"
)
TABLE_END = "<!-- flags: end -->"


def docs_with_table(text: str) -> str:
    """``text`` (docs/running.md) with the flag table between the markers regenerated."""
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    head = text[: start + len(TABLE_START)]
    return f"{head}\n{markdown_table(GROUPS)}{text[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wasmxds.settings", description="The `wasmxds serve` flag table."
    )
    parser.add_argument("--markdown", action="store_true", help="print the flag table")
    parser.add_argument(
        "--update", type=Path, metavar="FILE", help="rewrite the table in FILE (docs/running.md)"
    )
    args = parser.parse_args(argv)
    if args.update is not None:
        args.update.write_text(docs_with_table(args.update.read_text()))
    if args.markdown or args.update is None:
        sys.stdout.write(markdown_table(GROUPS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
