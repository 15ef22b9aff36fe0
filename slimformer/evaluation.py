"""Measuring models: predictions, task metrics, parameters, MACs and latency.

MACs are counted analytically from each layer's real sizes (so a per-layer pruned model is counted
as it is, not as its config's global values say) and checked against ``torch.utils.flop_counter``
in the tests.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from slimformer.architectures import LayerSizes, ModelAdapter
from slimformer.importance import model_task


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return total


def layer_macs(sizes: LayerSizes, *, hidden: int, head_dim: int, seq_len: int, glu: bool) -> int:
    """Multiply-accumulates of one transformer layer over a sequence of ``seq_len`` tokens."""
    q_width, kv_width = sizes.heads * head_dim, sizes.kv_heads * head_dim
    projections = hidden * (2 * q_width + 2 * kv_width)  # q, o and k, v
    attention = 2 * seq_len * q_width  # scores QK^T and the weighted sum of V, per token
    ffn = 0 if sizes.mlp_removed else sizes.intermediate * hidden * (3 if glu else 2)
    return seq_len * (projections + attention + ffn)


def count_macs(model: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates for one sequence of ``seq_len`` tokens (embedding look-ups are free).

    Counts the layers, the task head (pooler and classifier on one token, the LM head on every token).
    """
    adapter = ModelAdapter(model)
    config = model.config
    hidden = getattr(config, "dim", None) if adapter.family.name == "distilbert" else config.hidden_size
    glu = adapter.grouped  # llama-like MLPs have gate, up and down projections
    total = sum(
        layer_macs(s, hidden=hidden, head_dim=adapter.head_dim, seq_len=seq_len, glu=glu)
        for s in adapter.all_sizes()
    )
    task = model_task(model)
    base = model.base_model
    pooler = getattr(base, "pooler", None)
    if pooler is not None and getattr(pooler, "dense", None) is not None:  # BERT's pooler: the first token only
        total += pooler.dense.in_features * pooler.dense.out_features
    if task == "text-generation":
        out = model.get_output_embeddings()
        total += seq_len * out.weight.shape[0] * out.weight.shape[1]
    elif task == "text-classification":
        inside = {id(m) for m in base.modules()}
        head = sum(
            m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in inside
        )
        # decoders score every token and pick the last; encoders classify one pooled token
        total += head * (seq_len if adapter.grouped or adapter.family.name == "gpt2" else 1)
    return int(total)


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    """Logits (classification, regression) or mean-pooled embeddings for every example, in order."""
    from slimformer.importance import mean_pool

    model.eval()
    device = next(model.parameters()).device
    outputs = []
    task = model_task(model)
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        if task == "feature-extraction":
            outputs.append(mean_pool(out.last_hidden_state, inputs.get("attention_mask")).float().cpu())
        else:
            outputs.append(out.logits.float().cpu())
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


@dataclass
class Latency:
    batch_size: int
    seq_len: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    throughput: float  # sequences per second at this batch size
    runs: int
    threads: int


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    *,
    batch_size: int,
    seq_len: int,
    runs: int = 20,
    warmup: int = 3,
    vocab_size: int | None = None,
) -> Latency:
    """Wall time of a forward pass on random token ids after warm-up, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    mean = statistics.fmean(times)
    return Latency(
        batch_size=batch_size,
        seq_len=seq_len,
        p50_ms=statistics.median(times),
        p95_ms=p95,
        mean_ms=mean,
        throughput=batch_size / (statistics.median(times) / 1000),
        runs=runs,
        threads=torch.get_num_threads(),
    )


@torch.no_grad()
def next_token_accuracy(model: nn.Module, batches: Iterable[dict]) -> float:
    """Share of real next tokens that are the model's top prediction (a higher-is-better LM metric)."""
    model.eval()
    device = next(model.parameters()).device
    hits = total = 0
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        pred, target = logits[:, :-1].argmax(-1), inputs["input_ids"][:, 1:]
        real = inputs["attention_mask"][:, 1:].bool()
        hits += int((pred == target)[real].sum())
        total += int(real.sum())
    return hits / max(total, 1)


def task_metric(model: nn.Module, batches: list[dict], reference: torch.Tensor | None = None) -> tuple[str, float]:
    """The metric that schedules and summaries compare (higher is better).

    Classification with labels: accuracy; without: agreement with ``reference`` logits. Embeddings: mean cosine
    similarity to ``reference`` embeddings. Causal LM: next-token accuracy on the text.
    """
    task = model_task(model)
    if task == "text-generation":
        return "next_token_accuracy", next_token_accuracy(model, batches)
    out = predict(model, batches)
    if task == "feature-extraction":
        if reference is None:
            raise ValueError("embedding models are compared with reference embeddings")
        return "cosine_to_original", float(torch.nn.functional.cosine_similarity(out, reference, dim=-1).mean())
    if "labels" in batches[0]:
        labels = torch.cat([b["labels"] for b in batches])
        if out.shape[-1] == 1:  # regression
            from scipy.stats import pearsonr

            return "pearson", float(pearsonr(out[:, 0].numpy(), labels.float().numpy()).statistic)
        return "accuracy", accuracy(out, labels)
    if reference is None:
        raise ValueError("without labels, predictions are compared with reference logits")
    return "agreement", float((out.argmax(-1) == reference.argmax(-1)).float().mean())
