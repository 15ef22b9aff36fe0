"""Michel et al. (2019): importance from the gradient of the loss with respect to gates.

Michel, Levy & Neubig (2019): put a gate xi_h on every head's output and score the head by the
expected magnitude of the loss gradient with respect to its gate, I_h = E |dL/d xi_h|, with the
scores of each layer normalised by their L2 norm. Prasanna, Rogers & Rumshisky (2020) do the same
with one gate on each layer's whole MLP; one gate per intermediate neuron scores FFN neurons.

transformers 5 has no ``head_mask`` any more, so the gates are ours: a forward pre-hook on the
attention output projection scales each head's slice of its input, a pre-hook on the MLP's down
projection scales each neuron, and a forward hook on the down projection scales the MLP's output.
All gates are 1 while scoring, so the model computes exactly what it computes without them.

The loss is the task loss when the batches carry labels. Without labels the loss compares the gated
model with the original model it was at xi = 1. A KL divergence or a distance to the original output
is zero with a zero gradient at that point for every gate (the original is its own optimum), so the
label-free loss takes the original's outputs in the limit of zero temperature: cross-entropy against
the original's predicted class or next token (the KL to its sharpened distribution), and for
embedding models an in-batch contrastive loss that asks each gated embedding to stay closest to its
own original embedding. A causal LM's next-token loss is streamed over chunks of positions
(:func:`slimformer.text.next_token_loss`): its logits never exist for a whole batch at once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import Cancelled, InvalidSpec
from slimformer.importance.base import (
    CancelFn,
    Importance,
    LossKind,
    ProgressFn,
    Timer,
    mlp_nan,
    normalise,
)
from slimformer.models import autocast_for, mean_pool, model_task
from slimformer.text import next_token_loss

logger = logging.getLogger(__name__)

LM_TOKENS_PER_STEP = 1024  # a causal LM's backward pass keeps every layer's activations: bound them


def _scale(x: torch.Tensor, gate: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """``x`` [batch, ..., width] times the gate: [n] shared, or [B, n] per example; each unit spans
    ``repeat`` elements."""
    g = gate.to(x.dtype)
    if repeat > 1:
        g = g.repeat_interleave(repeat, dim=-1)
    if g.dim() == 2:
        g = g[: x.shape[0]].reshape(x.shape[0], *([1] * (x.dim() - 2)), g.shape[-1])
    return x * g


class Gates:
    """Multiplicative gates on every head, FFN neuron and MLP of a model, installed as hooks.

    Use as a context manager; gate tensors are leaves with ``requires_grad`` so one backward pass
    gives dL/d xi for all of them. Setting a gate to zero removes that unit's contribution exactly.
    """

    def __init__(
        self, adapter: ModelAdapter, *, requires_grad: bool = True, per_example: int | None = None
    ) -> None:
        """``per_example=B`` gives every example of a batch of up to B its own gates (shape [B, n]),
        so one backward pass yields each example's gradient; otherwise one gate per unit is shared
        by the batch."""
        self.adapter = adapter
        param = next(adapter.model.parameters())
        dtype = torch.float64 if param.dtype == torch.float64 else torch.float32
        sizes = adapter.all_sizes()

        def gate(n: int) -> torch.Tensor:
            shape = (per_example, n) if per_example else (n,)
            return torch.ones(shape, device=param.device, dtype=dtype, requires_grad=requires_grad)

        self.heads = [gate(s.heads) for s in sizes]
        self.neurons = [gate(0 if s.mlp_removed else s.intermediate) for s in sizes]
        self.mlps = [None if s.mlp_removed else gate(1) for s in sizes]
        self._handles: list = []

    def __enter__(self) -> Gates:
        adapter = self.adapter
        d = adapter.head_dim
        for i in range(adapter.num_layers):
            head_gate = self.heads[i]

            def scale_heads(module, args, gate=head_gate):
                (x, *rest) = args
                return (_scale(x, gate, repeat=d), *rest)

            self._handles.append(adapter.attention_output(i).register_forward_pre_hook(scale_heads))
            if self.mlps[i] is None:
                continue
            neuron_gate, mlp_gate = self.neurons[i], self.mlps[i]

            def scale_neurons(module, args, gate=neuron_gate):
                (x, *rest) = args
                return (_scale(x, gate), *rest)

            def scale_mlp(module, args, output, gate=mlp_gate):
                return _scale(output, gate)

            down = adapter.mlp_down(i)
            self._handles.append(down.register_forward_pre_hook(scale_neurons))
            self._handles.append(down.register_forward_hook(scale_mlp))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def leaves(self) -> list[torch.Tensor]:
        return [*self.heads, *self.neurons, *(m for m in self.mlps if m is not None)]

    def zero_grad(self) -> None:
        for g in self.leaves():
            g.grad = None


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision outputs (autocast), unchanged otherwise (float64 in the gradient
    tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def compute_loss(
    model: nn.Module,
    batch: dict,
    kind: Literal["task", "label_free"],
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """The scoring loss of one batch (see the module docstring for the label-free form).

    ``reference``: the original model's normalised embeddings of the batch, for the label-free loss
    of an embedding model. While scoring (all gates at 1) they equal the gated model's own,
    detached.
    """
    task = model_task(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if kind == "task":
        if "labels" not in batch:
            raise InvalidSpec("the task loss needs labels, and this batch has none")
        if task == "feature-extraction":
            raise InvalidSpec("an embedding model has no task loss; use the label-free loss")
        if task == "text-generation":  # streamed over chunks of positions: no B x T x V logits
            return next_token_loss(model, batch)
        return model(**inputs, labels=batch["labels"]).loss
    if task == "feature-extraction":
        out = model(**inputs)
        pooled = mean_pool(out.last_hidden_state, batch.get("attention_mask"))
        emb = F.normalize(_full_precision(pooled), dim=-1)
        if emb.shape[0] < 2:
            raise InvalidSpec(
                "label-free scoring of an embedding model needs batches of at least 2 texts"
            )
        ref = emb.detach() if reference is None else reference
        return F.cross_entropy(emb @ ref.T / 0.05, torch.arange(emb.shape[0], device=emb.device))
    if task == "text-generation":  # cross-entropy against the greedy next tokens, streamed
        return next_token_loss(model, batch, greedy_targets=True)
    logits = _full_precision(model(**inputs).logits)
    if logits.shape[-1] == 1:  # regression: stay close to the original score
        raise InvalidSpec(
            "label-free scoring of a regression model is not supported; give labelled data"
        )
    return F.cross_entropy(logits, logits.detach().argmax(-1))


def _grad_magnitude(grad: torch.Tensor, rows: int, per_example: bool) -> torch.Tensor:
    """|dL/d xi| of one batch; per example, summed over the batch's real rows.

    The loss is a batch mean, so an example's own gradient is ``rows`` times its share of the batch
    gradient.
    """
    grad = grad.detach().double().cpu()
    return (grad[:rows] * rows).abs().sum(0) if per_example else grad.abs()


def _steps(batches: list[dict], causal_lm: bool) -> list[dict]:
    """The batches, a causal LM's cut into micro-batches of at most ``LM_TOKENS_PER_STEP`` tokens
    (at least one row): its backward pass keeps every layer's activations of the whole batch."""
    if not causal_lm:
        return batches
    out = []
    for batch in batches:
        rows, length = batch["input_ids"].shape[:2]
        step = max(1, LM_TOKENS_PER_STEP // max(1, length))
        out.extend({k: v[i : i + step] for k, v in batch.items()} for i in range(0, rows, step))
    return out


def score_michel(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    loss: LossKind = "auto",
    normalize: bool = True,
    normalize_neurons: bool = False,
    per_example: bool = True,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Importance:
    """Michel et al. (2019): I = E_x |dL(x)/d xi| for a gate xi on every head, FFN neuron and MLP.

    Args:
        model: a model of a supported family; it stays on its device and is left unchanged.
        batches: tokenised batches (dicts of tensors; ``labels`` present for the task loss).
        loss: ``task`` needs labels; ``label_free`` never uses them; ``auto`` picks ``task`` when
            the first batch has labels and the model has a task head.
        normalize: Michel's layer-wise L2 normalisation of head scores (and of the MLP scores
            across layers).
        normalize_neurons: the same normalisation for FFN neurons. Off by default: on
            minilm-l6-sst2, global ranking of raw neuron scores kept more accuracy
            (docs/pruning.md).
        per_example: Michel's E_x |dL(x)/d xi| with a gate per example (one backward pass per batch
            still); ``False`` takes |dL/d xi| of each batch's mean loss instead.

    Cost: one forward and one backward pass per batch. A causal LM's batches run in micro-batches
    of at most ``LM_TOKENS_PER_STEP`` tokens and its loss is streamed over chunks of positions.

    Raises:
        InvalidSpec: the task loss without labels, an empty calibration set.
        Cancelled: ``should_cancel`` returned true between batches.
    """
    adapter = ModelAdapter(model)
    sizes = adapter.all_sizes()
    timer = Timer()
    device = next(model.parameters()).device
    batches = list(batches)
    if not batches:
        raise InvalidSpec("importance scoring needs calibration data, and none was given")
    kind = loss
    if kind == "auto":
        labelled = "labels" in batches[0] and model_task(model) != "feature-extraction"
        kind = "task" if labelled else "label_free"
    steps = _steps(batches, model_task(model) == "text-generation")
    width = max(len(b["input_ids"]) for b in steps) if per_example else None
    gates = Gates(adapter, per_example=width)
    totals = _Totals(sizes)
    with _only_gates_learn(model):
        _accumulate(
            model, steps, gates, kind, device, totals, per_example, on_progress, should_cancel
        )
    heads, neurons, mlps = totals.means(
        totals.examples if per_example else len(steps), normalize, normalize_neurons
    )
    return Importance(
        heads,
        neurons,
        mlps + mlp_nan(sizes),
        method="michel",
        loss=kind,
        batches=len(batches),
        extra={"examples": totals.examples, "per_example": per_example},
        seconds=timer(),
    )


@contextlib.contextmanager
def _only_gates_learn(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (dropout off: the gradient of the model users will run) and with no
    gradient for its parameters (gradients only for the gates: faster, less memory); both
    restored on exit."""
    was_training = model.training
    model.eval()
    requires = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)


class _Totals:
    """|dL/d xi| of every gate summed over the scoring steps, in float64 (handed out as float32),
    and the examples seen."""

    def __init__(self, sizes: list) -> None:
        self.heads = [torch.zeros(s.heads, dtype=torch.float64) for s in sizes]
        self.neurons = [
            torch.zeros(0 if s.mlp_removed else s.intermediate, dtype=torch.float64) for s in sizes
        ]
        self.mlps = torch.zeros(len(sizes), dtype=torch.float64)
        self.examples = 0

    def add(self, gates: Gates, rows: int, per_example: bool) -> None:
        """The gates' gradients after one step's backward pass, over ``rows`` examples."""
        self.examples += rows
        for i in range(len(self.heads)):
            self.heads[i] += _grad_magnitude(gates.heads[i].grad, rows, per_example)
            if gates.mlps[i] is not None:
                self.neurons[i] += _grad_magnitude(gates.neurons[i].grad, rows, per_example)
                mlp_grad = _grad_magnitude(gates.mlps[i].grad, rows, per_example)
                self.mlps[i] += mlp_grad.squeeze()

    def means(
        self, n: int, normalize: bool, normalize_neurons: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(heads, neurons, mlps): the totals over ``n``, normalised as asked."""
        heads = [(h / n).float() for h in self.heads]
        neurons = [(x / n).float() for x in self.neurons]
        mlps = (self.mlps / n).float()
        if normalize:
            heads = [normalise(h) for h in heads]
            mlps = normalise(mlps)
        if normalize_neurons:
            neurons = [normalise(x) for x in neurons]
        return heads, neurons, mlps


def _accumulate(
    model: nn.Module,
    steps: list[dict],
    gates: Gates,
    kind: str,
    device: torch.device,
    totals: _Totals,
    per_example: bool,
    on_progress: ProgressFn | None,
    should_cancel: CancelFn | None,
) -> None:
    """One forward and backward pass per step with the gates installed, each step's gate
    gradients added to ``totals``; the gates' gradients are cleared afterwards."""
    try:
        with gates:
            for step, batch in enumerate(steps):
                if should_cancel and should_cancel():
                    raise Cancelled("scoring was cancelled")
                batch = {k: v.to(device) for k, v in batch.items()}
                gates.zero_grad()
                with autocast_for(device):
                    value = compute_loss(model, batch, kind)
                if not torch.isfinite(value):
                    raise InvalidSpec(
                        f"the scoring loss is {value.item()} on calibration batch {step}"
                    )
                value.backward()
                del value
                totals.add(gates, len(batch["input_ids"]), per_example)
                if on_progress:
                    on_progress((step + 1) / len(steps), f"scored batch {step + 1}/{len(steps)}")
    finally:
        gates.zero_grad()


@contextlib.contextmanager
def gated(model: nn.Module, *, heads=None, neurons=None, mlps=None) -> Iterator[Gates]:
    """Run ``model`` with some units switched off (gate 0) instead of removed.

    ``heads``/``neurons``: {layer: [indices]}; ``mlps``: [layers]. The reference for what
    physical pruning must reproduce.
    """
    gates = Gates(ModelAdapter(model), requires_grad=False)
    with torch.no_grad():
        for layer, idx in (heads or {}).items():
            gates.heads[layer][list(idx)] = 0.0
        for layer, idx in (neurons or {}).items():
            gates.neurons[layer][list(idx)] = 0.0
        for layer in mlps or []:
            gates.mlps[layer].zero_()
    with gates:
        yield gates
