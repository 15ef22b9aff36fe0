"""Knowledge distillation: train a smaller student to imitate a teacher.

Students come from three places:

* a layer-dropped copy of the teacher (:func:`make_layer_dropped_student`): ``k`` layers kept, evenly
  spaced or ranked by a layer importance score. The score uses the gradient trick of Michel et al. that
  :mod:`slimformer.importance` uses for heads: a gate ``g`` on each layer's residual update
  (output = input + g * (layer(input) - input)), scored by E |dL/dg| over calibration batches. The copy
  keeps the teacher's stock config class with fewer layers, so it reloads with transformers alone;
* a pruned teacher (any model slimformer pruned: it is just the student passed in);
* a smaller model the user names, checked by :func:`check_student_compatible` (same tokenizer, same
  label set) before any training.

Losses (Hinton et al. 2015; hidden-state alignment as in TinyBERT / DistilBERT's cosine loss):

* classification: ``alpha * CE(student, gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``;
  without gold labels the teacher is the only labeller (KD alone);
* causal LMs: the same per token, over the vocabulary, computed in chunks of positions under activation
  checkpointing so that at most ``kl_chunk_size x vocab`` logits exist at once, forward or backward;
  padding and prompt positions do not count;
* embedding models (no head): 1 - cosine (or MSE) between mean-pooled student and teacher embeddings;
* optionally, cosine or MSE between the hidden states of mapped layers (student layer i -> teacher layer
  ``layer_map[i]``), through a learned projection when the widths differ.

The loop (:func:`distill`, and :func:`finetune` for the no-teacher baseline) runs AdamW with linear
warm-up and decay, gradient accumulation, a budget in epochs, steps or minutes, bf16 autocast on CUDA,
evaluation with the best weights kept, early stopping, and checkpoints that make a resumed run end
with the same weights as an uninterrupted one: the data order of each epoch is a seeded permutation,
and a checkpoint holds the position in it along with every RNG state. Training-health findings
(data problems, chance-level comparisons, non-finite values, unused parameters, plateaus) come back as
``{"level", "check", "message"}`` dicts and are logged.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint
from transformers import PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from slimformer.architectures import ModelAdapter
from slimformer.data import TextData, encode_labels, make_batches
from slimformer.errors import Cancelled, DatasetError, InvalidSpec, SlimformerError
from slimformer.evaluation import predict, task_metric
from slimformer.importance import compute_loss
from slimformer.modeling.modeling_slimformer import FAMILIES
from slimformer.models import Task, mean_pool, model_task, pick_device, set_seed

logger = logging.getLogger(__name__)

LayerStrategy = Literal["even", "importance"]
ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]
EvalFn = Callable[[nn.Module], float]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Config fields that may change between a run and its resumption without changing the weights.
_RESUMABLE_CHANGES = ("max_minutes", "checkpoint_every", "kl_chunk_size", "device")
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


# ---------------------------------------------------------------- configuration and result


@dataclass
class DistillConfig:
    """How to distil (or fine-tune). Budgets combine: training stops at whichever comes first.

    The learning-rate schedule (linear warm-up, then linear decay to zero) spans the step budget, i.e.
    ``epochs`` of data capped by ``max_steps``; ``max_minutes`` only cuts a run short, so give ``max_steps``
    as well when the time budget is the one that binds.
    """

    temperature: float = 2.0
    alpha: float = 0.5  # weight of the gold-label cross-entropy; 1 - alpha goes to the soft targets
    hidden_loss: Literal["cosine", "mse"] | None = None
    hidden_weight: float = 1.0
    embedding_loss: Literal["cosine", "mse"] = "cosine"  # embedding models: pooled student vs teacher
    epochs: float = 3.0
    max_steps: int | None = None
    max_minutes: float | None = None
    # From-pretrained students (layer-dropped or pruned copies) are already close to their teacher.
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int = 128
    eval_every: int = 200  # optimizer steps between evaluations (there is always one at the start and end)
    patience: int | None = None  # evaluations without improvement before stopping; None: never stop early
    checkpoint_every: int = 200  # without a checkpoint folder, the last checkpoint is kept in memory
    max_grad_norm: float = 1.0
    seed: int = 0
    kl_chunk_size: int = 256  # positions per chunk of the token-level causal-LM losses
    shuffle: bool = True
    device: str | None = None  # CUDA when present, CPU otherwise

    def validate(self) -> None:
        """Raise :class:`InvalidSpec` naming the first field whose value cannot be used."""
        checks = [
            ("temperature", self.temperature > 0, "must be positive"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "must lie in [0, 1]"),
            ("hidden_loss", self.hidden_loss in (None, "cosine", "mse"), "must be None, 'cosine' or 'mse'"),
            ("hidden_weight", self.hidden_weight >= 0, "must be 0 or more"),
            ("embedding_loss", self.embedding_loss in ("cosine", "mse"), "must be 'cosine' or 'mse'"),
            ("epochs", self.epochs > 0, "must be positive"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be at least 1"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "must be positive"),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "must lie in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be 0 or more"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("grad_accum", self.grad_accum >= 1, "must be at least 1"),
            ("max_length", self.max_length >= 2, "must be at least 2"),
            ("eval_every", self.eval_every >= 1, "must be at least 1"),
            ("patience", self.patience is None or self.patience >= 1, "must be None or at least 1"),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be at least 1"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be positive"),
            ("kl_chunk_size", self.kl_chunk_size >= 1, "must be at least 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidSpec(f"distillation {name} {rule}, got {getattr(self, name)!r}", details={"field": name})


@dataclass
class DistillResult:
    """What a distillation (or fine-tuning) run produced.

    ``history`` has one entry per optimizer step, ``{"step", "loss", "grad_norm", "lr", "metric", "seconds"}``
    (``metric`` is None between evaluations; step 0 holds the evaluation before training; ``seconds`` is the
    run's wall time when the step ended, across resumptions).
    ``stopped_because`` is one of ``epochs``, ``max_steps``, ``max_minutes``, ``early_stopping``.
    """

    student: nn.Module
    history: list[dict]
    best_metric: float | None
    best_step: int | None
    metric_name: str | None
    teacher_metric: float | None
    steps: int
    seconds: float
    health: list[dict]
    resumed_from_step: int | None
    stopped_because: str

    def evaluations(self) -> list[dict]:
        """The history entries that carry a metric."""
        return [h for h in self.history if h.get("metric") is not None]


def _finding(level: str, check: str, message: str) -> dict:
    logger.log(_LEVELS[level], "%s: %s", check, message)
    return {"level": level, "check": check, "message": message}


# ---------------------------------------------------------------- students


def score_layers(
    model: nn.Module,
    batches: Sequence[dict],
    *,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Importance of every layer: E |dL/dg| of a gate ``g`` on the layer's residual update.

    Each layer's output becomes ``out + (g - 1) * (out - in)``, which is the layer's own output at g = 1,
    so scoring changes nothing the model computes. The loss is the task loss when the batches carry labels
    and the model has a task head, otherwise slimformer's label-free loss against the model's own outputs
    (see :mod:`slimformer.importance`).

    Args:
        model: a model of a supported family; left unchanged (its ``requires_grad`` flags are restored).
        batches: tokenised calibration batches.
        should_cancel: checked between batches.

    Returns:
        A float tensor with one score per layer (mean over batches).

    Raises:
        InvalidSpec: no calibration batches.
        UnsupportedArchitecture: a family slimformer has no adapter for.
        Cancelled: ``should_cancel`` returned true.
    """
    adapter = ModelAdapter(model)
    batches = list(batches)
    if not batches:
        raise InvalidSpec("scoring layers needs calibration batches, and none were given")
    device = next(model.parameters()).device
    gates = [torch.ones((), device=device, requires_grad=True) for _ in adapter.layers]

    def gate_hook(module, args, kwargs, output, gate):
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        gated_out = y + (gate - 1).to(y.dtype) * (y - x)
        return (gated_out, *output[1:]) if isinstance(output, tuple) else gated_out

    kind = "task" if "labels" in batches[0] and model_task(model) != "feature-extraction" else "label_free"
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    handles = [
        layer.register_forward_hook(lambda m, a, k, o, gate=gate: gate_hook(m, a, k, o, gate), with_kwargs=True)
        for layer, gate in zip(adapter.layers, gates, strict=True)
    ]
    total = torch.zeros(len(gates), dtype=torch.float64)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # gradients for the gates only
        for batch in batches:
            if should_cancel and should_cancel():
                raise Cancelled("layer scoring was cancelled")
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = compute_loss(model, batch, kind)
            grads = torch.autograd.grad(loss, gates)
            total += torch.stack([g.detach().double().abs().cpu() for g in grads])
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return (total / len(batches)).float()


def _evenly_spaced(num_layers: int, keep: int) -> list[int]:
    """Every ``num_layers / keep``-th layer, ending with the last: 6 -> 3 keeps [1, 3, 5].

    The last layer stays because the task head reads its output: on minilm-l6-sst2, layers [1, 3, 5] kept
    79.2% validation accuracy before any training, [0, 3, 5] 76.2% and [0, 2, 4] 51.0%.
    """
    return [math.floor((i + 1) * num_layers / keep + 0.5) - 1 for i in range(keep)]


def keep_layers(model: nn.Module, kept: Sequence[int]) -> None:
    """Keep only the layers ``kept`` (indices in the model as it is), and rewrite the config to match.

    The attention modules' ``layer_idx`` (the key/value cache slot), ``layer_types`` and, for per-layer
    pruned models, ``per_layer_config`` are renumbered with the layers, so generation with a cache and a
    save/reload round trip see the model as it is.

    Raises:
        InvalidSpec: indices out of range or repeated, or a GPT-2 config whose attention scaling depends
            on the layer's position (``scale_attn_by_inverse_layer_idx``).
    """
    adapter = ModelAdapter(model)
    family = adapter.family.name
    n = adapter.num_layers
    kept = list(kept)
    if not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= n:
        raise InvalidSpec(f"layers to keep must be increasing distinct indices in [0, {n}), got {kept}")
    config = model.config
    if family == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise InvalidSpec(
            "this GPT-2 scales attention by 1 / (layer index + 1) (scale_attn_by_inverse_layer_idx), so a kept "
            "layer would compute something else at its new position; layer dropping is not supported for it"
        )
    path = FAMILIES[family]["layers"]
    parent_path, _, attr = path.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    old_layers = getattr(parent, attr)
    new_layers = nn.ModuleList([old_layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    setattr(parent, attr, new_layers)
    if hasattr(parent, "n_layers"):  # DistilBERT's Transformer keeps its own count
        parent.n_layers = len(kept)
    per_layer = config.to_dict().get("per_layer_config") if getattr(config, "is_heterogeneous", False) else None
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in kept]
    if per_layer is not None:
        config.per_layer_config = {new: per_layer[str(old)] for new, old in enumerate(kept)}


def make_layer_dropped_student(
    teacher: nn.Module,
    num_layers: int,
    strategy: LayerStrategy = "even",
    calibration_batches: Sequence[dict] | None = None,
    *,
    should_cancel: CancelFn | None = None,
) -> tuple[nn.Module, list[int]]:
    """A copy of ``teacher`` with ``num_layers`` of its layers, and the indices of the layers kept.

    The copy has the teacher's config class with fewer layers (``BertConfig(num_hidden_layers=k)``,
    ``LlamaConfig`` with its ``layer_types`` cut to match, ...), so ``save_pretrained`` writes a folder that
    stock ``AutoModel...from_pretrained`` loads without remote code (a per-layer pruned teacher keeps its
    per-layer format and its ``trust_remote_code`` requirement). Pass the kept indices to :func:`distill`
    as ``layer_map`` to align each student layer with the teacher layer it came from.

    Args:
        teacher: a model of a supported family (any head); it is not modified.
        num_layers: layers to keep, 1 to the teacher's count.
        strategy: ``even`` keeps every (teacher layers / ``num_layers``)-th layer, ending with the last;
            ``importance`` keeps the ``num_layers`` layers with the highest :func:`score_layers` scores.
        calibration_batches: tokenised batches for ``importance``.
        should_cancel: checked between calibration batches.

    Returns:
        ``(student, kept_layer_indices)``; the student is in eval mode on the teacher's device.

    Raises:
        InvalidSpec: a layer count out of range, an unknown strategy, ``importance`` without batches.
        UnsupportedArchitecture: a family slimformer has no adapter for.

    Example:
        >>> student, kept = make_layer_dropped_student(teacher, 3)  # doctest: +SKIP
        >>> result = distill(teacher, student, tokenizer, train, layer_map=kept)  # doctest: +SKIP
    """
    n = ModelAdapter(teacher).num_layers
    if not 1 <= num_layers <= n:
        raise InvalidSpec(
            f"a layer-dropped student keeps between 1 and {n} layers of this teacher, got {num_layers}",
            details={"field": "num_layers"},
        )
    if strategy == "even":
        kept = _evenly_spaced(n, num_layers)
    elif strategy == "importance":
        if not calibration_batches:
            raise InvalidSpec("the importance strategy needs calibration_batches to score the layers")
        scores = score_layers(teacher, calibration_batches, should_cancel=should_cancel)
        order = torch.argsort(scores, descending=True, stable=True)
        kept = sorted(int(i) for i in order[:num_layers])
        logger.info("layer scores %s; keeping layers %s", [round(float(s), 6) for s in scores], kept)
    else:
        raise InvalidSpec(f"unknown layer strategy {strategy!r}; choose 'even' or 'importance'")
    student = copy.deepcopy(teacher)
    keep_layers(student, kept)
    return student.eval(), kept


def _generic_labels(id2label: dict) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def check_student_compatible(
    teacher: nn.Module,
    student: nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Refuse a student that cannot learn from this teacher: another head, vocabulary or label set.

    Both models read the ids of the teacher's tokenizer and the student imitates the teacher's outputs,
    so they must agree on the task head, the vocabulary (size, and the tokenizer's token -> id map and
    normalisation when a student tokenizer is given) and, for classification, the labels. A student whose
    labels are only generic ``LABEL_i`` names with the teacher's count is accepted (a fresh head).
    Embedding students must also have the teacher's width, since their embeddings replace the teacher's.

    Args:
        teacher: the model that labels.
        student: the model that learns.
        teacher_tokenizer: the tokenizer both models will read.
        student_tokenizer: the tokenizer the student was trained with, if it has its own.

    Raises:
        InvalidSpec: naming the first mismatch, with both values.
    """
    t_task, s_task = model_task(teacher), model_task(student)
    if t_task != s_task:
        raise InvalidSpec(
            f"the student is a {s_task} model ({type(student).__name__}) and the teacher a {t_task} model "
            f"({type(teacher).__name__}); give a student with the teacher's kind of head",
            details={"teacher_task": t_task, "student_task": s_task},
        )
    t_vocab = getattr(teacher.config, "vocab_size", None)
    s_vocab = getattr(student.config, "vocab_size", None)
    t_rows = teacher.get_input_embeddings().num_embeddings
    s_rows = student.get_input_embeddings().num_embeddings
    if t_vocab != s_vocab or t_rows != s_rows:
        raise InvalidSpec(
            f"the student's vocabulary ({s_vocab} tokens, embedding rows {s_rows}) differs from the teacher's "
            f"({t_vocab} tokens, embedding rows {t_rows}); distillation needs a student that shares the "
            "teacher's tokenizer",
            details={"teacher_vocab_size": t_vocab, "student_vocab_size": s_vocab},
        )
    if student_tokenizer is not None and teacher_tokenizer is not None and student_tokenizer is not teacher_tokenizer:
        t_map, s_map = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        if t_map != s_map:
            differ = sorted(set(t_map.items()) ^ set(s_map.items()))[:5]
            raise InvalidSpec(
                f"the student's tokenizer maps tokens to other ids than the teacher's ({len(s_map)} vs {len(t_map)} "
                f"entries; e.g. {differ}); distillation needs a student that shares the teacher's tokenizer",
                details={"examples": [list(d) for d in differ]},
            )
        probe = "Hello World! Ünïcode café 1234 <tokens>"
        t_ids = teacher_tokenizer(probe)["input_ids"]
        s_ids = student_tokenizer(probe)["input_ids"]
        if t_ids != s_ids:
            raise InvalidSpec(
                f"the student's tokenizer splits text differently from the teacher's ({probe!r} -> {s_ids} vs "
                f"{t_ids}); its normalisation or special tokens differ",
                details={"probe": probe},
            )
    if t_task == "text-classification":
        t_labels, s_labels = teacher.config.num_labels, student.config.num_labels
        if t_labels != s_labels:
            raise InvalidSpec(
                f"the student has {s_labels} labels and the teacher {t_labels}; the label sets must match",
                details={"teacher_num_labels": t_labels, "student_num_labels": s_labels},
            )
        t_names = {int(k): str(v) for k, v in teacher.config.id2label.items()}
        s_names = {int(k): str(v) for k, v in student.config.id2label.items()}
        if t_names != s_names and not _generic_labels(s_names):
            raise InvalidSpec(
                f"the student's labels {s_names} differ from the teacher's {t_names}; the label sets (and their "
                "order) must match",
                details={"teacher_id2label": t_names, "student_id2label": s_names},
            )
    if t_task == "feature-extraction":
        t_width, s_width = _hidden_width(teacher), _hidden_width(student)
        if t_width != s_width:
            raise InvalidSpec(
                f"an embedding student must produce embeddings of the teacher's width ({t_width}), this one has "
                f"{s_width}",
                details={"teacher_width": t_width, "student_width": s_width},
            )


def _hidden_width(model: nn.Module) -> int:
    return int(getattr(model.config, "hidden_size", None) or model.config.dim)


# ---------------------------------------------------------------- losses


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over rows (Hinton et al. 2015).

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones as T changes.
    """
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _token_chunk_losses(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    targets: torch.Tensor | None,
    student_head: nn.Module,
    teacher_head: nn.Module | None,
    temperature: float,
) -> torch.Tensor:
    """Summed KD and CE of one chunk of positions: a tensor [kd_sum, ce_sum]."""
    logits = student_head(student_hidden).float()
    kd = ce = logits.new_zeros(())
    if teacher_hidden is not None and teacher_head is not None:
        with torch.no_grad():
            teacher_log_probs = F.log_softmax(teacher_head(teacher_hidden).float() / temperature, dim=-1)
        student_log_probs = F.log_softmax(logits / temperature, dim=-1)
        kd = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum") * temperature**2
    if targets is not None:
        ce = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return torch.stack([kd, ce])


def token_distillation_losses(
    student_hidden: torch.Tensor,
    student_head: nn.Module,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: nn.Module | None = None,
    targets: torch.Tensor | None = None,
    temperature: float = 2.0,
    chunk_size: int = 256,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Token-level soft-target KL and next-token cross-entropy over the vocabulary, in chunks of positions.

    The heads are applied here, ``chunk_size`` positions at a time, each chunk under activation
    checkpointing: its logits are freed after the forward pass and recomputed in the backward pass, so at
    most ``chunk_size x vocab`` logits (and their softmax) exist at once, whatever the sequence length.

    Args:
        student_hidden: [N, d] final hidden states of the N positions that count (already selected).
        student_head: the student's output projection (``get_output_embeddings()``).
        teacher_hidden: [N, d_t] the teacher's final hidden states at the same positions (no gradient).
        teacher_head: the teacher's output projection.
        targets: [N] next-token ids (-100: ignored) for the cross-entropy.
        temperature: softening of both distributions for the KL (which is scaled by T^2).
        chunk_size: positions per chunk.

    Returns:
        ``(kd, ce)``: means over the positions (over the non-ignored targets for ``ce``); None for a part
        not asked for (no teacher, no targets).
    """
    n = student_hidden.shape[0]
    with_teacher = teacher_hidden is not None and teacher_head is not None
    # "+ 0 * sum" keeps the result attached to the graph even when no position counts
    sums = torch.zeros(2, device=student_hidden.device) + 0.0 * student_hidden.float().sum()
    checkpointed = torch.is_grad_enabled() and student_hidden.requires_grad
    for start in range(0, n, chunk_size):
        end = min(n, start + chunk_size)
        args = (
            student_hidden[start:end],
            teacher_hidden[start:end] if with_teacher else None,
            targets[start:end] if targets is not None else None,
            student_head,
            teacher_head if with_teacher else None,
            temperature,
        )
        if checkpointed:
            sums = sums + activation_checkpoint(_token_chunk_losses, *args, use_reentrant=False)
        else:
            sums = sums + _token_chunk_losses(*args)
    kd = sums[0] / max(n, 1) if with_teacher else None
    ce = None
    if targets is not None:
        ce = sums[1] / (targets != -100).sum().clamp(min=1)
    return kd, ce


def hidden_alignment_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor | None,
    kind: Literal["cosine", "mse"],
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Mean over mapped layers of 1 - cosine (or the MSE) between student and teacher hidden states.

    ``*_states`` are ``output_hidden_states`` tuples (embeddings first, then one entry per layer); student
    layer i is compared with teacher layer ``layer_map[i]``, over real (unpadded) tokens only. ``projection``
    maps the student's width to the teacher's when they differ.
    """
    mask = None if attention_mask is None else attention_mask.float()
    losses = []
    for i, t_idx in enumerate(layer_map):
        s = student_states[i + 1].float()
        t = teacher_states[t_idx + 1].float()
        if projection is not None:
            s = projection(s)
        if kind == "cosine":
            per_token = 1 - F.cosine_similarity(s, t, dim=-1)
        else:
            per_token = (s - t).pow(2).mean(-1)
        if mask is None:
            losses.append(per_token.mean())
        else:
            losses.append((per_token * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(losses).mean()


def _even_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i -> teacher layer at the same relative depth (the last onto the last)."""
    return [max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def _num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def _lm_positions(batch: dict) -> torch.Tensor:
    """[B, L-1] positions whose next-token prediction counts: this token and the next are real, the next is no prompt."""
    mask = batch.get("attention_mask")
    ids = batch["input_ids"]
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    keep = real[:, :-1] & real[:, 1:]
    if "prompt_mask" in batch:
        keep = keep & ~batch["prompt_mask"][:, 1:].bool()
    return keep


def batch_loss(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: dict,
    *,
    task: Task,
    config: DistillConfig,
    layer_map: Sequence[int] | None = None,
    projection: nn.Module | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch and its parts (``kd``, ``ce``, ``hidden``, ``embedding``) as floats.

    Gold labels (``labels`` in the batch) give the cross-entropy part; with a teacher the loss is
    ``alpha * ce + (1 - alpha) * kd`` (just ``kd`` without labels), plus ``hidden_weight * hidden`` when
    ``config.hidden_loss`` is set; without a teacher it is ``ce`` alone.

    Raises:
        InvalidSpec: neither a teacher nor labels, an embedding model without a teacher.
    """
    has_labels = "labels" in batch
    if teacher is None and not has_labels:
        raise InvalidSpec("training without a teacher needs gold labels, and this batch has none")
    use_ce = has_labels and (teacher is None or config.alpha > 0)
    use_hidden = teacher is not None and config.hidden_loss is not None and config.hidden_weight > 0
    use_kd = teacher is not None and (config.alpha < 1 or not has_labels)
    inputs = _inputs(batch)
    parts: dict[str, torch.Tensor] = {}

    if task == "text-generation":
        s_out = student.base_model(**inputs, output_hidden_states=use_hidden)
        keep = _lm_positions(batch)
        s_hidden = s_out.last_hidden_state[:, :-1][keep]
        targets = batch["labels"][:, 1:][keep] if use_ce else None
        t_out = t_hidden = None
        if use_kd or use_hidden:
            with torch.no_grad():
                t_out = teacher.base_model(**inputs, output_hidden_states=use_hidden)
            t_hidden = t_out.last_hidden_state[:, :-1][keep]
        kd, ce = token_distillation_losses(
            s_hidden, student.get_output_embeddings(),
            teacher_hidden=t_hidden if use_kd else None,
            teacher_head=teacher.get_output_embeddings() if use_kd else None,
            targets=targets, temperature=config.temperature, chunk_size=config.kl_chunk_size,
        )
        if kd is not None:
            parts["kd"] = kd
        if ce is not None:
            parts["ce"] = ce
    elif task == "feature-extraction":
        if teacher is None:
            raise InvalidSpec("an embedding model has no labels to fine-tune on; distil it from a teacher")
        s_out = student(**inputs, output_hidden_states=use_hidden)
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=use_hidden)
        s_emb = mean_pool(s_out.last_hidden_state.float(), inputs.get("attention_mask"))
        t_emb = mean_pool(t_out.last_hidden_state.float(), inputs.get("attention_mask"))
        if config.embedding_loss == "cosine":
            parts["embedding"] = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
        else:
            parts["embedding"] = F.mse_loss(s_emb, t_emb)
    else:
        s_out = student(**inputs, output_hidden_states=use_hidden)
        s_logits = s_out.logits.float()
        t_out = None
        if use_kd or use_hidden:
            with torch.no_grad():
                t_out = teacher(**inputs, output_hidden_states=use_hidden)
        regression = s_logits.shape[-1] == 1
        if use_kd:
            t_logits = t_out.logits.float()
            parts["kd"] = F.mse_loss(s_logits, t_logits) if regression else soft_target_loss(
                s_logits, t_logits, config.temperature
            )
        if use_ce:
            labels = batch["labels"]
            parts["ce"] = (
                F.mse_loss(s_logits.squeeze(-1), labels.float()) if regression else F.cross_entropy(s_logits, labels)
            )
    if use_hidden:
        mapping = list(layer_map) if layer_map is not None else _even_layer_map(_num_layers(student), _num_layers(teacher))
        parts["hidden"] = hidden_alignment_loss(
            s_out.hidden_states, t_out.hidden_states, mapping, inputs.get("attention_mask"),
            config.hidden_loss, projection,
        )

    if teacher is None:
        loss = parts["ce"]
    elif task == "feature-extraction":
        loss = parts["embedding"]
    elif "ce" in parts and "kd" in parts:
        loss = config.alpha * parts["ce"] + (1 - config.alpha) * parts["kd"]
    elif "ce" in parts:  # alpha == 1
        loss = parts["ce"]
    else:
        loss = parts["kd"]
    if "hidden" in parts:
        loss = loss + config.hidden_weight * parts["hidden"]
    return loss, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> tuple[int, ...]:
    """The order of the examples in one epoch: a permutation fixed by (seed, epoch)."""
    if not shuffle:
        return tuple(range(n))
    return tuple(np.random.default_rng([seed, epoch]).permutation(n).tolist())


def _prompt_completion_batch(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> dict:
    """Causal-LM batch of prompt + completion with ``prompt_mask`` on the prompt tokens (right-padded)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids = (p + c)[:max_length]
        rows.append((ids, min(len(p), len(ids))))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    prompt_mask = torch.zeros_like(input_ids)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        prompt_mask[i, :n_prompt] = 1
    labels = input_ids.masked_fill((mask == 0) | (prompt_mask == 1), -100)
    return {"input_ids": input_ids, "attention_mask": mask, "prompt_mask": prompt_mask, "labels": labels}


def _make_batch(tokenizer, data: TextData, *, task: Task, label_config, max_length: int, with_labels: bool) -> dict:
    """One batch of ``data`` (already the rows of the batch, in order)."""
    if task == "text-generation" and data.pairs is not None:
        return _prompt_completion_batch(tokenizer, data.texts, data.pairs, max_length)
    return make_batches(
        tokenizer, data, task=task, config=label_config, batch_size=max(1, len(data)), max_length=max_length,
        with_labels=with_labels,
    )[0]


def check_training_data(
    train: TextData,
    tokenizer: PreTrainedTokenizerBase,
    config: DistillConfig,
    *,
    task: Task,
    model_config=None,
    eval_data: TextData | None = None,
) -> list[dict]:
    """Findings about the training data, before any training.

    Checks: empty and duplicate texts (and duplicates with conflicting labels), the label distribution and
    its imbalance, the share of inputs longer than ``max_length`` (truncated), batches of the first epoch's
    order that hold a single label, and evaluation texts that also occur in the training data.

    Args:
        train: the training data.
        tokenizer: the tokenizer the models read.
        config: batch size, max length, seed and shuffle of the run.
        task: the models' task.
        model_config: the config whose ``label2id``/``num_labels`` map the labels (classification).
        eval_data: the evaluation data, if any.

    Returns:
        ``[{"level": "info" | "warning" | "error", "check": name, "message": text}, ...]`` (also logged).

    Raises:
        DatasetError: no rows, only empty texts, labels the model does not know.
    """
    findings: list[dict] = []
    n = len(train)
    if n == 0:
        raise DatasetError(f"{train.source or 'the training data'} has no rows")
    empty = [i for i, t in enumerate(train.texts) if not t.strip()]
    if len(empty) == n:
        raise DatasetError(f"{train.source or 'the training data'}: every text is empty")
    if empty:
        findings.append(_finding(
            "warning", "empty_texts",
            f"{len(empty)} of {n} texts are empty (first at row {empty[0] + 1}); they teach the student nothing",
        ))
    keys = list(zip(train.texts, train.pairs or [None] * n, strict=True))
    counts = Counter(keys)
    duplicates = n - len(counts)
    if duplicates:
        level = "warning" if duplicates / n > 0.01 else "info"
        message = f"{duplicates} of {n} rows repeat an earlier text ({duplicates / n:.1%})"
        if train.labels is not None:
            seen: dict = {}
            for key, label in zip(keys, train.labels, strict=True):
                seen.setdefault(key, set()).add(str(label))
            conflicting = sum(1 for labels in seen.values() if len(labels) > 1)
            if conflicting:
                level = "warning"
                message += f"; {conflicting} texts appear with different labels"
        findings.append(_finding(level, "duplicate_texts", message))

    labels = None
    if task == "text-classification" and train.labels is not None and model_config is not None:
        labels = encode_labels(train, model_config)
        if isinstance(labels[0], float):
            labels = None  # regression: no classes to count
    if labels is not None:
        num_classes = max(int(getattr(model_config, "num_labels", 2)), max(labels) + 1)
        names = {int(k): str(v) for k, v in (getattr(model_config, "id2label", None) or {}).items()}
        distribution = Counter(labels)
        shown = ", ".join(f"{names.get(c, c)}: {distribution.get(c, 0)}" for c in range(num_classes))
        findings.append(_finding("info", "label_distribution", f"labels: {shown}"))
        present = [distribution[c] for c in range(num_classes) if distribution.get(c, 0)]
        missing = [names.get(c, str(c)) for c in range(num_classes) if not distribution.get(c, 0)]
        if len(present) == 1:
            findings.append(_finding(
                "warning", "label_imbalance",
                "every training example has the same label; the gold-label loss teaches nothing about the others",
            ))
        elif missing:
            findings.append(_finding(
                "warning", "label_imbalance", f"no training example has label(s) {', '.join(missing)}",
            ))
        elif max(present) / min(present) > 3:
            findings.append(_finding(
                "warning", "label_imbalance",
                f"the most common label is {max(present) / min(present):.1f}x as frequent as the rarest",
            ))

    sample = _epoch_order(n, config.seed, 0, True)[:5000]
    texts = [train.texts[i] for i in sample]
    pairs = [train.pairs[i] for i in sample] if train.pairs is not None else None
    lengths = [len(ids) for ids in tokenizer(texts, pairs, truncation=False)["input_ids"]]
    truncated = sum(1 for length in lengths if length > config.max_length)
    if truncated:
        share = truncated / len(lengths)
        findings.append(_finding(
            "warning" if share > 0.05 else "info", "truncation",
            f"{share:.1%} of the inputs are longer than max_length={config.max_length} tokens and are cut "
            f"(longest {max(lengths)})",
        ))

    if labels is not None and config.batch_size > 1 and len(set(labels)) > 1:
        order = _epoch_order(n, config.seed, 0, config.shuffle)
        batches = [order[i : i + config.batch_size] for i in range(0, n, config.batch_size)]
        single = sum(1 for b in batches if len(b) > 1 and len({labels[i] for i in b}) == 1)
        if single:
            hint = "turn shuffle on" if not config.shuffle else "the classes are very imbalanced"
            findings.append(_finding(
                "warning", "single_label_batches",
                f"{single} of {len(batches)} batches of the first epoch hold a single label ({hint}); such "
                "batches push the student towards one class",
            ))

    if eval_data is not None and len(eval_data):
        train_keys = set(keys)
        e_keys = zip(eval_data.texts, eval_data.pairs or [None] * len(eval_data), strict=True)
        overlap = sum(1 for key in e_keys if key in train_keys)
        if overlap:
            share = overlap / len(eval_data)
            findings.append(_finding(
                "warning" if share > 0.01 else "info", "eval_overlap",
                f"{overlap} of {len(eval_data)} evaluation texts ({share:.1%}) also occur in the training data; "
                "the metric overstates generalisation",
            ))
    return findings


def _initial_loss_findings(
    student: nn.Module, teacher: nn.Module | None, batch: dict, *, task: Task, config: DistillConfig
) -> list[dict]:
    """The first batch's loss against the chance level (-ln(1/C)) and against the teacher's own loss."""
    findings = []
    gold = dataclasses.replace(config, alpha=1.0, hidden_loss=None)
    with torch.no_grad():
        if "labels" in batch and task in ("text-classification", "text-generation"):
            if task == "text-classification":
                classes = int(student.config.num_labels)
                if classes < 2:
                    return findings
            else:
                classes = int(student.get_output_embeddings().weight.shape[0])
            chance = math.log(classes)
            _, s_parts = batch_loss(student, None, batch, task=task, config=gold)
            message = f"first batch: student cross-entropy {s_parts['ce']:.4f}, chance level ln({classes}) = {chance:.4f}"
            t_ce = None
            if teacher is not None:
                _, t_parts = batch_loss(teacher, None, batch, task=task, config=gold)
                t_ce = t_parts["ce"]
                message += f", teacher {t_ce:.4f}"
            findings.append(_finding("info", "initial_loss", message))
            if s_parts["ce"] > 3 * chance:
                findings.append(_finding(
                    "warning", "initial_loss",
                    f"the student starts at {s_parts['ce']:.3f}, far above chance ({chance:.3f}): it is confidently "
                    "wrong; check that the labels mean what the student's head was trained on",
                ))
            if t_ce is not None and t_ce > chance:
                hint = (
                    "do the data's labels mean what the teacher's label2id says?" if task == "text-classification"
                    else "is this text in the teacher's language and tokenizer?"
                )
                findings.append(_finding(
                    "warning", "teacher_loss",
                    f"the teacher does no better than chance on the first batch ({t_ce:.3f} > {chance:.3f}): {hint}",
                ))
        elif teacher is not None:
            loss, _ = batch_loss(student, teacher, batch, task=task, config=config)
            findings.append(_finding("info", "initial_loss", f"first batch: distillation loss {float(loss):.4f}"))
    return findings


# ---------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _cpu_copy(obj):
    """A detached CPU copy of a (nested) state dict, so later training steps cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _fingerprint(student: nn.Module, teacher: nn.Module | None, train: TextData, config: DistillConfig, task: str) -> dict:
    """What a checkpoint must have been written for: the same data, config, student shapes and teacher."""
    digest = hashlib.sha256()
    for i, text in enumerate(train.texts):
        digest.update(text.encode("utf-8", "replace") + b"\0")
        if train.pairs is not None:
            digest.update(train.pairs[i].encode("utf-8", "replace") + b"\0")
        if train.labels is not None:
            digest.update(str(train.labels[i]).encode() + b"\0")
    shapes = hashlib.sha256(
        json.dumps([(k, list(v.shape)) for k, v in student.state_dict().items()]).encode()
    ).hexdigest()
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_CHANGES}
    return {
        "task": task,
        "data": digest.hexdigest(),
        "rows": len(train),
        "student": shapes,
        "teacher": None if teacher is None else sum(p.numel() for p in teacher.parameters()),
        "config": settings,
    }


@dataclass
class _RunState:
    """Everything about a run's progress that a checkpoint holds besides tensors."""

    step: int = 0
    micro: int = 0  # micro-batches consumed since the start: epoch = micro // per_epoch, position = the rest
    best_metric: float | None = None
    best_step: int | None = None
    stale_evals: int = 0
    history: list = field(default_factory=list)
    health: list = field(default_factory=list)
    seconds: float = 0.0
    rolled_back: bool = False
    gradients_checked: bool = False
    plateau_noted: bool = False
    finished: bool = False
    stopped_because: str = ""


# ---------------------------------------------------------------- the loop


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _resolve_task(task: str | None, model: nn.Module) -> Task:
    task = task or model_task(model)
    if task == "sentence-similarity":
        task = "feature-extraction"
    if task not in ("text-classification", "text-generation", "feature-extraction"):
        raise InvalidSpec(
            f"unknown task {task!r}; distillation covers text-classification, text-generation and feature-extraction"
        )
    if task != model_task(model):
        raise InvalidSpec(f"task {task!r} does not match the model's head ({type(model).__name__})")
    return task


class _Run:
    """One training run: the optimizer and schedule, the data order, evaluation, checkpoints and health.

    Used by :func:`distill` (with a teacher) and :func:`finetune` (``teacher=None``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        tokenizer: PreTrainedTokenizerBase,
        train: TextData,
        eval_data: TextData | None,
        config: DistillConfig,
        *,
        task: Task | None,
        layer_map: Sequence[int] | None,
        checkpoint_dir: str | Path | None,
        eval_fn: EvalFn | None,
        stage: str,
    ) -> None:
        self.started = time.perf_counter()  # the wall-clock budget counts the set-up too
        config.validate()
        self.task = task = _resolve_task(task, student)
        if len(train) == 0:
            raise DatasetError(f"{train.source or 'the training data'} has no rows")
        self.student, self.teacher, self.tokenizer, self.train, self.config = student, teacher, tokenizer, train, config
        self.eval_fn, self.stage = eval_fn, stage
        self.label_config = (teacher or student).config
        self.use_labels = task == "text-generation" or (task == "text-classification" and train.labels is not None)
        if teacher is not None and config.alpha == 0:
            self.use_labels = False
        if teacher is None and not self.use_labels:
            raise InvalidSpec("fine-tuning without a teacher needs training data with gold labels")
        positions = getattr(student.config, "max_position_embeddings", None) or getattr(
            student.config, "n_positions", None
        )
        if positions is not None and config.max_length > positions:
            raise InvalidSpec(
                f"max_length {config.max_length} exceeds the student's {positions} positions; lower max_length",
                details={"field": "max_length"},
            )
        if layer_map is not None:
            layer_map = [int(i) for i in layer_map]
            if teacher is None or len(layer_map) != _num_layers(student) or not all(
                0 <= i < _num_layers(teacher) for i in layer_map
            ):
                raise InvalidSpec(
                    f"layer_map must name one teacher layer for each of the student's {_num_layers(student)} "
                    f"layers, got {layer_map}"
                )
        self.layer_map = layer_map
        self.eval_data = eval_data if eval_data is not None and len(eval_data) else None

        self.device = pick_device(config.device)
        student.to(self.device)
        if teacher is not None:
            teacher.to(self.device).eval()
        self.ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.ckdir is not None:
            self.ckdir.mkdir(parents=True, exist_ok=True)
        self.per_epoch = math.ceil(len(train) / config.batch_size)
        total = max(1, math.ceil(config.epochs * self.per_epoch) // config.grad_accum)
        self.total_steps = min(total, config.max_steps) if config.max_steps is not None else total
        self.max_seconds = config.max_minutes * 60 if config.max_minutes is not None else None

        set_seed(config.seed)  # before the projection is initialised
        self.projection = None
        if teacher is not None and config.hidden_loss is not None and config.hidden_weight > 0:
            if _hidden_width(student) != _hidden_width(teacher):
                self.projection = nn.Linear(_hidden_width(student), _hidden_width(teacher), bias=False)
                self.projection.to(self.device)
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        if self.projection is not None:
            named += [(f"projection.{n}", p) for n, p in self.projection.named_parameters()]
        self.trained = [p for _, p in named]
        groups = [
            {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0},  # biases and norms
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, round(config.warmup_ratio * self.total_steps), self.total_steps
        )
        self.fingerprint = _fingerprint(student, teacher, train, config, task)

        self.eval_batches = self.reference = None
        self.metric_name = "custom" if eval_fn is not None else None
        self.teacher_metric = None
        if self.eval_data is not None and eval_fn is None:
            eval_has_labels = task == "text-classification" and self.eval_data.labels is not None
            self.eval_batches = make_batches(
                tokenizer, self.eval_data, task=task, config=self.label_config, batch_size=config.batch_size,
                max_length=config.max_length, with_labels=eval_has_labels or task == "text-generation",
            )
            if task != "text-generation" and not eval_has_labels:
                if teacher is None:
                    raise InvalidSpec("evaluation data without labels needs a teacher to compare with (or eval_fn)")
                self.reference = predict(teacher, self.eval_batches)
            if teacher is not None:
                self.metric_name, self.teacher_metric = task_metric(teacher, self.eval_batches, self.reference)

        self.state = _RunState()
        self.memory_checkpoint: dict | None = None  # the last checkpoint, when there is no checkpoint folder
        # step -> CPU weights of an evaluated best; pruned at every checkpoint to the best that checkpoint
        # names, so a roll-back or a resumption finds the best weights of the state it returns to
        self.best_store: dict[int, dict] = {}
        self.resumed_from: int | None = None
        self.seconds_before = 0.0
        self.steps_at_start = 0

    # -------------------------------------------------------- data

    def batch_at(self, micro: int) -> dict:
        """Micro-batch number ``micro`` of the run: epoch ``micro // per_epoch``, in that epoch's seeded order."""
        epoch, position = divmod(micro, self.per_epoch)
        size = self.config.batch_size
        order = _epoch_order(len(self.train), self.config.seed, epoch, self.config.shuffle)
        rows = self.train.subset(list(order[position * size : (position + 1) * size]))
        batch = _make_batch(
            self.tokenizer, rows, task=self.task, label_config=self.label_config, max_length=self.config.max_length,
            with_labels=self.use_labels,
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    # -------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "run": dataclasses.asdict(self.state),
            "student": self.student.state_dict(),
            "projection": self.projection.state_dict() if self.projection is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
        }
        if self.ckdir is not None:
            _atomic_save(payload, self.ckdir / CHECKPOINT_FILE)
            for path in self.ckdir.glob("best-*.pt"):
                if path.name != f"best-{self.state.best_step}.pt":
                    path.unlink(missing_ok=True)
        else:
            self.memory_checkpoint = _cpu_copy(payload)
        for step in [s for s in self.best_store if s != self.state.best_step]:
            del self.best_store[step]

    def load_checkpoint(self) -> dict | None:
        if self.ckdir is None:
            return self.memory_checkpoint
        path = self.ckdir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise SlimformerError(f"the checkpoint {path} cannot be read: {err}") from err

    def restore(self, payload: dict) -> _RunState:
        """Load the tensors and RNG states of ``payload``; return its run state (not yet applied)."""
        self.student.load_state_dict(payload["student"])
        if self.projection is not None:
            self.projection.load_state_dict(payload["projection"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        _set_rng_state(payload["rng"])
        return _RunState(**payload["run"])

    def check_fingerprint(self, payload: dict) -> None:
        if payload.get("format") == CHECKPOINT_FORMAT and payload.get("fingerprint") == self.fingerprint:
            return
        old, new = payload.get("fingerprint") or {}, self.fingerprint
        differ = sorted(k for k in set(old) | set(new) if k != "config" and old.get(k) != new.get(k))
        differ += [f"config.{k}" for k in sorted(new["config"]) if old.get("config", {}).get(k) != new["config"][k]]
        raise InvalidSpec(
            f"the checkpoint in {self.ckdir} was written for another run (differs in: {', '.join(differ)}); "
            "use another checkpoint_dir or the same data, student and settings",
            details={"checkpoint_dir": str(self.ckdir), "differs": differ},
        )

    # -------------------------------------------------------- evaluation

    def evaluate(self) -> None:
        """Evaluate (when there is something to evaluate on), record the metric, keep the best weights."""
        if self.eval_fn is None and self.eval_batches is None:
            return
        if self.eval_fn is not None:
            value = float(self.eval_fn(self.student))
        else:
            self.metric_name, value = task_metric(self.student, self.eval_batches, self.reference)
        self.student.train()
        state = self.state
        state.history[-1]["metric"] = value
        if state.best_metric is not None and value <= state.best_metric:
            state.stale_evals += 1
            return
        state.best_metric, state.best_step, state.stale_evals = value, state.step, 0
        self.best_store[state.step] = _cpu_copy(self.student.state_dict())
        if self.ckdir is not None:
            _atomic_save(
                {"step": state.step, "metric": value, "student": self.best_store[state.step]},
                self.ckdir / f"best-{state.step}.pt",
            )

    # -------------------------------------------------------- the loop

    def start(self, on_progress: ProgressFn | None) -> bool:
        """Resume from a checkpoint, or check the data and the first batch and evaluate the initial student.

        Returns:
            True when the checkpoint is of a finished run (nothing left to train).
        """
        payload = self.load_checkpoint()
        if payload is not None:
            self.check_fingerprint(payload)
            self.state = self.restore(payload)
            self.resumed_from = self.state.step
            logger.info("resuming from the checkpoint in %s at step %d", self.ckdir, self.state.step)
            if on_progress is not None and not self.state.finished:
                on_progress(self.stage, self.state.step / self.total_steps, f"resuming at step {self.state.step}")
        else:
            if on_progress is not None:
                on_progress(self.stage, 0.0, "checking the data and the first batch")
            state = self.state
            state.health.extend(check_training_data(
                self.train, self.tokenizer, self.config, task=self.task, eval_data=self.eval_data,
                model_config=self.label_config if self.task == "text-classification" else None,
            ))
            self.student.eval()
            with self.autocast():
                state.health.extend(_initial_loss_findings(
                    self.student, self.teacher, self.batch_at(0), task=self.task, config=self.config
                ))
            state.history.append(
                {"step": 0, "loss": None, "grad_norm": None, "lr": 0.0, "metric": None, "seconds": self.elapsed()}
            )
            self.evaluate()
            state.seconds = self.elapsed()  # the checks count against the time budget too
            self.save_checkpoint()
        self.seconds_before, self.started, self.steps_at_start = self.state.seconds, time.perf_counter(), self.state.step
        return self.state.finished

    def stop_reason(self) -> str | None:
        state, config = self.state, self.config
        if state.step >= self.total_steps:
            return "max_steps" if config.max_steps is not None and self.total_steps == config.max_steps else "epochs"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return "max_minutes"
        if config.patience is not None and state.stale_evals >= config.patience:
            return "early_stopping"
        return None

    def cancel_if_asked(self, should_cancel: CancelFn | None) -> None:
        if should_cancel is None or not should_cancel():
            return
        self.state.seconds = self.elapsed()
        if self.ckdir is not None:
            self.save_checkpoint()  # the step in progress is dropped: the run resumes after the last whole step
        raise Cancelled(f"{self.stage} was cancelled at step {self.state.step}", details={"step": self.state.step})

    def train_step(self, should_cancel: CancelFn | None) -> None:
        """One optimizer step over ``grad_accum`` micro-batches, or a roll-back when something is not finite."""
        state, config = self.state, self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, bad = 0.0, None
        for k in range(config.grad_accum):
            if k:
                self.cancel_if_asked(should_cancel)
            batch = self.batch_at(state.micro + k)
            with self.autocast():
                loss, _ = batch_loss(
                    self.student, self.teacher, batch, task=self.task, config=config, layer_map=self.layer_map,
                    projection=self.projection,
                )
            if not torch.isfinite(loss):
                bad = "loss"
                break
            (loss / config.grad_accum).backward()
            loss_value += loss.detach().item() / config.grad_accum
        grad_norm = None
        if bad is None:
            if not state.gradients_checked:
                state.gradients_checked = True
                state.health.extend(_gradient_findings(self.student, self.task))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trained, config.max_grad_norm))
            if not math.isfinite(grad_norm):
                bad = "gradients"
        if bad is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.roll_back(bad)
            return
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        state.micro += config.grad_accum
        state.history.append({
            "step": state.step, "loss": loss_value, "grad_norm": grad_norm, "lr": lr, "metric": None,
            "seconds": self.elapsed(),
        })
        if state.step % config.eval_every == 0 or state.step >= self.total_steps:
            self.evaluate()
        _note_plateau(state, max(10, min(100, self.total_steps // 10)))
        state.seconds = self.elapsed()
        if state.step % config.checkpoint_every == 0:
            self.save_checkpoint()

    def roll_back(self, what: str) -> None:
        """Return to the last checkpoint with half the learning rate, once; a second time is an error."""
        state = self.state
        if state.rolled_back:
            message = (
                f"the {what} became NaN or infinite again at step {state.step + 1}, after a roll-back with the "
                "learning rate halved; stopping. Lower learning_rate, check the data, or train in float32"
            )
            state.health.append(_finding("error", "non_finite", message))
            raise SlimformerError(message, details={"step": state.step + 1, "check": "non_finite"})
        bad_step = state.step + 1
        restored = self.restore(self.load_checkpoint())
        # findings and the first-step gradient check are about the whole run, not the state returned to
        restored.health, restored.gradients_checked = state.health, state.gradients_checked
        restored.rolled_back = True
        self.state = restored
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
            group["initial_lr"] *= 0.5
        self.scheduler.base_lrs = [lr * 0.5 for lr in self.scheduler.base_lrs]
        restored.health.append(_finding(
            "warning", "non_finite",
            f"the {what} became NaN or infinite at step {bad_step}; rolled back to step {restored.step} and halved "
            "the learning rate",
        ))
        self.save_checkpoint()

    def progress(self) -> tuple[float, str]:
        state, elapsed = self.state, self.elapsed()
        fraction = state.step / self.total_steps
        remaining = (self.total_steps - state.step) * elapsed / max(1, state.step)
        if self.max_seconds is not None:
            fraction = max(fraction, min(1.0, elapsed / self.max_seconds))
            remaining = min(remaining, max(0.0, self.max_seconds - elapsed))
        message = f"step {state.step}/{self.total_steps} loss {state.history[-1]['loss']:.4f}"
        metrics = [h["metric"] for h in state.history if h["metric"] is not None]
        if metrics:
            message += f" {self.metric_name or 'metric'} {metrics[-1]:.4f}"
        message += f" ETA {_fmt_seconds(remaining)}"
        return min(1.0, fraction), message

    def run(self, on_progress: ProgressFn | None, should_cancel: CancelFn | None) -> DistillResult:
        if not self.start(on_progress):
            self.student.train()
            while (stop := self.stop_reason()) is None:
                self.cancel_if_asked(should_cancel)
                self.train_step(should_cancel)
                if on_progress is not None and self.state.history[-1]["loss"] is not None:
                    on_progress(self.stage, *self.progress())
            self.state.stopped_because = stop
            if self.state.history[-1]["metric"] is None and self.state.step > 0:
                self.evaluate()  # stopped by time or patience between evaluations
            self.state.seconds = self.elapsed()
            self.state.finished = True
            if self.ckdir is not None:
                self.save_checkpoint()
            logger.info(
                "%s stopped after %d steps (%s) in %.1fs", self.stage, self.state.step, stop, self.state.seconds
            )
        return self.finish()

    def finish(self) -> DistillResult:
        """Load the best evaluated weights into the student and describe the run."""
        state = self.state
        if state.best_step is not None:
            weights = self.best_store.get(state.best_step)
            if weights is None:
                path = self.ckdir / f"best-{state.best_step}.pt"
                weights = torch.load(path, map_location="cpu", weights_only=True)["student"]
            self.student.load_state_dict(weights)
            logger.info(
                "restored the best student (step %d, %s %.4f)", state.best_step, self.metric_name, state.best_metric
            )
        self.student.eval()
        return DistillResult(
            student=self.student, history=state.history, best_metric=state.best_metric, best_step=state.best_step,
            metric_name=self.metric_name, teacher_metric=self.teacher_metric, steps=state.step,
            seconds=state.seconds, health=state.health, resumed_from_step=self.resumed_from,
            stopped_because=state.stopped_because,
        )


def _gradient_findings(student: nn.Module, task: str) -> list[dict]:
    """After the first backward pass: parameters that are frozen, or that receive no (or only zero) gradient."""
    findings = []
    frozen = [n for n, p in student.named_parameters() if not p.requires_grad]
    if frozen:
        findings.append(_finding(
            "info", "frozen_parameters",
            f"{len(frozen)} parameter tensors are frozen and not trained: {', '.join(frozen[:5])}"
            + (" ..." if len(frozen) > 5 else ""),
        ))
    unused = [
        n for n, p in student.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.detach().abs().sum() > 0))
    ]
    if task == "feature-extraction":  # mean pooling never reads a pooler
        pooler = [n for n in unused if ".pooler." in f".{n}"]
        unused = [n for n in unused if n not in pooler]
        if pooler:
            findings.append(_finding("info", "unused_parameters", f"mean pooling does not use {', '.join(pooler)}"))
    if unused:
        findings.append(_finding(
            "warning", "unused_parameters",
            f"{len(unused)} trainable parameter tensors got no gradient on the first step (unused by the loss): "
            f"{', '.join(unused[:5])}" + (" ..." if len(unused) > 5 else ""),
        ))
    return findings


def _note_plateau(state: _RunState, window: int) -> None:
    """Note once when the mean training loss improved by less than 1% over two windows in a row."""
    if state.plateau_noted or state.step < 3 * window or state.step % window:
        return
    losses = [h["loss"] for h in state.history if h["loss"] is not None]
    means = [sum(losses[-(i + 1) * window : len(losses) - i * window]) / window for i in range(3)]
    latest, middle, oldest = means
    if latest > middle * 0.99 and middle > oldest * 0.99:
        state.plateau_noted = True
        state.health.append(_finding(
            "info", "loss_plateau",
            f"the training loss has stopped falling: mean {oldest:.4f} -> {middle:.4f} -> {latest:.4f} over the "
            f"last {3 * window} steps (to step {state.step})",
        ))


def distill(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: TextData,
    eval: TextData | None = None,
    config: DistillConfig | None = None,
    *,
    task: Task | None = None,
    layer_map: Sequence[int] | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    eval_fn: EvalFn | None = None,
) -> DistillResult:
    """Train ``student`` (in place) to imitate ``teacher`` on ``train``.

    Before training: :func:`check_student_compatible` (another vocabulary or label set is refused here),
    :func:`check_training_data`, and the first batch's loss against chance and against the teacher. Then the
    loop of the module docstring; the best evaluated weights are loaded into the student at the end.
    With ``checkpoint_dir``, a checkpoint is written there every ``checkpoint_every`` steps (and on
    cancellation), and a later call with the same arguments resumes from it and ends with the same weights
    as an uninterrupted run; a call after the run finished returns its result without training.

    Args:
        teacher: the model to imitate (kept in eval mode, never updated).
        student: the model to train: a layer-dropped or pruned copy, or a smaller model of the same head.
        tokenizer: the teacher's tokenizer; both models read its ids.
        train: training texts (labels optional: the teacher labels). For causal LMs, ``pairs`` are read as
            completions of the ``texts`` prompts, and only completion tokens count in the loss.
        eval: evaluation data: accuracy with labels, agreement with the teacher without (classification),
            next-token accuracy (causal LM), cosine to the teacher's embeddings (embedding models).
        config: :class:`DistillConfig` (defaults when None).
        task: the models' task; inferred from the student's head when None.
        layer_map: for hidden-state alignment, the teacher layer of each student layer (the kept indices of
            :func:`make_layer_dropped_student`); evenly spread by depth when None.
        student_tokenizer: the student's own tokenizer, checked against ``tokenizer``.
        checkpoint_dir: folder for checkpoints and resumption.
        on_progress: ``on_progress("distilling", fraction, message)`` after every step.
        should_cancel: checked between steps (and micro-batches); true raises :class:`Cancelled`.
        eval_fn: ``eval_fn(student) -> float`` (higher is better) instead of the built-in metric.

    Returns:
        :class:`DistillResult`.

    Raises:
        InvalidSpec: an incompatible student, bad settings, a checkpoint written for another run.
        DatasetError: empty data, labels the teacher does not know.
        Cancelled: ``should_cancel`` returned true.
        SlimformerError: the loss or gradients became NaN/infinite twice (after one roll-back).

    Example:
        >>> student, kept = make_layer_dropped_student(teacher, 3)  # doctest: +SKIP
        >>> result = distill(teacher, student, tokenizer, train, dev, DistillConfig(hidden_loss="cosine"),
        ...                  layer_map=kept, checkpoint_dir="runs/ckpt")  # doctest: +SKIP
    """
    config = config or DistillConfig()
    check_student_compatible(teacher, student, tokenizer, student_tokenizer)
    run = _Run(
        student, teacher, tokenizer, train, eval, config, task=task, layer_map=layer_map,
        checkpoint_dir=checkpoint_dir, eval_fn=eval_fn, stage="distilling",
    )
    if model_task(teacher) == "text-classification":
        if _generic_labels({int(k): v for k, v in student.config.id2label.items()}):  # a fresh head
            student.config.id2label = {int(k): str(v) for k, v in teacher.config.id2label.items()}
            student.config.label2id = {v: k for k, v in student.config.id2label.items()}
    return run.run(on_progress, should_cancel)


def finetune(
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: TextData,
    eval: TextData | None = None,
    config: DistillConfig | None = None,
    *,
    task: Task | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    eval_fn: EvalFn | None = None,
) -> DistillResult:
    """Train ``student`` on gold labels alone: the loop of :func:`distill` with no teacher (no teacher forward).

    The baseline distillation is measured against. ``temperature``, ``alpha`` and the hidden-state loss of
    ``config`` do not apply; everything else (budget, schedule, evaluation, checkpoints, health) does.

    Args:
        student: the model to train, in place.
        tokenizer: its tokenizer.
        train: training data with labels (classification) or text (causal LM).
        eval: evaluation data with labels (classification) or text (causal LM).
        config: :class:`DistillConfig` (defaults when None).
        task: inferred from the student's head when None.
        checkpoint_dir: folder for checkpoints and resumption.
        on_progress: ``on_progress("fine-tuning", fraction, message)`` after every step.
        should_cancel: checked between steps; true raises :class:`Cancelled`.
        eval_fn: ``eval_fn(student) -> float`` instead of the built-in metric.

    Returns:
        :class:`DistillResult` (``teacher_metric`` is None).

    Raises:
        InvalidSpec: data without labels, an embedding model (nothing to learn without a teacher).
        DatasetError: empty data, unknown labels.
        Cancelled: ``should_cancel`` returned true.
        SlimformerError: the loss or gradients became NaN/infinite twice.
    """
    config = dataclasses.replace(config or DistillConfig(), alpha=1.0, hidden_loss=None)
    if model_task(student) == "feature-extraction":
        raise InvalidSpec("an embedding model has no labels to fine-tune on; distil it from a teacher instead")
    run = _Run(
        student, None, tokenizer, train, eval, config, task=task, layer_map=None, checkpoint_dir=checkpoint_dir,
        eval_fn=eval_fn, stage="fine-tuning",
    )
    return run.run(on_progress, should_cancel)
