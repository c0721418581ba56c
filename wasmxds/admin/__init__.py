"""The admin HTTP server: health and readiness (and, in time, metrics and debug views)."""
