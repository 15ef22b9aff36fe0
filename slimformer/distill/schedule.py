"""The step budget, optimizer and learning-rate schedule of a training run, and its re-planning.

The step budget is ``epochs`` of data in optimizer steps, capped by ``max_steps``. The schedule is a
linear warm-up over ``warmup_ratio`` of the planned steps, then a linear decay to zero at the last
planned step. Without a time budget the plan is the step budget, fixed. With ``max_minutes`` the
run re-plans (:func:`_fit_steps`) from the measured seconds per step, per evaluation and per
checkpoint, so that the schedule spans the steps that fit in the time left: warm-up never eats the
budget, and the learning rate reaches the end of its decay when the time runs out. AdamW decays
matrices only: biases and norms get no weight decay. A roll-back after a non-finite loss halves the
learning rate here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from slimformer.distill.config import DistillConfig


def _step_budget(config: DistillConfig, rows: int) -> tuple[int, int]:
    """``(micro-batches per epoch, optimizer steps of the run)`` for ``rows`` training rows."""
    per_epoch = math.ceil(rows / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch) // config.grad_accum)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return per_epoch, total


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Share of the peak learning rate for optimizer step ``step + 1`` of a ``total``-step plan.

    Warm-up climbs ``1/(w+1), 2/(w+1), ...`` (the first step already moves), then the rate falls
    linearly to ``1 / (total - warmup)`` at the last planned step and to zero after it.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _make_optimizer(
    named: list[tuple[str, torch.nn.Parameter]],
    config: DistillConfig,
    plan: Callable[[], tuple[int, int]],
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """AdamW over the ``named`` parameters, and its warm-up then decay.

    ``plan()`` returns the current ``(warmup_steps, total_steps)``: the schedule reads it at every
    step, so a re-plan takes effect at once.
    """
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
        # biases and norms
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
    scheduler = LambdaLR(optimizer, lambda step: _lr_factor(step, *plan()))
    return optimizer, scheduler


def _apply_plan(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
    """Set the learning rate of the next step from the (re-planned) schedule."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * factor


def _fit_steps(
    *,
    step: int,
    bound: int,
    seconds_left: float,
    per_step: float,
    per_evaluation: float,
    evaluations_left: int,
    per_checkpoint: float,
    checkpoint_every: int,
) -> int:
    """The planned total of steps: ``bound`` at most, fewer when the time left holds fewer.

    The time left pays for the remaining evaluations (the final one included), one checkpoint per
    ``checkpoint_every`` steps plus the final one, and the steps themselves.

    Args:
        step: steps done.
        bound: the step budget (epochs, max_steps).
        seconds_left: wall-clock seconds left in the budget.
        per_step: measured seconds of one optimizer step.
        per_evaluation: measured seconds of one evaluation (0 without evaluation data).
        evaluations_left: evaluations still to come, the final one included.
        per_checkpoint: measured seconds of one checkpoint write.
        checkpoint_every: steps between checkpoints.

    Returns:
        The planned total, at least ``step`` (nothing more fits) and at most ``bound``.
    """
    available = seconds_left - evaluations_left * per_evaluation - per_checkpoint
    cost = max(per_step, 1e-6) + per_checkpoint / checkpoint_every
    more = math.floor(max(0.0, available) / cost)
    return max(step, min(bound, step + more))


def _halve_learning_rate(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
    """Halve the learning rate now and the schedule's base, so the rest of the run stays halved."""
    for group in optimizer.param_groups:
        group["lr"] *= 0.5
        group["initial_lr"] *= 0.5
    scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
