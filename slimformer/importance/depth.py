"""Importance of whole layers, for depth pruning.

* ``block_influence`` (ShortGPT: Men et al. 2024, "ShortGPT: Layers in Large Language Models are
  More Redundant Than You Expect"): BI_i = 1 - E_t cos(x_i,t, x_i+1,t), the mean cosine distance
  between a layer's input and output hidden state over real calibration tokens. A layer whose
  output is its input does little. Cost: one forward pass per calibration batch.
* ``metric_drop``: the increase of the loss when the layer is skipped (its output replaced by its
  input): next-token cross-entropy on the text for a causal LM, the task loss with labels, the
  cross-entropy against the full model's predictions (classifiers) or the cosine distance to its
  embeddings (embedding models) without. Cost: (layers + 1) forward passes over the first
  ``METRIC_DROP_TOKENS`` calibration tokens.

Higher scores mean more important layers; depth pruning drops the lowest.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import Cancelled, InvalidSpec
from slimformer.importance.base import (
    CancelFn,
    DepthImportance,
    ProgressFn,
    RealTokens,
    hooked_pass,
)
from slimformer.models import mean_pool, model_task
from slimformer.text import next_token_stats

METRIC_DROP_TOKENS = 8192  # calibration tokens the metric-drop scores use per layer


def _hidden_in_out(args: tuple, kwargs: dict, output) -> tuple[torch.Tensor, torch.Tensor]:
    x = args[0] if args else kwargs["hidden_states"]
    y = output[0] if isinstance(output, tuple) else output
    return x, y


def block_influence(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """ShortGPT's block influence of every layer (see the module docstring)."""
    adapter = ModelAdapter(model)
    tokens = RealTokens()
    total = torch.zeros(adapter.num_layers, dtype=torch.float64)
    count = torch.zeros(adapter.num_layers, dtype=torch.float64)

    def hook(module, args, kwargs, output, i):
        x, y = _hidden_in_out(args, kwargs, output)
        cosine = F.cosine_similarity(tokens.select(x).float(), tokens.select(y).float(), dim=-1)
        total[i] += float((1 - cosine).double().sum())
        count[i] += cosine.numel()

    handles = [
        layer.register_forward_hook(lambda m, a, k, o, i=i: hook(m, a, k, o, i), with_kwargs=True)
        for i, layer in enumerate(adapter.layers)
    ]
    hooked_pass(
        model,
        batches,
        handles,
        what="block influence",
        tokens=tokens,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    return (total / count.clamp(min=1)).float()


def attention_influence(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Block influence of every layer's attention sub-block alone (He et al. 2024, "What Matters in
    Transformers? Not All Attention Is Needed"): 1 - E_t cos(x, x + attn(norm(x))), with x the
    residual stream entering the layer, over real calibration tokens. The attention blocks that
    change the stream least are the ones to remove whole (the Nemotron-NAS layout). A layer whose
    attention is already removed scores infinity (nothing left to remove)."""
    adapter = ModelAdapter(model)
    tokens = RealTokens()
    total = torch.zeros(adapter.num_layers, dtype=torch.float64)
    count = torch.zeros(adapter.num_layers, dtype=torch.float64)
    entering: dict[int, torch.Tensor] = {}

    def grab(module, args, kwargs, i):
        entering[i] = args[0] if args else kwargs["hidden_states"]

    def hook(module, args, kwargs, output, i):
        x = tokens.select(entering.pop(i)).float()
        attended = output[0] if isinstance(output, tuple) else output
        y = x + tokens.select(attended).float()
        cosine = F.cosine_similarity(x, y, dim=-1)
        total[i] += float((1 - cosine).double().sum())
        count[i] += cosine.numel()

    handles = []
    for i, layer in enumerate(adapter.layers):
        handles.append(
            layer.register_forward_pre_hook(lambda m, a, k, i=i: grab(m, a, k, i), with_kwargs=True)
        )
        handles.append(
            layer.self_attn.register_forward_hook(
                lambda m, a, k, o, i=i: hook(m, a, k, o, i), with_kwargs=True
            )
        )
    hooked_pass(
        model,
        batches,
        handles,
        what="attention influence",
        tokens=tokens,
        on_progress=on_progress,
        should_cancel=should_cancel,
    )
    scores = (total / count.clamp(min=1)).float()
    for i, sizes in enumerate(adapter.all_sizes()):
        if sizes.attention_removed:
            scores[i] = float("inf")
    return scores


def _first_tokens(batches: list[dict], budget: int) -> list[dict]:
    out, used = [], 0
    for batch in batches:
        if used >= budget:
            break
        out.append(batch)
        used += int(batch["input_ids"].numel())
    return out


@torch.no_grad()
def _loss(model: nn.Module, batches: list[dict], references: list[torch.Tensor | None]) -> float:
    """Mean loss of the model over ``batches`` (see the module docstring for its kind)."""
    task = model_task(model)
    total, weight = 0.0, 0
    for batch, reference in zip(batches, references, strict=True):
        if task == "text-generation":
            stats = next_token_stats(model, batch)
            total, weight = total + stats.nll_sum, weight + stats.tokens
            continue
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        rows = len(batch["input_ids"])
        if task == "feature-extraction":
            emb = mean_pool(out.last_hidden_state, batch.get("attention_mask")).float()
            value = (1 - F.cosine_similarity(emb, reference, dim=-1)).sum()
        elif "labels" in batch and out.logits.shape[-1] > 1:
            value = F.cross_entropy(out.logits.float(), batch["labels"], reduction="sum")
        elif "labels" in batch:  # regression
            value = F.mse_loss(
                out.logits.float().squeeze(-1), batch["labels"].float(), reduction="sum"
            )
        else:
            value = F.cross_entropy(out.logits.float(), reference, reduction="sum")
        total, weight = total + float(value), weight + rows
    return total / max(1, weight)


@torch.no_grad()
def _references(model: nn.Module, batches: list[dict]) -> list[torch.Tensor | None]:
    """The full model's predictions (classifiers without labels) or embeddings, per batch."""
    task = model_task(model)
    refs: list[torch.Tensor | None] = []
    for batch in batches:
        if task == "text-generation" or "labels" in batch:
            refs.append(None)
            continue
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        if task == "feature-extraction":
            refs.append(mean_pool(out.last_hidden_state, batch.get("attention_mask")).float())
        else:
            refs.append(out.logits.argmax(-1))
    return refs


def metric_drop(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    tokens: int = METRIC_DROP_TOKENS,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """The loss increase when each layer is skipped (see the module docstring)."""
    adapter = ModelAdapter(model)
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in b.items()} for b in _first_tokens(list(batches), tokens)
    ]
    if not batches:
        raise InvalidSpec("metric-drop scoring needs calibration data, and none was given")
    was_training = model.training
    model.eval()
    scores = torch.zeros(adapter.num_layers)
    try:
        references = _references(model, batches)
        base = _loss(model, batches, references)

        def skip(module, args, kwargs, output):
            x, _ = _hidden_in_out(args, kwargs, output)
            return (x, *output[1:]) if isinstance(output, tuple) else x

        for i, layer in enumerate(adapter.layers):
            if should_cancel and should_cancel():
                raise Cancelled("scoring was cancelled")
            handle = layer.register_forward_hook(skip, with_kwargs=True)
            try:
                scores[i] = _loss(model, batches, references) - base
            finally:
                handle.remove()
            if on_progress:
                on_progress(
                    (i + 1) / adapter.num_layers, f"metric drop: layer {i + 1}/{adapter.num_layers}"
                )
    finally:
        model.train(was_training)
    return scores


def score_depth(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    method: DepthImportance = "block_influence",
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """One importance score per layer (higher: more important) by ``method``.

    Raises:
        InvalidSpec: an unknown method, no calibration data.
        Cancelled: ``should_cancel`` returned true.
    """
    if method == "block_influence":
        return block_influence(model, batches, on_progress=on_progress, should_cancel=should_cancel)
    if method == "metric_drop":
        return metric_drop(model, batches, on_progress=on_progress, should_cancel=should_cancel)
    raise InvalidSpec(
        f"unknown depth importance {method!r}; choose block_influence or metric_drop",
        details={"field": "depth_importance"},
    )
