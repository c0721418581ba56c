"""Benchmarks: scripts that measure and print figures; they never fail on timing."""
