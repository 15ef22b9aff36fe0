"""Students for distillation: layer-dropped copies of the teacher, and checks on named students.

A layer-dropped copy (:func:`make_layer_dropped_student`) keeps ``k`` of the teacher's layers,
evenly spaced or ranked by :func:`score_layers` (the gradient trick of Michel et al. that
:mod:`slimformer.importance` uses for heads, applied to a gate on each layer's residual update). A
student the user names is checked by :func:`check_student_compatible` before any training; a
pruned teacher needs nothing from here, it is just the student passed in.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.architectures import ModelAdapter, keep_layers
from slimformer.distill.config import CancelFn, DistillConfig
from slimformer.distill.losses.hidden import _num_layers
from slimformer.errors import Cancelled, InvalidSpec
from slimformer.importance import compute_loss
from slimformer.models import model_task

logger = logging.getLogger(__name__)

LayerStrategy = Literal["even", "importance", "block_influence"]


def score_layers(
    model: nn.Module,
    batches: Sequence[dict],
    *,
    should_cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Importance of every layer: E |dL/dg| of a gate ``g`` on the layer's residual update.

    Each layer's output becomes ``out + (g - 1) * (out - in)``, which is the layer's own output at
    g = 1, so scoring changes nothing the model computes. The loss is the task loss when the batches
    carry labels and the model has a task head, otherwise slimformer's label-free loss against the
    model's own outputs (see :mod:`slimformer.importance`).

    Args:
        model: a model of a supported family; left unchanged (its ``requires_grad`` flags are
            restored).
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

    has_head = model_task(model) != "feature-extraction"
    kind = "task" if "labels" in batches[0] and has_head else "label_free"
    was_training = model.training
    requires = {p: p.requires_grad for p in model.parameters()}
    handles = [
        layer.register_forward_hook(
            lambda m, a, k, o, gate=gate: gate_hook(m, a, k, o, gate), with_kwargs=True
        )
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

    The last layer stays because the task head reads its output: on minilm-l6-sst2, layers [1, 3, 5]
    kept 79.2% validation accuracy before any training, [0, 3, 5] 76.2% and [0, 2, 4] 51.0%.
    """
    return [math.floor((i + 1) * num_layers / keep + 0.5) - 1 for i in range(keep)]


