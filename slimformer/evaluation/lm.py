"""Causal language models: next-token statistics over real positions (perplexity, next-token
accuracy, greedy tokens) and the speed of greedy generation.

A position counts when both the token that is predicted and the token it is predicted from are real
(attention mask 1, label not -100): padding never enters the statistics, whichever side it is on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from slimformer.text import DEFAULT_CHUNK, next_token_stats


@dataclass
class NextTokenScores:
    """Next-token statistics of a causal LM over real positions (see the module docstring)."""

    nll_sum: float  # summed negative log-likelihood of the real next tokens, in nats
    tokens: int  # real next-token positions
    hits: int  # positions whose greedy prediction is the next token
    greedy: list[torch.Tensor] = field(
        default_factory=list
    )  # per batch: greedy tokens at the real positions

    @property
    def perplexity(self) -> float | None:
        """``exp`` of the mean NLL; None without real tokens or when it overflows."""
        if self.tokens == 0:
            return None
        mean = self.nll_sum / self.tokens
        return math.exp(mean) if mean < 700 else None

    @property
    def accuracy(self) -> float | None:
        return self.hits / self.tokens if self.tokens else None


@torch.inference_mode()
def score_next_tokens(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    keep_greedy: bool = False,
    on_batch: Callable[[int], None] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> NextTokenScores:
    """Summed NLL, greedy hits and (optionally) greedy tokens of a causal LM over the real next
    tokens.

    Args:
        model: a causal LM; it stays on its device.
        batches: tokenised batches with ``input_ids`` and usually ``attention_mask`` (``labels``
            optional).
        keep_greedy: keep the greedy token of every real position (to compare two models).
        on_batch: called with the batch index after each batch (progress and cancellation).
        chunk_size: positions whose logits exist at once.

    Returns:
        :class:`NextTokenScores`.

    The output head and the cross-entropy run on ``chunk_size`` positions at a time, at real
    positions only (logits at padding can be anything, even NaN for fully masked rows), so no
    batch x sequence x vocabulary tensor is ever made (:func:`slimformer.text.next_token_stats`).
    """
    model.eval()
    device = next(model.parameters()).device
    scores = NextTokenScores(0.0, 0, 0)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        stats = next_token_stats(model, batch, chunk_size=chunk_size, keep_greedy=keep_greedy)
        scores.nll_sum += stats.nll_sum
        scores.tokens += stats.tokens
        scores.hits += stats.hits
        if keep_greedy:
            scores.greedy.append(stats.greedy)
        del batch, stats
        if on_batch:
            on_batch(i)
    return scores


def perplexity(model: nn.Module, batches: Iterable[dict]) -> float | None:
    """Perplexity of a causal LM: ``exp`` of the mean next-token NLL over real tokens (padding
    masked).

    Args:
        model: a causal LM.
        batches: held-out text, tokenised (``make_batches(..., task="text-generation")``).

    Returns:
        The perplexity (lower is better), or None when there is no real next token or it overflows.
    """
    return score_next_tokens(model, batches).perplexity


@torch.no_grad()
def next_token_accuracy(model: nn.Module, batches: Iterable[dict]) -> float:
    """Share of real next tokens that are the model's top prediction (a higher-is-better LM metric).

    Real positions are those of :func:`score_next_tokens`: padding is excluded on either side.
    """
    scores = score_next_tokens(model, batches)
    return scores.hits / max(scores.tokens, 1)


@torch.no_grad()
def generation_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Tokens per second of greedy generation of exactly ``new_tokens`` tokens after ``prompt``
    ([1, T] token ids), one stream, after a two-token warm-up."""
    device = next(model.parameters()).device
    prompt = prompt.to(device)
    kwargs = {"attention_mask": torch.ones_like(prompt), "do_sample": False}
    was_training = model.training
    model.eval()
    try:
        model.generate(prompt, max_new_tokens=2, min_new_tokens=2, **kwargs)
        start = time.perf_counter()
        model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        return new_tokens / (time.perf_counter() - start)
    finally:
        model.train(was_training)


@torch.inference_mode()
def greedy_continuations(
    model: nn.Module, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """The greedy continuation (token ids, up to ``new_tokens``; shorter where the model ends the
    text) of each prompt ([token ids] each), one prompt at a time so no padding enters."""
    device = next(model.parameters()).device
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    was_training = model.training
    model.eval()
    out = []
    try:
        for ids in prompts:
            prompt = torch.tensor([ids], device=device)
            generated = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=eos if isinstance(eos, int) else None,
            )
            out.append(generated[0, len(ids) :].tolist())
    finally:
        model.train(was_training)
    return out
