"""Baselines without calibration data: weight magnitude and a seeded random order.

``magnitude`` scores a head by the L2 norm of its query/key/value rows and output columns and an
FFN neuron by the norm of its up/gate rows and down column (the structured weight-magnitude
baseline of Michel et al. 2019 and LLM-Pruner, Ma et al. 2023); ``random`` draws uniform scores
from a seeded generator. Both cost nothing but reading the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.importance.base import Importance, Timer, mlp_nan, normalise


def score_random(model: nn.Module, *, seed: int = 0) -> Importance:
    """Uniform random scores from ``torch.Generator().manual_seed(seed)`` (the same seed, the same
    scores)."""
    timer = Timer()
    sizes = ModelAdapter(model).all_sizes()
    gen = torch.Generator().manual_seed(seed)
    return Importance(
        heads=[torch.rand(s.heads, generator=gen) for s in sizes],
        neurons=[torch.rand(0 if s.mlp_removed else s.intermediate, generator=gen) for s in sizes],
        mlps=torch.rand(len(sizes), generator=gen) + mlp_nan(sizes),
        method="random",
        seconds=timer(),
    )


def score_magnitude(
    model: nn.Module, *, normalize: bool = True, normalize_neurons: bool = False
) -> Importance:
    """Weight-norm scores; ``normalize`` L2-normalises head scores per layer (as Michel's)."""
    timer = Timer()
    adapter = ModelAdapter(model)
    sizes = adapter.all_sizes()
    heads = [adapter.head_magnitude(i) for i in range(adapter.num_layers)]
    neurons = [adapter.neuron_magnitude(i) for i in range(adapter.num_layers)]
    if normalize:
        heads = [normalise(h) for h in heads]
    if normalize_neurons:
        neurons = [normalise(n) for n in neurons]
    mlps = torch.stack([n.sum() for n in neurons]) + mlp_nan(sizes)
    return Importance(heads, neurons, mlps, method="magnitude", seconds=timer())
