"""What a model costs to run, beyond its parameter and MAC counts (:mod:`slimformer.models`): the
latency and throughput of a forward pass, and the bytes of its weights in memory."""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


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
    """Wall time of a forward pass on random token ids after warm-up, on the model's device.

    A causal LM computes the logits of the last position only (``logits_to_keep=1``), as a
    serving engine's prefill does: the vocabulary's logits at every position would add a term
    pruning does not touch, and, at batch 32, more memory than a small model's weights."""
    model.eval()
    device = next(model.parameters()).device
    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch_size, seq_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    extra = {"logits_to_keep": 1} if prefill_only(model) else {}
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, attention_mask=mask, **extra)
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


def prefill_only(model: nn.Module) -> bool:
    """Whether ``model``'s forward can compute the logits of the last position only (the causal
    LMs of transformers)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights in memory: ``numel * element_size`` summed over the distinct tensors of
    the state dict.

    Tied weights count once; non-persistent buffers (position ids, rotary frequencies) are not
    weights. The size of the saved files is measured separately, on disk.
    """
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel(), tensor.element_size())
        if tensor.device.type == "meta" or key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total
