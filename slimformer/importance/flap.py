"""FLAP's fluctuation metric (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for
Large Language Models", AAAI).

A unit is unimportant when its input to the output projection barely moves: whatever it
contributes is close to a constant, and a constant can be put back as a bias. For input channel
``j`` of the attention output projection (or of the MLP's down projection) ``W``:

    S_j = Var_n(X_{n,j}) * ||W_{:,j}||^2

over the calibration tokens ``n``. A head scores the sum over its ``head_dim`` channels, an FFN
neuron its own channel, a whole MLP the sum over its neurons.

**Bias compensation.** Removing channel ``j`` changes the projection's output by
``W_{:,j} (X_j - mean_j)`` on average zero when the removed units' mean contribution
``W_{:,removed} mean_removed`` is added to the projection's bias: the pruned model needs no
retraining. The means are kept in ``Importance.attention_means`` / ``mlp_means``; pruning folds
them in (:mod:`slimformer.pruning`, ``bias_compensation``).

**Adaptive structure.** FLAP standardises the scores within each layer and ranks them across
layers, so each layer loses what its own distribution says (``ranking="adaptive"`` in
:class:`slimformer.pruning.PruningTarget`).

Cost: one forward pass per calibration batch, no gradients; a causal LM's output head never runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.importance.base import (
    CancelFn,
    Importance,
    ProgressFn,
    RealTokens,
    Timer,
    calibration_pass,
    mlp_nan,
)


class ChannelMoments:
    """Running mean and variance of every channel of a projection's input (float64 sums)."""

    def __init__(self, width: int) -> None:
        self.sum = torch.zeros(width, dtype=torch.float64)
        self.sum_sq = torch.zeros(width, dtype=torch.float64)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.double()
        self.sum += rows.sum(0).cpu()
        self.sum_sq += rows.pow(2).sum(0).cpu()
        self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum / max(1, self.count)

    def variance(self) -> torch.Tensor:
        """Unbiased sample variance (0 with fewer than two tokens)."""
        if self.count < 2:
            return torch.zeros_like(self.sum)
        centred = self.sum_sq - self.count * self.mean().pow(2)
        return (centred / (self.count - 1)).clamp(min=0)


def score_flap(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Importance:
    """FLAP's fluctuation importance of every head, FFN neuron and MLP, with the channel means
    that bias compensation needs.

    Args:
        model: a model of a supported family; left unchanged.
        batches: tokenised calibration batches (labels are not used).
        on_progress: called with the fraction of batches done.
        should_cancel: checked between batches.

    Raises:
        InvalidSpec: no calibration batches.
        Cancelled: ``should_cancel`` returned true.
    """
    timer = Timer()
    adapter = ModelAdapter(model)
    sizes = adapter.all_sizes()
    d = adapter.head_dim
    tokens = RealTokens()
    attention = [ChannelMoments(s.heads * d) for s in sizes]
    mlp = [ChannelMoments(s.intermediate) for s in sizes]
    handles = []

    def observe(moments: ChannelMoments):
        return lambda module, args: moments.add(tokens.select(args[0]))

    try:
        for i, s in enumerate(sizes):
            handles.append(
                adapter.attention_output(i).register_forward_pre_hook(observe(attention[i]))
            )
            if not s.mlp_removed:
                handles.append(adapter.mlp_down(i).register_forward_pre_hook(observe(mlp[i])))
        steps = 0
        for _ in calibration_pass(
            model,
            batches,
            what="FLAP scoring",
            tokens=tokens,
            on_progress=on_progress,
            should_cancel=should_cancel,
        ):
            steps += 1
    finally:
        for handle in handles:
            handle.remove()

    heads, neurons, channels = [], [], []
    for i, s in enumerate(sizes):
        column_sq = adapter.output_weight(i, "attention").double().pow(2).sum(0).cpu()
        fluctuation = attention[i].variance() * column_sq
        channels.append(fluctuation.float())
        heads.append(fluctuation.reshape(s.heads, d).sum(1).float())
        if s.mlp_removed:
            neurons.append(torch.zeros(0))
            continue
        column_sq = adapter.output_weight(i, "mlp").double().pow(2).sum(0).cpu()
        neurons.append((mlp[i].variance() * column_sq).float())
    mlps = torch.stack([n.sum() if len(n) else torch.tensor(0.0) for n in neurons]) + mlp_nan(sizes)
    return Importance(
        heads=heads,
        neurons=neurons,
        mlps=mlps,
        method="flap",
        loss="none (fluctuation)",
        batches=steps,
        seconds=timer(),
        extra={"tokens": attention[0].count},
        attention_means=[m.mean().float() for m in attention],
        mlp_means=[m.mean().float() for m in mlp],
        attention_channels=channels,
    )
