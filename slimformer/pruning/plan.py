"""Choosing the units to remove so that a target is met: whole MLPs by their scores, heads and FFN
neurons as the layout chooses them, and for a MACs or parameter budget the smallest equal fraction
of heads and of neurons that meets it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.importance import Importance
from slimformer.models import count_macs, count_parameters
from slimformer.pruning.layouts import DEFAULT_LAYOUT, layout_for
from slimformer.pruning.remove import pruned_copy
from slimformer.pruning.types import LayoutName, PruningPlan, PruningTarget, UnitRequest
from slimformer.pruning.widths import round_neurons

logger = logging.getLogger(__name__)


def plan_pruning(
    model: nn.Module,
    importance: Importance,
    target: PruningTarget,
    *,
    layout: LayoutName = DEFAULT_LAYOUT,
    seq_len: int = 128,
    attention_scores: torch.Tensor | None = None,
) -> PruningPlan:
    """Choose the units to remove so that ``target`` is met.

    ``attention_scores`` (the nemotron_nas layout, which removes attention blocks whole): one score
    per layer, lowest removed first (:func:`slimformer.importance.depth.attention_influence`);
    without them, the sum of the layer's head scores.

    Raises:
        InvalidSpec: fractions out of range, a target that empties every layer's attention, a
            request the ``uniform`` layout cannot express for this family.
    """
    target.validate()
    adapter = ModelAdapter(model)
    rules = layout_for(layout)
    rules.check(adapter, target)
    mlps = _whole_mlps(adapter, importance, target)
    compensate = _compensates(importance, target)
    if compensate:
        rules.check_compensation(adapter, target, importance.method)
    reconstruct = target.wants_reconstruction(importance.method)
    refit_bias = rules.refit_bias(adapter, target)

    def build(head_fraction: float, ffn_fraction: float) -> PruningPlan:
        request = UnitRequest(
            adapter, importance, target, head_fraction, ffn_fraction, mlps, attention_scores
        )
        units = round_neurons(rules.choose_units(request), request, target.width_multiple)
        return PruningPlan(
            heads=units.heads,
            neurons=units.neurons,
            mlps=mlps,
            attention=units.attention,
            attention_means=importance.attention_means if compensate and units.heads else None,
            mlp_means=importance.mlp_means if compensate and units.neurons else None,
            grams=importance.grams if reconstruct else None,
            reconstruct_bias=refit_bias,
        )

    if target.macs_budget is None and target.params_budget is None:
        plan = build(target.heads, target.ffn)
    else:
        plan = _within_budget(model, target, build, seq_len)
    rules.check_plan(model, adapter, plan)
    if plan.is_empty():
        logger.info("the target removes nothing")
    return plan


def _whole_mlps(adapter: ModelAdapter, importance: Importance, target: PruningTarget) -> list[int]:
    """The ``target.whole_mlps`` lowest-scoring MLPs the model still has."""
    live_mlps = [i for i, s in enumerate(adapter.all_sizes()) if not s.mlp_removed]
    if target.whole_mlps > len(live_mlps):
        raise InvalidSpec(f"whole_mlps={target.whole_mlps} but the model has {len(live_mlps)} MLPs")
    return sorted(sorted(live_mlps, key=lambda i: float(importance.mlps[i]))[: target.whole_mlps])


def _compensates(importance: Importance, target: PruningTarget) -> bool:
    """Whether the plan folds the removed units' mean output into biases: by default for FLAP only
    (its metric assumes it), and only where the method measured the means."""
    wanted = (
        importance.method == "flap"
        if target.bias_compensation is None
        else target.bias_compensation
    )
    return wanted and importance.attention_means is not None


def _within_budget(
    model: nn.Module,
    target: PruningTarget,
    build: Callable[[float, float], PruningPlan],
    seq_len: int,
) -> PruningPlan:
    """The same fraction of heads and of FFN neurons, as small as meets the budget (bisection on
    the measured MACs / parameters of each candidate)."""
    budget = target.macs_budget or target.params_budget
    measure = (lambda m: count_macs(m, seq_len)) if target.macs_budget else count_parameters
    full = measure(model)
    low, high, plan = 0.0, 0.95, None
    for _ in range(20):
        mid = (low + high) / 2
        candidate = build(mid, mid)
        if measure(pruned_copy(model, candidate)) <= budget * full:
            plan, high = candidate, mid
        else:
            low = mid
    if plan is None:
        raise InvalidSpec(
            f"no plan keeps at most {budget:.0%} of the "
            f"{'MACs' if target.macs_budget else 'parameters'}"
        )
    return plan
