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


ROW_CHUNK = 1024  # rows of a Gram matrix converted to float64 at once


def damped_block(gram: torch.Tensor, rows: torch.Tensor | None = None, *, damping: float = DAMPING):
    """``gram[rows][:, rows]`` in float64 plus ``lambda I``, in column-major order so that LAPACK
    factors it in place. ``lambda`` is ``damping`` x the mean diagonal: of the block, or of the
    whole matrix but its last (bias) row when ``rows`` is None.

    Built ``ROW_CHUNK`` rows at a time: the only full-size float64 matrix a solve holds is this one
    (an 8B model's FFN Gram matrix is 1.6 GB in float64)."""
    n = gram.shape[0] if rows is None else len(rows)
    block = torch.empty(n, n, dtype=torch.float64).mT  # column-major; symmetric, so .mT is itself
    for start in range(0, n, ROW_CHUNK):
        stop = min(n, start + ROW_CHUNK)
        part = gram[start:stop] if rows is None else gram[rows[start:stop]][:, rows]
        block[start:stop] = part
    diag = block.diagonal()
    counted = diag[:-1] if rows is None else diag  # a whole matrix's last row is the bias column's
    diag.add_(damping * float(counted.mean()) if len(counted) else 0.0)
    return block


def factor_in_place(block: torch.Tensor) -> bool:
    """Overwrite the symmetric column-major ``block`` with its lower Cholesky factor; false (and
    ``block`` spoilt) when it is not positive definite."""
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(block, out=(block, info))
    return int(info) == 0


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
    when ``with_bias`` is false), minimising the squared output error under ``gram``.

    Memory: one float64 copy of the kept block of ``gram``, factored in place (Cholesky; LU when
    the damped block is not positive definite), and the ``[K, out]`` right-hand side."""
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
    rhs = (
        torch.cat(
            [gram[index[s : s + ROW_CHUNK]].double() @ w.T for s in range(0, len(rows), ROW_CHUNK)]
        )
        if rows
        else w.new_zeros(0, len(w))
    )  # [K, out]
    g_kk = damped_block(gram, index, damping=damping)
    if factor_in_place(g_kk):
        solution = torch.cholesky_solve(rhs, g_kk).T  # [out, K]
    else:
        solution = torch.linalg.solve(damped_block(gram, index, damping=damping), rhs).T
    del g_kk
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
