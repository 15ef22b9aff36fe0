"""Structured pruning of a causal LM layer by layer, in two streamed passes.

1. :func:`score_layers`: the calibration windows' hidden states enter layer 0; each layer's Gram
   matrices (the inputs of its output projections) are gathered there and turned into its OBS
   scores at once; only the scores are kept; the layer's outputs are the next layer's inputs.
2. :func:`prune_layers`: with the plan made from every layer's scores, each layer is loaded again,
   its Gram matrices measured again on the original model's inputs (no pass keeps every layer's),
   pruned and refitted by least squares, run on the evaluation windows beside the original layer
   (two sets of hidden states, never two models), staged to disk in the checkpoint's dtype, and
   freed.

Peak memory: one layer in float32 (twice while it is refitted), its Gram matrices, the calibration
and the two evaluation hidden states, the embeddings and the head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from slimformer.errors import Cancelled
from slimformer.importance.base import Importance, Timer, mlp_nan
from slimformer.importance.grams import _Gram
from slimformer.importance.obs import obs_layer_scores
from slimformer.pruning import PruningPlan
from slimformer.pruning.remove import remove_units
from slimformer.streaming.model import HeadStats, StreamedModel
from slimformer.streaming.states import HiddenStates

ProgressFn = Callable[[float, str], None]
PARTS = ("attention", "mlp")


def _never() -> bool:
    return False


def _layer_grams(
    sm: StreamedModel, index: int, hidden: HiddenStates, batches: list[dict]
) -> dict[tuple[int, str], torch.Tensor]:
    """The mean ``[x, 1]^T [x, 1]`` of the inputs of layer ``index``'s output projections over the
    real tokens of ``batches``; ``hidden`` becomes the layer's outputs."""
    adapter, layer = sm.adapter, sm.adapter.layers[index]
    grams, handles, mask = {}, [], {}
    for part in PARTS:
        if part == "mlp" and adapter.sizes(index).mlp_removed:
            continue
        gram = grams[(index, part)] = _Gram(adapter.output_weight(index, part).shape[1])

        def hook(module, args, gram=gram):
            x = args[0]
            real = mask.get("real")
            gram.add(x[real] if real is not None and real.shape == x.shape[:2] else x.flatten(0, 1))

        handles.append(adapter.output_projection(index, part).register_forward_pre_hook(hook))
    try:
        for i, batch in enumerate(batches):
            attention = batch.get("attention_mask")
            mask["real"] = attention.bool() if attention is not None else None
            hidden[i] = sm.run_layer(layer, hidden[i], batch)
    finally:
        for handle in handles:
            handle.remove()
    return {key: gram.mean() for key, gram in grams.items()}


def _run_layer(sm: StreamedModel, layer, hidden: HiddenStates, batches: list[dict]) -> None:
    for i, batch in enumerate(batches):
        hidden[i] = sm.run_layer(layer, hidden[i], batch)


def score_layers(
    sm: StreamedModel,
    batches: list[dict],
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] = _never,
    spill: Path | None = None,
) -> Importance:
    """OBS scores of every head, FFN neuron and MLP, one layer in memory at a time (the Gram
    matrices are dropped with their layer: the pruning pass measures its own). With ``spill``
    the hidden states live in files there, one window in memory at a time."""
    timer = Timer()
    hidden = HiddenStates((sm.embed(b) for b in batches), spill)
    heads, neurons, mlps, attention_means, mlp_means = [], [], [], [], []
    for i in range(sm.num_layers):
        if should_cancel():
            raise Cancelled("scoring was cancelled")
        sm.load_layer(i)
        grams = _layer_grams(sm, i, hidden, batches)
        scores = obs_layer_scores(sm.adapter, i, grams[(i, "attention")], grams.get((i, "mlp")))
        heads.append(scores[0])
        neurons.append(scores[1])
        mlps.append(scores[2])
        attention_means.append(grams[(i, "attention")][:-1, -1].clone())
        mlp_gram = grams.get((i, "mlp"))
        intermediate = sm.adapter.sizes(i).intermediate
        mlp_means.append(
            mlp_gram[:-1, -1].clone() if mlp_gram is not None else torch.zeros(intermediate)
        )
        del grams
        sm.free_layer(i)
        if on_progress:
            on_progress((i + 1) / sm.num_layers, f"scored layer {i + 1}/{sm.num_layers}")
    hidden.release()
    return Importance(
        heads=heads,
        neurons=neurons,
        mlps=torch.tensor(mlps) + mlp_nan(sm.adapter.all_sizes()),
        method="obs",
        loss="none (activations)",
        batches=len(batches),
        seconds=timer(),
        attention_means=attention_means,
        mlp_means=mlp_means,
    )


