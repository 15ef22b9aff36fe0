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


def onnx_size(path: Path) -> int:
    """Bytes of an ONNX model with its external data file (``NAME.data``) if it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def quantize_onnx_int8(
    source: str | Path, target: str | Path, sample: dict[str, torch.Tensor]
) -> dict:
    """Dynamic int8 quantization of an exported model with onnxruntime's own quantizer
    (``onnxruntime.quantization.quantize_dynamic``: int8 weights, activations quantized per batch
    at run time, no calibration data), then the int8 graph run on ``sample`` next to the float one.

    onnxruntime's quantizer rather than torchao: the result is a plain ONNX file that any
    onnxruntime (CPU) loads without our code or PyTorch, and it needs no package we do not already
    ship for the ONNX check.

    Returns:
        ``{"path", "size_bytes", "float_size_bytes", "max_abs_diff", "top1_agreement"}`` (sizes
        with external data files): the largest output difference
        from the float graph and, for outputs with a class or vocabulary axis, how often the int8
        graph picks the same top entry.

    Raises:
        ExportError: the quantizer failed.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = Path(source), Path(target)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    except Exception as err:  # the quantizer raises a wide range of internal errors
        raise ExportError(f"int8 quantization of {source.name} failed: {err}") from err
    outputs = []
    for path in (source, target):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        outputs.append(session.run(None, {n: sample[n].cpu().numpy() for n in names})[0])
    full, int8 = outputs
    if full.ndim == 3 and "attention_mask" in sample:
        keep = sample["attention_mask"].cpu().numpy().astype(bool)
        full, int8 = full[keep], int8[keep]
    agreement = float((full.argmax(-1) == int8.argmax(-1)).mean()) if full.ndim >= 2 else None
    size, source_size = onnx_size(target), onnx_size(source)
    diff = float(np.abs(full - int8).max())
    logger.info("quantized %s (max abs diff %.2e, top-1 agreement %s)", target, diff, agreement)
    return {
        "path": str(target),
        "size_bytes": size,
        "float_size_bytes": source_size,
        "max_abs_diff": diff,
        "top1_agreement": agreement,
    }
