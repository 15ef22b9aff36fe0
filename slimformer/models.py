"""Facts about a loaded model, in one home: its task and Auto class, pooling, device and autocast,
seeding, and its size in parameters (all, and those of the embeddings) and multiply-accumulates
(MACs).

MACs are counted analytically from each layer's real sizes, so a per-layer pruned model is counted
as it is, not as its config's global values say (checked against ``torch.utils.flop_counter`` in the
tests).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn

from slimformer.architectures import LayerSizes, ModelAdapter
from slimformer.spec import TASKS, Task

AUTO_CLASS_FOR_TASK = {
    "text-classification": "AutoModelForSequenceClassification",
    "text-generation": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
    "sentence-similarity": "AutoModel",
}


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or when asked), CPU otherwise."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full precision (no autocast) elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_task(model: nn.Module) -> str:
    """text-classification, text-generation or feature-extraction, from the model's head."""
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "text-generation"
    return "feature-extraction"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token embeddings over real tokens (sentence-transformers' pooling)."""
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def count_embedding_parameters(model: nn.Module) -> int:
    """Parameters of the vocabulary and position matrices: every embedding table (tokens,
    positions, token types) and the LM head (counted once when tied to the token embeddings).
    Pruning never touches them; the rest are the *non-embedding* parameters, the share the LLM
    pruning papers state."""
    modules = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        modules.append(head)
    params = {id(p): p for m in modules for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in params.values())


def layer_macs(sizes: LayerSizes, *, hidden: int, head_dim: int, seq_len: int, glu: bool) -> int:
    """Multiply-accumulates of one transformer layer over a sequence of ``seq_len`` tokens."""
    q_width, kv_width = sizes.heads * head_dim, sizes.kv_heads * head_dim
    projections = hidden * (2 * q_width + 2 * kv_width)  # q, o and k, v
    attention = 2 * seq_len * q_width  # scores QK^T and the weighted sum of V, per token
    ffn = 0 if sizes.mlp_removed else sizes.intermediate * hidden * (3 if glu else 2)
    return seq_len * (projections + attention + ffn)


def count_macs(model: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates for one sequence of ``seq_len`` tokens (embedding look-ups are free).

    Counts the layers, the task head (pooler and classifier on one token, the LM head on every
    token).
    """
    adapter = ModelAdapter(model)
    config = model.config
    hidden = getattr(config, adapter.family.hidden_attr)
    glu = adapter.family.gated_mlp  # llama-like MLPs have gate, up and down projections
    total = sum(
        layer_macs(s, hidden=hidden, head_dim=adapter.head_dim, seq_len=seq_len, glu=glu)
        for s in adapter.all_sizes()
    )
    task = model_task(model)
    base = model.base_model
    pooler = getattr(base, "pooler", None)
    if (
        pooler is not None and getattr(pooler, "dense", None) is not None
    ):  # BERT's pooler: the first token only
        total += pooler.dense.in_features * pooler.dense.out_features
    if task == "text-generation":
        out = model.get_output_embeddings()
        total += seq_len * out.weight.shape[0] * out.weight.shape[1]
    elif task == "text-classification":
        inside = {id(m) for m in base.modules()}
        head = sum(
            m.in_features * m.out_features
            for m in model.modules()
            if isinstance(m, nn.Linear) and id(m) not in inside
        )
        # decoders score every token and pick the last; encoders classify one pooled token
        total += head * (seq_len if adapter.family.decoder else 1)
    return int(total)


__all__ = [
    "AUTO_CLASS_FOR_TASK",
    "TASKS",
    "Task",
    "autocast_for",
    "count_macs",
    "count_parameters",
    "layer_macs",
    "mean_pool",
    "model_task",
    "pick_device",
    "set_seed",
]
