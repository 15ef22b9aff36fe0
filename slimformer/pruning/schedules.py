"""Schedules: everything in one step (:func:`one_shot_prune`), or Michel's and Prasanna's
iterative schedule (:func:`iterative_prune`): remove a step of what remains, re-score, evaluate,
and stop at the target or when the metric falls below a floor."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable

from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.importance import Importance
from slimformer.pruning.layouts import DEFAULT_LAYOUT, apply_layout
from slimformer.pruning.plan import plan_pruning
from slimformer.pruning.remove import remove_units
from slimformer.pruning.types import (
    LayoutName,
    PruneResult,
    PruningPlan,
    PruningRecord,
    PruningTarget,
)

logger = logging.getLogger(__name__)


def one_shot_prune(
    model: nn.Module,
    importance: Importance | None,
    plan: PruningPlan,
    *,
    layout: LayoutName = DEFAULT_LAYOUT,
) -> PruneResult:
    """Remove everything ``plan`` names in one step and write the layout (``plan`` from
    :func:`plan_pruning`)."""
    adapter = ModelAdapter(model)
    record = PruningRecord.start(adapter)
    remove_units(model, plan)
    record.apply(plan, adapter)
    apply_layout(model, layout)
    return PruneResult(
        model=model, record=record, importance=[] if importance is None else [importance], plan=plan
    )


def iterative_prune(
    model: nn.Module,
    score: Callable[[nn.Module], Importance],
    evaluate: Callable[[nn.Module], float],
    target: PruningTarget,
    *,
    step: float = 0.1,
    metric_floor: float = 0.9,
    layout: LayoutName = DEFAULT_LAYOUT,
    on_step: Callable[[dict], None] | None = None,
) -> PruneResult:
    """Michel's and Prasanna's schedule.

    Each step removes ``step`` of the heads and of the FFN neurons that remain (as far as the target
    asks), re-scores, and evaluates. It stops at the target, or before the step whose metric falls
    below ``metric_floor`` x the original metric (that step is undone). The curve of
    (fraction of heads removed, fraction of FFN neurons removed, metric) is kept in the record.
    The result holds a new model; the one passed in is left unchanged.
    """
    _check_iterative(target, step)
    model = copy.deepcopy(model)
    record = PruningRecord.start(ModelAdapter(model))
    totals = sum(record.original_heads), sum(record.original_neurons)
    baseline = evaluate(model)
    record.curve.append(
        {"heads_removed": 0.0, "ffn_removed": 0.0, "metric": baseline, "kept": True}
    )
    floor = metric_floor * baseline
    scores = []
    while True:
        head_fraction, ffn_fraction = _next_step(model, target, step, totals)
        if head_fraction == 0 and ffn_fraction == 0:
            break
        importance = score(model)
        scores.append(importance)
        step_target = dataclasses.replace(target, heads=head_fraction, ffn=ffn_fraction)
        plan = plan_pruning(model, importance, step_target, layout=layout)
        if plan.is_empty():
            break
        candidate = copy.deepcopy(model)
        remove_units(candidate, plan)  # with the refit, when the plan carries Gram matrices
        metric = evaluate(candidate)
        point = _curve_point(candidate, metric, totals)
        point["kept"] = metric >= floor
        record.curve.append(point)
        if on_step:
            on_step(point)
        if metric < floor:
            logger.info(
                "metric %.4f fell below the floor %.4f; keeping the previous step", metric, floor
            )
            break
        record.apply(plan, ModelAdapter(candidate))
        model = candidate
    apply_layout(model, layout)
    return PruneResult(model=model, record=record, importance=scores)


def _check_iterative(target: PruningTarget, step: float) -> None:
    target.validate()
    if not 0 < step < 1:
        raise InvalidSpec(f"step must be in (0, 1), got {step}", details={"field": "step"})
    if target.macs_budget is not None or target.params_budget is not None or target.whole_mlps:
        raise InvalidSpec(
            "the iterative schedule takes head and FFN fractions; use one_shot for budgets and "
            "whole MLPs"
        )


def _next_step(
    model: nn.Module, target: PruningTarget, step: float, totals: tuple[int, int]
) -> tuple[float, float]:
    """The fractions of the heads and of the FFN neurons that remain which the next step removes:
    ``step`` of them, never past the target's goal (0 once it is met)."""
    sizes = ModelAdapter(model).all_sizes()
    total_heads, total_neurons = totals
    return (
        _step_of(sum(s.heads for s in sizes), total_heads * (1 - target.heads), step),
        _step_of(sum(s.intermediate for s in sizes), total_neurons * (1 - target.ffn), step),
    )


def _step_of(left: int, goal: float, step: float) -> float:
    # a step of what remains, never past the goal
    return min(step, max(0.0, (left - goal) / left)) if left > goal + 0.5 else 0.0


def _curve_point(candidate: nn.Module, metric: float, totals: tuple[int, int]) -> dict:
    """The fractions of the original heads and FFN neurons a candidate has lost, and its metric."""
    sizes = ModelAdapter(candidate).all_sizes()
    total_heads, total_neurons = totals
    return {
        "heads_removed": 1 - sum(s.heads for s in sizes) / total_heads,
        "ffn_removed": 1 - sum(s.intermediate for s in sizes) / max(1, total_neurons),
        "metric": metric,
    }
