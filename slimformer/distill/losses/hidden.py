"""Hidden-state alignment between mapped student and teacher layers (TinyBERT, DistilBERT's cosine).

Student layer i is compared with teacher layer ``layer_map[i]`` by 1 - cosine or the MSE, over real
tokens, through a learned projection when the widths differ. Without a given map, each student layer
is matched with the teacher layer at the same relative depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def hidden_alignment_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    layer_map: Sequence[int],
    attention_mask: torch.Tensor | None,
    kind: Literal["cosine", "mse"],
    projection: nn.Module | None = None,
) -> torch.Tensor:
    """Mean over mapped layers of 1 - cosine (or the MSE) between student and teacher hidden states.

    ``*_states`` are ``output_hidden_states`` tuples (embeddings first, then one entry per layer);
    student layer i is compared with teacher layer ``layer_map[i]``, over real (unpadded) tokens
    only. ``projection`` maps the student's width to the teacher's when they differ.
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
    return [
        max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)
    ]


def _num_layers(model: nn.Module) -> int:
    return int(model.config.num_hidden_layers)
