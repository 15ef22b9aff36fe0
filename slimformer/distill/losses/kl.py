"""Soft-target KL losses on logits (Hinton et al. 2015), whole or in chunks of positions.

:func:`soft_target_loss` compares two sets of logits that already exist (a classifier's).
:func:`token_distillation_losses` is the causal-LM variant: it applies the output heads itself, a
chunk of positions at a time under activation checkpointing, so that a large vocabulary never needs
all of a batch's logits at once; it also gives the next-token cross-entropy from the same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


def soft_target_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over rows (Hinton et al.
    2015).

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
            teacher_logits = teacher_head(teacher_hidden).float()
            teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
        student_log_probs = F.log_softmax(logits / temperature, dim=-1)
        kd = F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="sum")
        kd = kd * temperature**2
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
    """Token-level soft-target KL and next-token cross-entropy over the vocabulary, in chunks of
    positions.

    The heads are applied here, ``chunk_size`` positions at a time, each chunk under activation
    checkpointing: its logits are freed after the forward pass and recomputed in the backward pass,
    so at most ``chunk_size x vocab`` logits (and their softmax) exist at once, whatever the
    sequence length.

    Args:
        student_hidden: [N, d] final hidden states of the N positions that count (already selected).
        student_head: the student's output projection (``get_output_embeddings()``).
        teacher_hidden: [N, d_t] the teacher's final hidden states at the same positions (no
            gradient).
        teacher_head: the teacher's output projection.
        targets: [N] next-token ids (-100: ignored) for the cross-entropy.
        temperature: softening of both distributions for the KL (which is scaled by T^2).
        chunk_size: positions per chunk.

    Returns:
        ``(kd, ce)``: means over the positions (over the non-ignored targets for ``ce``); None for a
        part not asked for (no teacher, no targets).
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
