"""ONNX export of a (pruned) model, checked against PyTorch with onnxruntime.

ONNX is the trust-free way to deploy a per-layer pruned model: the graph carries the shapes, so
no modelling code runs at load time.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimformer.errors import ExportError

logger = logging.getLogger(__name__)

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


class _FirstOutput(nn.Module):
    """Named tensor inputs in, the model's first output (logits or last hidden state) out."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names
        # decoders would otherwise also return a key/value cache
        self.extra = (
            {"use_cache": False}
            if "use_cache" in inspect.signature(model.forward).parameters
            else {}
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        return self.model(**{n: given[n] for n in self.names}, **self.extra)[0]


def export_onnx(
    model: nn.Module,
    sample: dict[str, torch.Tensor],
    path: str | Path,
    *,
    atol: float = 1e-4,
) -> dict:
    """Export ``model`` to ``path`` with dynamic batch and sequence axes, then compare outputs.

    Args:
        model: the model to export (put in eval mode, left on its device).
        sample: a tokenised batch used to trace and to check (``labels`` are ignored).
        atol: largest absolute difference accepted between onnxruntime's and PyTorch's outputs.

    Returns:
        ``{"path", "inputs", "max_abs_diff"}``.

    Raises:
        ExportError: the exporter failed or the outputs differ by more than ``atol``.
    """
    import onnxruntime as ort

    model = model.eval().cpu()
    accepted = inspect.signature(model.forward).parameters
    names = tuple(n for n in INPUT_ORDER if n in sample and n in accepted)
    tensors = {n: sample[n].cpu() for n in names}
    wrapper = _FirstOutput(model, names).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = Path(path)
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (),
                str(path),
                kwargs=tensors,
                input_names=list(names),
                output_names=["output"],
                dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                dynamo=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises a wide range of internal errors
        raise ExportError(f"ONNX export failed: {err}") from err
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in tensors.items()})[0]
    with torch.no_grad():
        want = wrapper(**tensors).float().numpy()
    if got.ndim == 3 and "attention_mask" in names:  # padded positions carry no meaning
        keep = sample["attention_mask"].cpu().numpy().astype(bool)
        got, want = got[keep], want[keep]
    diff = float(np.abs(got - want).max())
    if not diff <= atol:
        raise ExportError(f"ONNX outputs differ from PyTorch's by {diff:.2e} (allowed {atol:.0e})")
    logger.info("exported %s (max abs diff %.2e)", path, diff)
    return {"path": str(path), "inputs": list(names), "max_abs_diff": diff}
