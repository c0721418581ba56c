"""Settings for ``wasmxds serve``, parsed once from the command line.

Each field's docstring is the reference for its flag; ``wasmxds serve --help``
repeats them in short.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from wasmxds.errors import SettingsError

__all__ = [
    "HostPort",
    "ModuleDelivery",
    "ServeSettings",
    "default_cache_dir",
    "parse_duration",
    "parse_host_port",
    "parse_size",
]

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


@dataclass(frozen=True, slots=True)
class ServeSettings:
    config_dirs: tuple[Path, ...]
    """Directories watched (recursively) for WasmPlugin YAML."""

    xds_address: HostPort = HostPort("127.0.0.1", 18000)
    """Where the gRPC ADS server listens."""

    admin_address: HostPort = HostPort("127.0.0.1", 18001)
    """Where the admin HTTP server (health, metrics, debug, modules) listens."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    """Where fetched modules are stored, by content."""

    proxy_cache_dir: Path | None = None
    """The cache directory as the proxies see it (shared volume mounted elsewhere);
    defaults to ``cache_dir``. Only used with ``local`` delivery."""

    root_namespace: str = "istio-system"
    """Plugins in this namespace apply to proxies of every namespace."""

    debounce_after: float = 0.1
    """Push after this much quiet since the last change (Istio's PILOT_DEBOUNCE_AFTER)."""

    debounce_max: float = 10.0
    """...or at most this long after the first change (Istio's PILOT_DEBOUNCE_MAX)."""

    insecure_registries: frozenset[str] = frozenset()
    """Hosts (``host`` or ``host:port``, or ``*``) reached over plain HTTP or unverified TLS."""

    module_delivery: ModuleDelivery = ModuleDelivery.LOCAL
    """How Envoy gets module bytes; see :class:`ModuleDelivery`."""

    module_base_url: str | None = None
    """With ``remote`` delivery: wasmxds's admin address as proxies reach it (http://host:port)."""

    inline_max_size: int = 1 << 20
    """With ``inline`` delivery: the largest module sent inside a resource."""

    max_module_size: int = 256 << 20
    """Largest module (after unpacking) wasmxds accepts; bigger ones fail clearly."""

    initial_fetch_wait: float = 30.0
    """At start-up, how long the first push waits for module fetches still under way."""

    fetch_retry_max: float = 60.0
    """Longest wait between background retries of a failed module fetch."""

    registry_ca: Path | None = None
    """Extra CA certificates (PEM) trusted for registries and module hosts, besides the system's."""

    repull_interval: float | None = None
    """Re-check the tags of ``imagePullPolicy: Always`` OCI modules this often (off when None)."""

    module_expiry: float = 24 * 3600.0
    """Delete cached modules no snapshot referenced for this long (Istio's WASM_MODULE_EXPIRY)."""

    cache_max_bytes: int | None = None
    """Evict least recently used modules beyond this cache size (unlimited when None)."""

    max_parallel_pulls: int = 4
    """How many module downloads run at once."""

    wasm_runtime: str = "envoy.wasm.runtime.v8"
    """The Wasm runtime named in every generated filter."""

    listener_dirs: tuple[Path, ...] = ()
    """Listener mode: directories of ListenerTemplate/ClusterTemplate YAML served over LDS/CDS."""

    tls_cert: Path | None = None
    """Certificate chain for TLS on the xDS port (with ``tls_key``)."""

    tls_key: Path | None = None
    """Private key for ``tls_cert``."""

    client_ca: Path | None = None
    """With TLS: only clients presenting a certificate signed by this CA get a stream."""

    kubernetes: bool = False
    """Also read WasmPlugins (and the pull secrets they name) from a Kubernetes API server."""

    kubeconfig: Path | None = None
    """With ``kubernetes``: the kubeconfig file to use; None means in-cluster config."""

    namespaces: tuple[str, ...] = ()
    """With ``kubernetes``: watch only these namespaces (all of them when empty)."""

    write_status: bool = False
    """With ``kubernetes``: write a ``Ready`` condition into each WasmPlugin's status."""

    log_level: str = "info"
    log_format: str = "text"

    @property
    def module_dir_for_proxies(self) -> Path:
        return self.proxy_cache_dir or self.cache_dir
