"""What every importance method shares: the :class:`Importance` record and the calibration pass.

A forward-only method (activations, FLAP, block influence) runs the model over the calibration
batches once, with hooks that accumulate statistics of real tokens (attention mask 1) only. For a
causal LM the pass stops at the final hidden states: the output head, whose logits are the
largest tensor of the model, is never applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from slimformer.errors import Cancelled, InvalidSpec
from slimformer.models import model_task
from slimformer.text import final_hidden

ImportanceMethod = Literal["michel", "activations", "flap", "obs", "magnitude", "random"]
DepthImportance = Literal["block_influence", "metric_drop"]
LossKind = Literal["auto", "task", "label_free"]
ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


@dataclass
class Importance:
    """Scores for one model: one tensor per layer for heads and for FFN neurons, one score per MLP.

    Layers whose MLP was removed have an empty neuron tensor and a NaN MLP score. Methods that
    measure activations also keep the mean of every input channel of the attention output
    projection (``attention_means``, per layer ``heads x head_dim``) and of the MLP's down
    projection (``mlp_means``): FLAP's bias compensation folds the removed channels' mean
    contribution into the projection's bias. ``layers`` holds whole-layer scores (depth methods),
    ``channels`` the hidden (embedding) channels' scores and ``attention_channels`` the scores of
    the attention output projection's input channels (FLAP standardises heads over them), where a
    method measures them.
    """

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    mlps: torch.Tensor
    method: str
    loss: str = ""
    batches: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    attention_means: list[torch.Tensor] | None = None
    mlp_means: list[torch.Tensor] | None = None
    layers: torch.Tensor | None = None
    channels: torch.Tensor | None = None
    attention_channels: list[torch.Tensor] | None = None  # per-channel scores behind head scores
    # (layer, "attention" | "mlp") -> Gram matrix of the output projection's input ``[x, 1]``
    # (OBS keeps them for least-squares reconstruction)
    grams: dict[tuple[int, str], torch.Tensor] | None = None

    def head_matrix(self) -> torch.Tensor:
        """Layers x heads, NaN where a layer has fewer heads than the widest one (for heatmaps)."""
        width = max(len(h) for h in self.heads)
        out = torch.full((len(self.heads), width), float("nan"))
        for i, scores in enumerate(self.heads):
            out[i, : len(scores)] = scores
        return out

    def to_dict(self) -> dict:
        out = {
            "method": self.method,
            "loss": self.loss,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "heads": [h.tolist() for h in self.heads],
            "mlps": [None if torch.isnan(m) else float(m) for m in self.mlps],
            "neurons_summary": [
                {"count": len(n), "mean": float(n.mean()) if len(n) else None} for n in self.neurons
            ],
        }
        if self.layers is not None:
            out["layers"] = [float(v) for v in self.layers]
        if self.extra:
            plain = (int, float, str, bool)
            out["extra"] = {k: v for k, v in self.extra.items() if isinstance(v, plain)}
        return out


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` divided by their L2 norm (unchanged when the norm is 0)."""
    norm = scores.norm(p=2)
    return scores / norm if norm > 0 else scores


def mlp_nan(sizes) -> torch.Tensor:
    """0 for live MLPs, NaN for removed ones: added to MLP scores."""
    return torch.tensor([float("nan") if s.mlp_removed else 0.0 for s in sizes])


def forward_for_statistics(model: nn.Module, batch: dict) -> None:
    """One forward pass for hooks to observe: a causal LM's body only, any other model whole."""
    if model_task(model) == "text-generation":
        final_hidden(model, batch)
    else:
        model(**{k: v for k, v in batch.items() if k != "labels"})


class RealTokens:
    """The current batch's attention mask, for hooks that keep statistics of real tokens only."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [N, C], the rows of real tokens (all rows without a mask)."""
        if x.dim() == 2:
            return x
        if self.mask is None or self.mask.shape != x.shape[:2]:
            return x.reshape(-1, x.shape[-1])
        return x[self.mask]


def calibration_pass(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    what: str,
    tokens: RealTokens | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    forward: Callable[[nn.Module, dict], None] = forward_for_statistics,
) -> Iterator[int]:
    """Run ``model`` over ``batches`` without gradients, in eval mode; yields after each batch.

    ``tokens.mask`` holds the batch's attention mask while the batch runs. The model's training
    flag is restored at the end.

    Raises:
        InvalidSpec: no batches.
        Cancelled: ``should_cancel`` returned true between batches.
    """
    batches = list(batches)
    if not batches:
        raise InvalidSpec(f"{what} needs calibration data, and none was given")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for step, batch in enumerate(batches):
            if should_cancel and should_cancel():
                raise Cancelled("scoring was cancelled")
            batch = {k: v.to(device) for k, v in batch.items()}
            if tokens is not None:
                mask = batch.get("attention_mask")
                tokens.mask = None if mask is None else mask.bool()
            with torch.no_grad():
                forward(model, batch)
            if on_progress:
                on_progress((step + 1) / len(batches), f"{what}: batch {step + 1}/{len(batches)}")
            yield step
    finally:
        if tokens is not None:
            tokens.mask = None
        model.train(was_training)


def hooked_pass(
    model: nn.Module,
    batches: Iterable[dict],
    handles: list,
    *,
    what: str,
    tokens: RealTokens | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> None:
    """One :func:`calibration_pass` for the hooks whose ``handles`` are given (they collect the
    statistics); the hooks are removed afterwards, whatever happens."""
    try:
        for _ in calibration_pass(
            model,
            batches,
            what=what,
            tokens=tokens,
            on_progress=on_progress,
            should_cancel=should_cancel,
        ):
            pass
    finally:
        for handle in handles:
            handle.remove()


class Timer:
    """Seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