def _scored_layers(
    teacher: nn.Module,
    keep: int,
    strategy: str,
    batches: Sequence[dict],
    should_cancel: CancelFn | None,
) -> list[int]:
    """The ``keep`` layers a scored strategy keeps (see :func:`make_layer_dropped_student`)."""
    from slimformer.importance import block_influence
    from slimformer.pruning.depth import plan_depth

    n = ModelAdapter(teacher).num_layers
    if strategy == "importance":
        scores = score_layers(teacher, batches, should_cancel=should_cancel)
        order = torch.argsort(scores, descending=True, stable=True)
        kept = sorted(int(i) for i in order[:keep])
    else:
        # as a depth-only prune job plans it (its uniform layout protects no layer)
        scores = block_influence(teacher, batches, should_cancel=should_cancel)
        dropped = set(plan_depth(scores, n - keep))
        kept = [i for i in range(n) if i not in dropped]
    logger.info("layer scores %s; keeping layers %s", [round(float(v), 6) for v in scores], kept)
    return kept


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
    ``LlamaConfig`` with its ``layer_types`` cut to match, ...), so ``save_pretrained`` writes a
    folder that stock ``AutoModel...from_pretrained`` loads without remote code (a per-layer pruned
    teacher keeps its per-layer format and its ``trust_remote_code`` requirement). Pass the kept
    indices to :func:`distill` as ``layer_map`` to align each student layer with the teacher layer
    it came from.

    Args:
        teacher: a model of a supported family (any head); it is not modified.
        num_layers: layers to keep, 1 to the teacher's count.
        strategy: ``even`` keeps every (teacher layers / ``num_layers``)-th layer, ending with the
            last; ``importance`` keeps the ``num_layers`` layers with the highest
            :func:`score_layers` scores; ``block_influence`` keeps what depth pruning keeps
            (:func:`slimformer.pruning.plan_depth` on ShortGPT's block influence), so
            distillation starts where ``prune --layers`` ends.
        calibration_batches: tokenised batches for ``importance`` and ``block_influence``.
        should_cancel: checked between calibration batches.

    Returns:
        ``(student, kept_layer_indices)``; the student is in eval mode on the teacher's device.

    Raises:
        InvalidSpec: a layer count out of range, an unknown strategy, ``importance`` without
            batches.
        UnsupportedArchitecture: a family slimformer has no adapter for.

    Example:
        >>> student, kept = make_layer_dropped_student(teacher, 3)  # doctest: +SKIP
        >>> result = distill(teacher, student, tokenizer, train, layer_map=kept)  # doctest: +SKIP
    """
    n = ModelAdapter(teacher).num_layers
    if not 1 <= num_layers <= n:
        raise InvalidSpec(
            f"a layer-dropped student keeps between 1 and {n} layers of this teacher, "
            f"got {num_layers}",
            details={"field": "num_layers"},
        )
    if strategy == "even":
        kept = _evenly_spaced(n, num_layers)
    elif strategy in ("importance", "block_influence"):
        if not calibration_batches:
            raise InvalidSpec(
                f"the {strategy} strategy needs calibration_batches to score the layers"
            )
        kept = _scored_layers(teacher, num_layers, strategy, calibration_batches, should_cancel)
    else:
        raise InvalidSpec(
            f"unknown layer strategy {strategy!r}; choose 'even', 'importance' or 'block_influence'"
        )
    student = copy.deepcopy(teacher)
    keep_layers(student, kept)
    return student.eval(), kept


def _generic_labels(id2label: dict) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


def _hidden_width(model: nn.Module) -> int:
    return int(getattr(model.config, "hidden_size", None) or model.config.dim)


def check_student_compatible(
    teacher: nn.Module,
    student: nn.Module,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Refuse a student that cannot learn from this teacher: another head, vocabulary or label set.

    Both models read the ids of the teacher's tokenizer and the student imitates the teacher's
    outputs, so they must agree on the task head, the vocabulary (size, and the tokenizer's
    token -> id map and normalisation when a student tokenizer is given) and, for classification,
    the labels. A student whose labels are only generic ``LABEL_i`` names with the teacher's count
    is accepted (a fresh head). Embedding students must also have the teacher's width, since their
    embeddings replace the teacher's.

    Args:
        teacher: the model that labels.
        student: the model that learns.
        teacher_tokenizer: the tokenizer both models will read.
        student_tokenizer: the tokenizer the student was trained with, if it has its own.

    Raises:
        InvalidSpec: naming the first mismatch, with both values.
    """
    t_task = model_task(teacher)
    s_task = model_task(student)
    if t_task != s_task:
        raise InvalidSpec(
            f"the student is a {s_task} model ({type(student).__name__}) and the teacher a "
            f"{t_task} model ({type(teacher).__name__}); give a student with the teacher's kind "
            "of head",
            details={"teacher_task": t_task, "student_task": s_task},
        )
    t_vocab = getattr(teacher.config, "vocab_size", None)
    s_vocab = getattr(student.config, "vocab_size", None)
    t_rows = teacher.get_input_embeddings().num_embeddings
    s_rows = student.get_input_embeddings().num_embeddings
    if t_vocab != s_vocab or t_rows != s_rows:
        raise InvalidSpec(
            f"the student's vocabulary ({s_vocab} tokens, embedding rows {s_rows}) differs from "
            f"the teacher's ({t_vocab} tokens, embedding rows {t_rows}); distillation needs a "
            "student that shares the teacher's tokenizer",
            details={"teacher_vocab_size": t_vocab, "student_vocab_size": s_vocab},
        )
    own_tokenizer = student_tokenizer is not None and teacher_tokenizer is not None
    if own_tokenizer and student_tokenizer is not teacher_tokenizer:
        _check_same_tokenizer(teacher_tokenizer, student_tokenizer)
    if t_task == "text-classification":
        _check_same_labels(teacher, student)
    if t_task == "feature-extraction":
        t_width = _hidden_width(teacher)
        s_width = _hidden_width(student)
        if t_width != s_width:
            raise InvalidSpec(
                f"an embedding student must produce embeddings of the teacher's width ({t_width}), "
                f"this one has {s_width}",
                details={"teacher_width": t_width, "student_width": s_width},
            )


def _check_same_tokenizer(
    teacher_tokenizer: PreTrainedTokenizerBase, student_tokenizer: PreTrainedTokenizerBase
) -> None:
    """The part of :func:`check_student_compatible` about a student's own tokenizer."""
    t_map = teacher_tokenizer.get_vocab()
    s_map = student_tokenizer.get_vocab()
    if t_map != s_map:
        differ = sorted(set(t_map.items()) ^ set(s_map.items()))[:5]
        raise InvalidSpec(
            f"the student's tokenizer maps tokens to other ids than the teacher's ({len(s_map)} vs "
            f"{len(t_map)} entries; e.g. {differ}); distillation needs a student that shares the "
            "teacher's tokenizer",
            details={"examples": [list(d) for d in differ]},
        )
    probe = "Hello World! Ünïcode café 1234 <tokens>"
    t_ids = teacher_tokenizer(probe)["input_ids"]
    s_ids = student_tokenizer(probe)["input_ids"]
    if t_ids != s_ids:
        raise InvalidSpec(
            f"the student's tokenizer splits text differently from the teacher's ({probe!r} -> "
            f"{s_ids} vs {t_ids}); its normalisation or special tokens differ",
            details={"probe": probe},
        )


def _check_same_labels(teacher: nn.Module, student: nn.Module) -> None:
    """The part of :func:`check_student_compatible` about a classifier's label set."""
    t_labels = teacher.config.num_labels
    s_labels = student.config.num_labels
    if t_labels != s_labels:
        raise InvalidSpec(
            f"the student has {s_labels} labels and the teacher {t_labels}; the label sets must "
            "match",
            details={"teacher_num_labels": t_labels, "student_num_labels": s_labels},
        )
    t_names = {int(k): str(v) for k, v in teacher.config.id2label.items()}
    s_names = {int(k): str(v) for k, v in student.config.id2label.items()}
    if t_names != s_names and not _generic_labels(s_names):
        raise InvalidSpec(
            f"the student's labels {s_names} differ from the teacher's {t_names}; the label sets "
            "(and their order) must match",
            details={"teacher_id2label": t_names, "student_id2label": s_names},
        )


def _check_run_fit(
    student: nn.Module,
    teacher: nn.Module | None,
    config: DistillConfig,
    layer_map: Sequence[int] | None,
) -> list[int] | None:
    """Refuse a ``max_length`` beyond the student's positions, or a ``layer_map`` that does not fit.

    Returns:
        ``layer_map`` as a list of ints (None stays None).
    """
    positions = getattr(student.config, "max_position_embeddings", None) or getattr(
        student.config, "n_positions", None
    )
    if positions is not None and config.max_length > positions:
        raise InvalidSpec(
            f"max_length {config.max_length} exceeds the student's {positions} positions; "
            "lower max_length",
            details={"field": "max_length"},
        )
    if layer_map is not None:
        layer_map = [int(i) for i in layer_map]
        if (
            teacher is None
            or len(layer_map) != _num_layers(student)
            or not all(0 <= i < _num_layers(teacher) for i in layer_map)
        ):
            raise InvalidSpec(
                "layer_map must name one teacher layer for each of the student's "
                f"{_num_layers(student)} layers, got {layer_map}"
            )
    return layer_map
