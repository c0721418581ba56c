"""Sampled log lines: a burst logs the first lines and one count of the rest."""

from __future__ import annotations

import asyncio
from typing import Any

from wasmxds.log import SampledLog


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


async def test_a_burst_logs_the_first_lines_and_counts_the_rest_when_the_window_ends():
    """25 connects in a window: 20 lines, then one line saying 5 were not logged."""
    recorder = _Recorder()
    sampled = SampledLog(recorder, "xds.connected", lines=20, window=0.2, what="new streams")
    for n in range(25):
        sampled(node=f"n{n}")
    assert [fields["node"] for _, fields in recorder.lines] == [f"n{n}" for n in range(20)]
    await asyncio.sleep(0.3)
    event, fields = recorder.lines[-1]
    assert event == "xds.connected_not_logged"
    assert fields["count"] == 5
    assert "more than 20 new streams" in fields["reason"]
    sampled(node="later")  # a new window logs again
    assert recorder.lines[-1] == ("xds.connected", {"node": "later"})
