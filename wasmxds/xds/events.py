"""What the xDS server reports as streams run, for whoever counts (metrics).

The server calls these at the few points where something worth counting
happens; it knows nothing of how they are recorded. :class:`wasmxds.metrics.StreamMetrics`
records them as Prometheus metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wasmxds.xds.node import NodeInfo

__all__ = ["NoEvents", "Rejections", "StreamCounts", "StreamEvents"]

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


class Rejections(Protocol):
    """Who is told, per proxy, which resource versions it rejected (staged rollouts roll
    back on it). Called on the event loop, on the stream's request path: keep it cheap."""

    def on_rejected(
        self, node: NodeInfo, type_url: str, rejected: Sequence[tuple[str, str]], error: str
    ) -> None:
        """``node`` NACKed a response carrying these (name, version) pairs, saying ``error``."""


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
