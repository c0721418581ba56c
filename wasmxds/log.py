"""Structured logging: key=value text for people, JSON lines for machines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from typing import Any

import structlog

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "SampledLog", "configure_logging"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def _stderr_logger(*args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure structlog for the whole process (idempotent)."""
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # Look sys.stderr up per logger, not once: whoever replaces it later
        # (a test runner's capture, a daemon manager) still gets the lines.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


class SampledLog:
    """At most ``lines`` lines of one event per ``window`` seconds, then one line counting
    the rest: for events whose rate others decide (clients connecting, being refused),
    which must neither fill the log nor cost a formatted line each."""

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        level: str = "info",
        lines: int = 20,
        window: float = 10.0,
        what: str = "events",
    ) -> None:
        # The method is looked up per line, not kept: a logger bound now would keep
        # today's configuration and stderr (tests and daemons replace both).
        self._logger = logger
        self._level = level
        self._event = event
        self._lines = lines
        self._window = window
        self._what = what
        self._window_start = -math.inf
        self._logged = 0
        self._suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._window_start >= self._window:
            self._flush()
            self._window_start, self._logged = now, 0
        if self._logged >= self._lines:
            if not self._suppressed:
                # No later event may come to close the window: say it when it ends.
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_later(
                        self._window_start + self._window - now, self._flush
                    )
            self._suppressed += 1
            return
        self._logged += 1
        getattr(self._logger, self._level)(self._event, **fields)

    def _flush(self) -> None:
        if self._suppressed:
            getattr(self._logger, self._level)(
                f"{self._event}_not_logged",
                count=self._suppressed,
                window_seconds=self._window,
                reason=f"more than {self._lines} {self._what} in the window",
            )
            self._suppressed = 0
