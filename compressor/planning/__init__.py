"""Decide which channels each group keeps: a PruningPlan with a JSON round-trip."""

from compressor.planning.plan import PlanOptions, PruningPlan, make_plan, plan_from_slices

__all__ = ["PlanOptions", "PruningPlan", "make_plan", "plan_from_slices"]
