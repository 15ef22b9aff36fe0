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
    tokens = RealTokens()
    recorder = _Recorder(adapter, tokens)
    handles: list = []
    try:
        recorder.install(adapter, handles)
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
    return recorder.importance(steps, timer)


class _Recorder:
    """The running sums of one scoring run, per layer, and the hooks that feed them with the
    statistics of real tokens."""

    def __init__(self, adapter: ModelAdapter, tokens: RealTokens) -> None:
        self.sizes = sizes = adapter.all_sizes()
        self.d = d = adapter.head_dim
        self.tokens = tokens
        self.heads = [_Sums(s.heads) for s in sizes]
        self.attn_means = [_Sums(s.heads * d) for s in sizes]
        self.neurons = [_Sums(s.intermediate) for s in sizes]
        self.mlp_means = [_Sums(s.intermediate) for s in sizes]
        self.mlps = [_Sums(1) for _ in sizes]
        hidden = adapter.output_weight(0, "attention").shape[0]
        self.channels = _Sums(hidden)

    def on_heads(self, module, args, i):
        x = self.tokens.select(args[0])
        self.attn_means[i].add(x)
        self.heads[i].add(x.reshape(x.shape[0], -1, self.d).float().norm(dim=-1))

    def on_neurons(self, module, args, i):
        x = self.tokens.select(args[0])
        self.mlp_means[i].add(x)
        self.neurons[i].add(x.float().abs())

    def on_mlp(self, module, args, output, i):
        self.mlps[i].add(self.tokens.select(output).float().norm(dim=-1, keepdim=True))

    def on_normed(self, module, args):
        self.channels.add(self.tokens.select(args[0]).float().abs())

    def install(self, adapter: ModelAdapter, handles: list) -> None:
        """Register the hooks on every layer, each handle appended to ``handles`` as soon as it
        exists (the caller removes them, whatever happens)."""
        for i, s in enumerate(self.sizes):
            handles.append(
                adapter.attention_output(i).register_forward_pre_hook(
                    lambda m, a, i=i: self.on_heads(m, a, i)
                )
            )
            for module in adapter.normed_inputs(i):
                handles.append(module.register_forward_pre_hook(self.on_normed))
            if s.mlp_removed:
                continue
            down = adapter.mlp_down(i)
            handles.append(
                down.register_forward_pre_hook(lambda m, a, i=i: self.on_neurons(m, a, i))
            )
            handles.append(down.register_forward_hook(lambda m, a, o, i=i: self.on_mlp(m, a, o, i)))

    def importance(self, steps: int, timer: Timer) -> Importance:
        """The mean of every statistic, after ``steps`` calibration batches."""
        mlp_scores = torch.stack([m.mean()[0] for m in self.mlps]) + mlp_nan(self.sizes)
        return Importance(
            heads=[h.mean() for h in self.heads],
            neurons=[n.mean() for n in self.neurons],
            mlps=mlp_scores,
            method="activations",
            loss="none (activations)",
            batches=steps,
            seconds=timer(),
            extra={"tokens": self.heads[0].count},
            attention_means=[m.mean() for m in self.attn_means],
            mlp_means=[m.mean() for m in self.mlp_means],
            channels=self.channels.mean(),
        )
