"""What the xDS server reports as streams run, for whoever counts (metrics).

The server calls these at the few points where something worth counting
happens; it knows nothing of how they are recorded. :class:`wasmxds.metrics.StreamMetrics`
records them as Prometheus metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

__all__ = ["NoEvents", "StreamCounts", "StreamEvents"]

StreamCounts = Callable[[], Iterable[tuple[tuple[str, str], float]]]
"""Open streams per (flavour, service), read whenever asked."""


class StreamEvents(Protocol):
    """Callbacks of the xDS server."""

    def watch_streams(self, counts: StreamCounts) -> None:
        """The server is built; ``counts`` tells how many streams are open at any time."""

    def on_push(self, type_url: str, flavour: str, since_change: float | None) -> None:
        """A response was written; ``since_change`` is the time since its change was first seen."""

    def on_ack(self, type_url: str, since_send: float) -> None:
        """The proxy accepted a response ``since_send`` seconds after it was written."""

    def on_nack(self, type_url: str, resources: Sequence[str]) -> None:
        """The proxy rejected a response that carried ``resources``."""

    def on_identity_refused(self, reason: str) -> None:
        """A stream was refused: its certificate does not prove its namespace (``reason``)."""


class NoEvents:
    """Counts nothing (a server built without metrics)."""

    def watch_streams(self, counts: StreamCounts) -> None:
        pass

    def on_push(self, type_url: str, flavour: str, since_change: float | None) -> None:
        pass

    def on_ack(self, type_url: str, since_send: float) -> None:
        pass

    def on_nack(self, type_url: str, resources: Sequence[str]) -> None:
        pass

    def on_identity_refused(self, reason: str) -> None:
        pass
