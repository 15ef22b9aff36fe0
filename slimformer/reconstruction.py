"""Least-squares reconstruction of the output projections after structured pruning.

Removing heads or FFN neurons removes input channels of a layer's attention output projection or
MLP down projection. FLAP's bias compensation puts the removed channels' *mean* contribution back
as a bias. Reconstruction goes further: it refits the kept columns (and the bias) so that the
pruned projection reproduces the original projection's output on the calibration tokens as
closely as a linear map of the kept channels can (the structured layer-wise reconstruction of
ZipLM, Kurtic et al. 2023, and SlimGPT, Ling et al. 2024; without the sequential pass):

    X~ = [X, 1],  W~ = [W, b],  G = X~^T X~ / N
    W'^T = (G[K, K] + lambda I)^-1 G[K, :] W~^T      (K: kept channels, plus the bias column)

``lambda`` is 1% of the mean diagonal of ``G[K, K]`` (SparseGPT's damping). With no bias allowed,
the bias column is left out of ``K`` and the fit goes through the origin.

The Gram matrices of the projections' inputs are measured on the original model in one forward
pass over the calibration batches (:func:`slimformer.importance.grams.input_grams`).
"""

from __future__ import annotations

import torch
from torch import nn

from slimformer.architectures import ModelAdapter

DAMPING = 0.01


def kept_channels(adapter: ModelAdapter, layer: int, part: str, removed: list[int]) -> list[int]:
    """Input channels of the layer's output projection that survive removing ``removed`` (query
    heads for attention, neurons for the MLP)."""
    width = adapter.output_weight(layer, part).shape[1]
    if part == "attention":
        d = adapter.head_dim
        gone = {c for h in removed for c in range(h * d, (h + 1) * d)}
    else:
        gone = set(removed)
    return [c for c in range(width) if c not in gone]


def refit(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gram: torch.Tensor,
    keep: list[int],
    *,
    with_bias: bool,
    damping: float = DAMPING,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """New weight columns for the kept channels (``[out, len(keep)]``) and the new bias (``None``
    when ``with_bias`` is false), minimising the squared output error under ``gram``."""
    width = weight.shape[1]
    w = torch.cat(
        [
            weight.double(),
            (bias if bias is not None else weight.new_zeros(len(weight))).double()[:, None],
        ],
        dim=1,
    )
    rows = list(keep) + ([width] if with_bias else [])
    index = torch.tensor(rows, dtype=torch.long)
    g = gram.to(torch.float64)
    g_kk = g[index][:, index]
    diag = g_kk.diagonal()
    lam = damping * float(diag.mean()) if len(diag) else 0.0
    g_kk = g_kk + lam * torch.eye(len(rows), dtype=torch.float64)
    rhs = g[index] @ w.T  # [K, out]
    solution = torch.linalg.solve(g_kk, rhs).T  # [out, K]
    new_weight = solution[:, : len(keep)].to(weight.dtype)
    new_bias = solution[:, len(keep)].to(weight.dtype) if with_bias else None
    return new_weight, new_bias


def set_output(
    adapter: ModelAdapter, layer: int, part: str, weight: torch.Tensor, bias: torch.Tensor | None
) -> None:
    """Overwrite the (already sliced) output projection's weight and set its bias."""
    module = adapter.output_projection(layer, part)
    conv1d = module.__class__.__name__ == "Conv1D"
    with torch.no_grad():
        target = module.weight
        value = weight.t() if conv1d else weight
        target.copy_(value.to(device=target.device, dtype=target.dtype))
        if bias is None:
            return
        if module.bias is None:
            module.bias = nn.Parameter(
                torch.zeros(len(bias), dtype=target.dtype, device=target.device),
                requires_grad=target.requires_grad,
            )
        module.bias.copy_(bias.to(device=target.device, dtype=target.dtype))
