"""How module downloads behave (http(s) and OCI alike); the defaults follow Istio's agent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wasmxds.backoff import Backoff
from wasmxds.errors import SettingsError
from wasmxds.modules.ssrf import IPNetwork

__all__ = ["DEFAULT_FETCH_BACKOFF", "DEFAULT_MAX_SIZE", "FetcherSettings"]

# Istio's ISTIO_WASM_MAX_BINARY_SIZE_BYTES default.
DEFAULT_MAX_SIZE = 256 * 1024 * 1024

# Istio starts at 500 ms; 5 tries then wait 0.5 + 1 + 2 + 4 s (±20%) at most.
DEFAULT_FETCH_BACKOFF = Backoff(initial=0.5, factor=2.0, max=8.0, jitter=0.2)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetcherSettings:
    """How module downloads behave; the defaults follow Istio's agent where it has one.

    ``total_timeout`` bounds one ``fetch()`` including its retries, so a server
    that trickles bytes cannot hold a download slot forever (Istio uses 30 s,
    too short for a large module on a slow link). ``insecure_hosts`` holds
    ``host`` (any port) or ``host:port`` entries, or ``*``, for which TLS is not
    verified. ``ca_file`` is trusted in addition to the system store, so private
    and public module hosts work side by side. ``blocked_cidrs`` extends the SSRF
    guard (Istio's ``BLOCKED_CIDRS_IN_WASM_FETCH``). ``credential_helpers`` names
    the ``docker-credential-<name>`` programs the server's docker config may
    have run (``*`` for any); none by default.

    Progress rules, so a slow host lets go of its download slot long before
    ``total_timeout``: ``connect_timeout`` bounds resolving, connecting and the
    TLS handshake; ``read_timeout`` is the longest silence (no byte at all);
    ``min_rate`` (bytes/s, 0 for none) is the least a server must send on
    average over every ``rate_window`` seconds of an answer, the first window
    being the grace period. Too slow is a failure worth retrying later, not at
    once. ``max_connections`` bounds each connection pool.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 15.0
    min_rate: float = 1024.0
    rate_window: float = 20.0
    max_connections: int = 10
    total_timeout: float | None = 300.0
    tries: int = 5
    backoff: Backoff = DEFAULT_FETCH_BACKOFF
    max_size: int = DEFAULT_MAX_SIZE
    max_redirects: int = 10
    ca_file: Path | None = None
    insecure_hosts: frozenset[str] = frozenset()
    blocked_cidrs: tuple[str | IPNetwork, ...] = ()
    credential_helpers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise SettingsError(f"fetch tries must be at least 1, got {self.tries}")
        if self.max_size < 1:
            raise SettingsError(f"maximum module size must be positive, got {self.max_size}")
        for name, seconds in (
            ("connect timeout", self.connect_timeout),
            ("idle timeout", self.read_timeout),
            ("rate window", self.rate_window),
        ):
            if not seconds > 0:
                raise SettingsError(f"fetch {name} must be positive, got {seconds:g} s")
        if self.min_rate < 0:
            raise SettingsError(f"minimum fetch rate must not be negative, got {self.min_rate:g}")
        if self.max_connections < 1:
            raise SettingsError(f"max connections must be at least 1, got {self.max_connections}")
