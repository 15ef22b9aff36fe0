"""Depth pruning (ShortGPT-style): the lowest-scoring whole layers go, and the config says fewer
layers."""

from __future__ import annotations

import torch
from torch import nn

from slimformer.architectures import ModelAdapter, keep_layers
from slimformer.errors import InvalidSpec
from slimformer.pruning.types import PruningTarget


def layers_to_drop(num_layers: int, layers: float) -> int:
    """How many layers ``layers`` asks for: a fraction of them (below 1) or a count (1 or more)."""
    if layers < 0:
        raise InvalidSpec(
            f"layers must be a fraction in [0, 1) or a count, got {layers}",
            details={"field": "layers"},
        )
    count = round(layers * num_layers) if layers < 1 else int(layers)
    if layers >= 1 and count != layers:
        raise InvalidSpec(
            f"a layer count must be a whole number, got {layers}", details={"field": "layers"}
        )
    return count


def plan_depth(
    scores: torch.Tensor, layers: float, *, keep_first_layers: int = 0, keep_last_layers: int = 0
) -> list[int]:
    """The layers to drop: the ``layers`` (fraction or count) lowest-scoring ones, never a protected
    first/last layer, and never all of them.

    Raises:
        InvalidSpec: a request that would drop every layer, or more than the unprotected ones.
    """
    n = len(scores)
    count = layers_to_drop(n, layers)
    if count == 0:
        return []
    protected = PruningTarget(
        keep_first_layers=keep_first_layers, keep_last_layers=keep_last_layers
    ).protected(n)
    eligible = [i for i in range(n) if i not in protected]
    if count >= n or count > len(eligible):
        raise InvalidSpec(
            f"dropping {count} of {n} layers leaves none or needs protected ones ({len(eligible)} "
            "may go)",
            details={"field": "layers"},
        )
    order = sorted(eligible, key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def drop_layers(model: nn.Module, layers: list[int]) -> list[int]:
    """Remove whole layers (ShortGPT-style depth pruning) and rewrite the config to match: fewer
    ``num_hidden_layers`` (so the uniform layout reloads with stock transformers), ``layer_types``
    and the attention modules' ``layer_idx`` renumbered. Returns the kept layers' old indices."""
    n = ModelAdapter(model).num_layers
    drop = set(layers)
    kept = [i for i in range(n) if i not in drop]
    if drop:
        keep_layers(model, kept)
    return kept