def layer_plan(plan: PruningPlan, index: int, grams: dict | None) -> PruningPlan:
    """The part of ``plan`` that touches layer ``index`` (with that layer's Gram matrices)."""
    return PruningPlan(
        heads={index: plan.heads.get(index, [])},
        neurons={index: plan.neurons.get(index, [])},
        mlps=[index] if index in plan.mlps else [],
        attention=[index] if index in plan.attention else [],
        grams=grams,
        reconstruct_bias=plan.reconstruct_bias,
    )


@dataclass
class SideBySide:
    """Next-token statistics of the original and the pruned model on the evaluation windows."""

    original: HeadStats = field(default_factory=HeadStats)
    compressed: HeadStats = field(default_factory=HeadStats)
    agreement: float | None = None
    # parameters, weight bytes and MACs of each model (see :func:`footprint`)
    original_footprint: dict = field(default_factory=dict)
    compressed_footprint: dict = field(default_factory=dict)


def prune_layers(
    sm: StreamedModel,
    plan: PruningPlan,
    calibration: list[dict],
    evaluation: list[dict],
    staging: Path,
    *,
    reconstruct: bool,
    on_progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] = _never,
    spill: Path | None = None,
) -> SideBySide:
    """Prune every layer as ``plan`` says (refitted on the pruned inputs when ``reconstruct``),
    stage each pruned layer to ``staging/layer-NNNNN.safetensors`` in the checkpoint's dtype, and
    measure both models on ``evaluation``. The skeleton keeps the pruned shapes. With ``spill``
    the three sets of hidden states live in files there."""
    from safetensors.torch import save_file

    if plan.compensates:
        raise ValueError("bias compensation is not streamed")  # callers keep it in memory
    staging.mkdir(parents=True, exist_ok=True)
    dtype = sm.checkpoint.dtype
    where = (lambda name: spill / name) if spill is not None else (lambda name: None)
    cal = HiddenStates((sm.embed(b) for b in calibration), where("calibration"))  # original's
    ev_o = HiddenStates((sm.embed(b) for b in evaluation), where("original"))
    ev_c = ev_o.copy(where("compressed"))
    for i in range(sm.num_layers):
        if should_cancel():
            raise Cancelled("pruning was cancelled")
        layer = sm.load_layer(i)
        _run_layer(sm, layer, ev_o, evaluation)
        sub = layer_plan(plan, i, None)
        # the refit's Gram matrices come from the original model's inputs, as in memory: measured
        # on SmolLM2 (25% heads and FFN, 8 windows), refitting on the pruned layers' inputs gave
        # perplexity 50.5 and correcting their error by least squares 61.1, against 49.7
        grams = _layer_grams(sm, i, cal, calibration)
        if reconstruct and not sub.is_empty():
            sub.grams = grams
        del grams
        if not sub.is_empty():
            remove_units(sm.model, sub)
        state = {name: t.detach().to(dtype).contiguous() for name, t in layer.state_dict().items()}
        if dtype != torch.float32:  # the pruned model is measured with the weights it is saved with
            layer.load_state_dict({n: t.float() for n, t in state.items()}, assign=True)
        save_file(state, str(staging / f"layer-{i:05d}.safetensors"), metadata={"format": "pt"})
        del state, sub
        _run_layer(sm, layer, ev_c, evaluation)
        sm.free_layer(i)
        if on_progress:
            on_progress((i + 1) / sm.num_layers, f"pruned layer {i + 1}/{sm.num_layers}")
    cal.release()
    result = SideBySide()
    greedy_o, greedy_c = [], []
    for i, batch in enumerate(evaluation):
        result.original.add(sm.head_stats(ev_o[i], batch, greedy_o))
        result.compressed.add(sm.head_stats(ev_c[i], batch, greedy_c))
    ev_o.release()
    ev_c.release()
    if greedy_o:
        result.agreement = float((torch.cat(greedy_o) == torch.cat(greedy_c)).double().mean())
    return result
