"""Kept widths in multiples of a step (``PruningTarget.width_multiple``): what a quantized target
asks of pruning, so that every FFN's down projection keeps an input width its group size divides.

Each layer's kept FFN width goes to the nearest multiple of the step (at least one step, at most
what the layer has), by removing the next-lowest-scored neurons or putting back the highest-scored
of those chosen; equal counts round alike, so a uniform plan stays uniform.
"""

from __future__ import annotations

import torch

from slimformer.pruning.types import UnitRequest, Units


def round_neurons(units: Units, request: UnitRequest, step: int) -> Units:
    """``units`` with each layer's kept FFN width rounded to a multiple of ``step``."""
    if step <= 1:
        return units
    sizes = request.adapter.all_sizes()
    neurons = dict(units.neurons)
    for layer, size in enumerate(sizes):
        if size.mlp_removed or layer in request.mlps or size.intermediate < step:
            continue
        removed = neurons.get(layer, [])
        kept = size.intermediate - len(removed)
        wanted = min(max(step, round(kept / step) * step), size.intermediate // step * step)
        if wanted == kept:
            continue
        scores = request.importance.neurons[layer].double()
        chosen = set(removed)
        if wanted < kept:  # remove the lowest-scored of those kept
            order = [int(i) for i in torch.argsort(scores, stable=True) if int(i) not in chosen]
            chosen |= set(order[: kept - wanted])
        else:  # put back the highest-scored of those chosen
            back = sorted(chosen, key=lambda i: (-float(scores[i]), i))[: wanted - kept]
            chosen -= set(back)
        neurons[layer] = sorted(chosen)
    return Units(heads=units.heads, neurons=neurons, attention=units.attention)
