"""The step budget, optimizer and learning-rate schedule of a training run.

The budget is ``epochs`` of data in optimizer steps, capped by ``max_steps``; the schedule (linear
warm-up, then linear decay to zero) spans it. AdamW decays matrices only: biases and norms get no
weight decay. A roll-back after a non-finite loss halves the learning rate here.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler
from transformers import get_linear_schedule_with_warmup

from slimformer.distill.config import DistillConfig


def _step_budget(config: DistillConfig, rows: int) -> tuple[int, int]:
    """``(micro-batches per epoch, optimizer steps of the run)`` for ``rows`` training rows."""
    per_epoch = math.ceil(rows / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch) // config.grad_accum)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return per_epoch, total


def _make_optimizer(
    named: list[tuple[str, torch.nn.Parameter]], config: DistillConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    """AdamW over the ``named`` parameters, and its warm-up then decay over ``total_steps``."""
    groups = [
        {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
        # biases and norms
        {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
    warmup = round(config.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return optimizer, scheduler


def _halve_learning_rate(optimizer: torch.optim.Optimizer, scheduler: LRScheduler) -> None:
    """Halve the learning rate now and the schedule's base, so the rest of the run stays halved."""
    for group in optimizer.param_groups:
        group["lr"] *= 0.5
        group["initial_lr"] *= 0.5
    scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
