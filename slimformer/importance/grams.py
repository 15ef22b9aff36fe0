"""Gram matrices of the inputs of every layer's output projections, over calibration tokens.

``[x, 1]^T [x, 1] / N`` for the attention output projection (x: the heads' outputs) and the MLP
down projection (x: the FFN neurons), in float32: what least-squares
reconstruction (:mod:`slimformer.reconstruction`) and the OBS importance
(:mod:`slimformer.importance.obs`) read. Memory: ``(C + 1)^2`` numbers per projection, e.g. 9.5 MB
for an FFN of 1,536 neurons, 127 MB for one of 5,632.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.importance.base import CancelFn, ProgressFn, RealTokens, hooked_pass

Key = tuple[int, str]  # (layer, "attention" | "mlp")


class _Gram:
    """Running ``[x, 1]^T [x, 1]`` over real tokens, float32 (one product per batch is added, so
    a few dozen additions: float64 would double the memory for no visible gain)."""

    def __init__(self, width: int) -> None:
        self.total = torch.zeros(width + 1, width + 1, dtype=torch.float32)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.float()
        ones = torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
        x = torch.cat([rows, ones], dim=1)
        self.total += (x.T @ x).cpu()
        self.count += rows.shape[0]

    def mean(self) -> torch.Tensor:
        return self.total.div_(max(1, self.count))


def input_grams(
    model: nn.Module,
    batches: Iterable[dict],
    keys: Iterable[Key],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[Key, torch.Tensor]:
    """The mean ``[x, 1]^T [x, 1]`` of the inputs of the named output projections, measured over
    the real tokens of ``batches`` (one forward pass each, no gradients; a causal LM's output head
    never runs)."""
    adapter = ModelAdapter(model)
    tokens = RealTokens()
    grams: dict[Key, _Gram] = {}
    handles = []
    for layer, part in sorted(set(keys)):
        module = adapter.output_projection(layer, part)
        width = adapter.output_weight(layer, part).shape[1]
        grams[(layer, part)] = gram = _Gram(width)
        handles.append(
            module.register_forward_pre_hook(lambda m, a, g=gram: g.add(tokens.select(a[0])))
        )
    hooked_pass(
        model,
        batches,
        handles,
        what="reconstruction statistics",
        tokens=tokens,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    return {key: gram.mean() for key, gram in grams.items()}
