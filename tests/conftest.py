"""Shared fixtures for unit tests (no real Envoy here; see e2e/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Commands configure structlog for the whole process; undo it after every test."""
    yield
    structlog.reset_defaults()
