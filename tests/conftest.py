"""Shared fixtures for unit tests (no real Envoy here; see e2e/)."""
