"""Activation-based importance (Minitron: Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation"; Sreenivas et al. 2024, "LLM Pruning and Distillation in
Practice: The Minitron Approach").

Forward passes only, over the calibration batches, with hooks that measure real tokens:

* a head: the L2 norm of its output (its slice of the attention output projection's input),
  averaged over tokens;
* an FFN neuron: the magnitude of its activation (the down projection's input), averaged over
  tokens;
* a whole MLP: the L2 norm of its output, averaged over tokens;
* an embedding (hidden) channel: the magnitude of the normalised hidden state that the attention
  and the MLP read, averaged over tokens and layers (reported in ``Importance.channels``;
  slimformer does not remove hidden channels).

The mean of every input channel of the two output projections is kept as well, so the removed
units' mean contribution can be folded into a bias (FLAP's compensation, see
:mod:`slimformer.importance.flap`).

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


class _Sums:
    """Float64 running sums of per-token statistics."""

    def __init__(self, width: int) -> None:
        self.total = torch.zeros(width, dtype=torch.float64)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        self.total += rows.double().sum(0).cpu()
        self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.total / max(1, self.count)).float()


def score_activations(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Importance:
    """Minitron's activation importance of every head, FFN neuron, MLP and hidden channel.

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
    heads = [_Sums(s.heads) for s in sizes]
    attn_means = [_Sums(s.heads * d) for s in sizes]
    neurons = [_Sums(s.intermediate) for s in sizes]
    mlp_means = [_Sums(s.intermediate) for s in sizes]
    mlps = [_Sums(1) for _ in sizes]
    hidden = adapter.output_weight(0, "attention").shape[0]
    channels = _Sums(hidden)
    handles = []

    def on_heads(module, args, i):
        x = tokens.select(args[0])
        attn_means[i].add(x)
        heads[i].add(x.reshape(x.shape[0], -1, d).float().norm(dim=-1))

    def on_neurons(module, args, i):
        x = tokens.select(args[0])
        mlp_means[i].add(x)
        neurons[i].add(x.float().abs())

    def on_mlp(module, args, output, i):
        mlps[i].add(tokens.select(output).float().norm(dim=-1, keepdim=True))

    def on_normed(module, args):
        channels.add(tokens.select(args[0]).float().abs())

    try:
        for i, s in enumerate(sizes):
            handles.append(
                adapter.attention_output(i).register_forward_pre_hook(
                    lambda m, a, i=i: on_heads(m, a, i)
                )
            )
            for module in adapter.normed_inputs(i):
                handles.append(module.register_forward_pre_hook(on_normed))
            if s.mlp_removed:
                continue
            down = adapter.mlp_down(i)
            handles.append(down.register_forward_pre_hook(lambda m, a, i=i: on_neurons(m, a, i)))
            handles.append(down.register_forward_hook(lambda m, a, o, i=i: on_mlp(m, a, o, i)))
        steps = 0
        for _ in calibration_pass(
            model,
            batches,
            what="activation scoring",
            tokens=tokens,
            on_progress=on_progress,
            should_cancel=should_cancel,
        ):
            steps += 1
    finally:
        for handle in handles:
            handle.remove()
    mlp_scores = torch.stack([m.mean()[0] for m in mlps]) + mlp_nan(sizes)
    return Importance(
        heads=[h.mean() for h in heads],
        neurons=[n.mean() for n in neurons],
        mlps=mlp_scores,
        method="activations",
        loss="none (activations)",
        batches=steps,
        seconds=timer(),
        extra={"tokens": heads[0].count},
        attention_means=[m.mean() for m in attn_means],
        mlp_means=[m.mean() for m in mlp_means],
        channels=channels.mean(),
    )
