"""OBS importance: the output error a unit's removal leaves after the best least-squares refit.

The structured Optimal Brain Surgeon criterion (Hassibi & Stork 1993; for structured LLM pruning
ZipLM, Kurtic et al. 2023, and SlimGPT, Ling et al. 2024). For a layer's output projection ``W``
(``[out, C]``), with ``G`` the Gram matrix of its input ``[x, 1]`` on the calibration tokens
(:mod:`slimformer.importance.grams`) and ``H = (G + lambda I)^-1``:

* an FFN neuron ``j`` (one input channel of the down projection): ``||W[:, j]||^2 / H[j, j]``;
* a query head with input channels ``S`` (its slice of the attention output projection's input):
  ``trace(W[:, S] H[S, S]^-1 W[:, S]^T)``;

the squared output error, summed over the calibration tokens' mean, that removing the unit alone
leaves when the remaining columns and the bias are refitted (what
:mod:`slimformer.reconstruction` then does). Scores are in the units of the layer's output, so
ranking them within a layer is exact for one removal; across layers the adaptive ranking
standardises them like any other score.

Cost: one forward pass per calibration batch (no gradients, no output head), then one
``(C + 1)``-square inversion per projection. The Gram matrices are kept in the result
(``Importance.grams``) so that reconstruction needs no second pass: ``(C + 1)^2`` float32 numbers
per projection (about 0.3 GB in all for SmolLM2-135M).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.importance.base import CancelFn, Importance, ProgressFn, Timer, mlp_nan
from slimformer.importance.grams import input_grams
from slimformer.reconstruction import ROW_CHUNK, damped_block, factor_in_place


def _inverse(gram: torch.Tensor) -> torch.Tensor:
    # one float64 copy, damped, factored and inverted in place (torch.linalg.inv would hold three:
    # 1.6 GB each for an 8B model's FFN)
    h = damped_block(gram)
    if factor_in_place(h):
        torch.cholesky_inverse(h, out=h)
    else:
        h = torch.linalg.inv(damped_block(gram))
    width = h.shape[0] - 1
    return h[:width, :width]


def _output_energy(w: torch.Tensor, gram: torch.Tensor) -> float:
    """``trace(w G w^T)`` in float64, ``ROW_CHUNK`` rows of ``G`` at a time."""
    total, width = 0.0, w.shape[1]
    for s in range(0, width, ROW_CHUNK):
        rows = gram[s : min(s + ROW_CHUNK, width), :width].double()
        total += float(((w @ rows.T) * w[:, s : s + ROW_CHUNK]).sum())
    return total


def obs_layer_scores(
    adapter: ModelAdapter,
    layer: int,
    attention_gram: torch.Tensor,
    mlp_gram: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One layer's OBS scores: ``(per query head, per FFN neuron, the whole MLP)`` from the Gram
    matrices of its output projections' inputs (``mlp_gram`` None: the MLP was removed; its
    neurons score nothing and the MLP 0). Layers are scored one at a time, so a caller that holds
    one layer (the streamed path) scores it alone."""
    s = adapter.sizes(layer)
    d = adapter.head_dim
    w = adapter.output_weight(layer, "attention").double()
    h = _inverse(attention_gram)
    per_head = []
    for head in range(s.heads):
        cols = slice(head * d, (head + 1) * d)
        block = w[:, cols]
        per_head.append(torch.trace(block @ torch.linalg.solve(h[cols, cols], block.T)))
    head_scores = torch.stack(per_head).float()
    if s.mlp_removed or mlp_gram is None:
        return head_scores, torch.zeros(0), 0.0
    w = adapter.output_weight(layer, "mlp").double()
    neuron_scores = ((w**2).sum(0) / _inverse(mlp_gram).diagonal()).float()
    # the whole MLP: its output's mean squared norm (nothing is left to refit)
    return head_scores, neuron_scores, _output_energy(w, mlp_gram)


def score_obs(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Importance:
    """OBS scores of every head and FFN neuron, and the Gram matrices behind them.

    Raises:
        InvalidSpec: no calibration batches.
        Cancelled: ``should_cancel`` returned true.
    """
    timer = Timer()
    adapter = ModelAdapter(model)
    sizes = adapter.all_sizes()
    keys = [(i, "attention") for i in range(len(sizes))]
    keys += [(i, "mlp") for i, s in enumerate(sizes) if not s.mlp_removed]
    grams = input_grams(model, batches, keys, on_progress=on_progress, should_cancel=should_cancel)
    heads, neurons, mlps = [], [], []
    for i in range(len(sizes)):
        head_scores, neuron_scores, mlp_score = obs_layer_scores(
            adapter, i, grams[(i, "attention")], grams.get((i, "mlp"))
        )
        heads.append(head_scores)
        neurons.append(neuron_scores)
        mlps.append(mlp_score)
    means = {key: g[:-1, -1].clone() for key, g in grams.items()}
    return Importance(
        heads=heads,
        neurons=neurons,
        mlps=torch.tensor(mlps) + mlp_nan(sizes),
        method="obs",
        loss="none (activations)",
        batches=len(list(batches)) if isinstance(batches, list) else 0,
        seconds=timer(),
        attention_means=[means[(i, "attention")] for i in range(len(sizes))],
        mlp_means=[means.get((i, "mlp"), torch.zeros(s.intermediate)) for i, s in enumerate(sizes)],
        grams=grams,
    )
