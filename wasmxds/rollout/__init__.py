"""Staged rollouts: plugin changes reach the fleet step by step, and roll back on their own.

Between reconcile (which asks :class:`~wasmxds.rollout.engine.Rollouts` what to
serve) and translate (which puts each proxy on a version by its cohort).
"""

from wasmxds.rollout.engine import Plan, Rollouts
from wasmxds.rollout.model import Phase

__all__ = ["Phase", "Plan", "Rollouts"]
