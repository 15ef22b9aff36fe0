"""The training loss of one batch: gold labels, soft targets and hidden states, combined per task.

Classification: ``alpha * CE(student, gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)``,
or KD alone without gold labels. Causal LMs: the same per token (see
:mod:`slimformer.distill.losses.kl`), padding and prompt positions excluded. Embedding models:
``1 - cosine`` (or MSE) between mean-pooled student and teacher embeddings. The hidden-state
alignment of :mod:`slimformer.distill.losses.hidden` is added on top when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimformer.distill.config import DistillConfig
from slimformer.distill.losses.hidden import _even_layer_map, _num_layers, hidden_alignment_loss
from slimformer.distill.losses.kl import soft_target_loss, token_distillation_losses
from slimformer.errors import InvalidSpec
from slimformer.models import Task, mean_pool


def _inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def _lm_positions(batch: dict) -> torch.Tensor:
    """[B, L-1] positions whose next-token prediction counts.

    This token and the next are real, and the next is no prompt.
    """
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
    """The training loss of one batch and its parts (``kd``, ``ce``, ``hidden``, ``embedding``) as
    floats.

    Gold labels (``labels`` in the batch) give the cross-entropy part; with a teacher the loss is
    ``alpha * ce + (1 - alpha) * kd`` (just ``kd`` without labels), plus ``hidden_weight * hidden``
    when ``config.hidden_loss`` is set; without a teacher it is ``ce`` alone.

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
    if task == "text-generation":
        parts, s_out, t_out = _lm_parts(
            student,
            teacher,
            batch,
            inputs,
            config,
            use_ce=use_ce,
            use_kd=use_kd,
            use_hidden=use_hidden,
        )
    elif task == "feature-extraction":
        parts, s_out, t_out = _embedding_parts(
            student, teacher, inputs, config, use_hidden=use_hidden
        )
    else:
        parts, s_out, t_out = _classification_parts(
            student,
            teacher,
            batch,
            inputs,
            config,
            use_ce=use_ce,
            use_kd=use_kd,
            use_hidden=use_hidden,
        )
    if use_hidden:
        parts["hidden"] = _hidden_part(
            student, teacher, s_out, t_out, inputs, config, layer_map, projection
        )
    loss = _combine(parts, teacher, task, config)
    return loss, {k: float(v.detach()) for k, v in parts.items()}


# The parts of each task: ``(parts, student_output, teacher_output)``, the outputs for the
# hidden-state part (the teacher's is None when it was not run).
_Parts = tuple[dict[str, torch.Tensor], Any, Any]


def _lm_parts(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: dict,
    inputs: dict,
    config: DistillConfig,
    *,
    use_ce: bool,
    use_kd: bool,
    use_hidden: bool,
) -> _Parts:
    """A causal LM's per-token ``kd`` and ``ce``, over the positions that count."""
    parts: dict[str, torch.Tensor] = {}
    # no key/value cache: training reads each sequence once
    s_out = student.base_model(**inputs, output_hidden_states=use_hidden, use_cache=False)
    keep = _lm_positions(batch)
    s_hidden = s_out.last_hidden_state[:, :-1][keep]
    targets = batch["labels"][:, 1:][keep] if use_ce else None
    t_out = t_hidden = None
    if use_kd or use_hidden:
        with torch.no_grad():
            t_out = teacher.base_model(**inputs, output_hidden_states=use_hidden, use_cache=False)
        t_hidden = t_out.last_hidden_state[:, :-1][keep]
    kd, ce = token_distillation_losses(
        s_hidden,
        student.get_output_embeddings(),
        teacher_hidden=t_hidden if use_kd else None,
        teacher_head=teacher.get_output_embeddings() if use_kd else None,
        targets=targets,
        temperature=config.temperature,
        chunk_size=config.kl_chunk_size,
    )
    if kd is not None:
        parts["kd"] = kd
    if ce is not None:
        parts["ce"] = ce
    return parts, s_out, t_out


def _embedding_parts(
    student: nn.Module,
    teacher: nn.Module | None,
    inputs: dict,
    config: DistillConfig,
    *,
    use_hidden: bool,
) -> _Parts:
    """An embedding model's ``embedding`` part: 1 - cosine (or MSE) of the mean-pooled outputs.

    Raises:
        InvalidSpec: no teacher.
    """
    if teacher is None:
        raise InvalidSpec(
            "an embedding model has no labels to fine-tune on; distil it from a teacher"
        )
    s_out = student(**inputs, output_hidden_states=use_hidden)
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=use_hidden)
    s_emb = mean_pool(s_out.last_hidden_state.float(), inputs.get("attention_mask"))
    t_emb = mean_pool(t_out.last_hidden_state.float(), inputs.get("attention_mask"))
    if config.embedding_loss == "cosine":
        embedding = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
    else:
        embedding = F.mse_loss(s_emb, t_emb)
    return {"embedding": embedding}, s_out, t_out


def _classification_parts(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: dict,
    inputs: dict,
    config: DistillConfig,
    *,
    use_ce: bool,
    use_kd: bool,
    use_hidden: bool,
) -> _Parts:
    """A classifier's ``kd`` (soft targets) and ``ce`` (gold labels); MSE for both with a single
    output (regression).
    """
    parts: dict[str, torch.Tensor] = {}
    s_out = student(**inputs, output_hidden_states=use_hidden)
    s_logits = s_out.logits.float()
    t_out = None
    if use_kd or use_hidden:
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=use_hidden)
    regression = s_logits.shape[-1] == 1
    if use_kd:
        t_logits = t_out.logits.float()
        if regression:
            parts["kd"] = F.mse_loss(s_logits, t_logits)
        else:
            parts["kd"] = soft_target_loss(s_logits, t_logits, config.temperature)
    if use_ce:
        labels = batch["labels"]
        if regression:
            parts["ce"] = F.mse_loss(s_logits.squeeze(-1), labels.float())
        else:
            parts["ce"] = F.cross_entropy(s_logits, labels)
    return parts, s_out, t_out


def _hidden_part(
    student: nn.Module,
    teacher: nn.Module,
    s_out,
    t_out,
    inputs: dict,
    config: DistillConfig,
    layer_map: Sequence[int] | None,
    projection: nn.Module | None,
) -> torch.Tensor:
    """The alignment of mapped hidden states (``layer_map``, evenly spread by depth when None)."""
    if layer_map is not None:
        mapping = list(layer_map)
    else:
        mapping = _even_layer_map(_num_layers(student), _num_layers(teacher))
    return hidden_alignment_loss(
        s_out.hidden_states,
        t_out.hidden_states,
        mapping,
        inputs.get("attention_mask"),
        config.hidden_loss,
        projection,
    )


def _combine(
    parts: dict[str, torch.Tensor], teacher: nn.Module | None, task: Task, config: DistillConfig
) -> torch.Tensor:
    """The training loss from its parts."""
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
    return loss
