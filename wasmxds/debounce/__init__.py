"""Coalesce bursts of change events into single pushes (Istio's debounce, reference §6)."""

from wasmxds.debounce.debouncer import Clock, Debouncer, LoopClock

__all__ = ["Clock", "Debouncer", "LoopClock"]
