"""The training data of a run as batches: the seeded order of each epoch, and one batch of rows.

The order of an epoch is a permutation fixed by (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one and the health checks can look at the first epoch's batches before
training. Causal-LM prompt/completion pairs get a ``prompt_mask`` so that only completion tokens
count in the loss.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from slimformer.data import TextData, make_batches
from slimformer.models import Task


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> tuple[int, ...]:
    """The order of the examples in one epoch: a permutation fixed by (seed, epoch)."""
    if not shuffle:
        return tuple(range(n))
    return tuple(np.random.default_rng([seed, epoch]).permutation(n).tolist())


def _prompt_completion_batch(
    tokenizer, prompts: list[str], completions: list[str], max_length: int
) -> dict:
    """Causal-LM batch of prompt + completion with ``prompt_mask`` on the prompt tokens
    (right-padded).
    """
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
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "prompt_mask": prompt_mask,
        "labels": labels,
    }


def _make_batch(
    tokenizer,
    data: TextData,
    *,
    task: Task,
    label_config,
    max_length: int,
    with_labels: bool,
) -> dict:
    """One batch of ``data`` (already the rows of the batch, in order)."""
    if task == "text-generation" and data.pairs is not None:
        return _prompt_completion_batch(tokenizer, data.texts, data.pairs, max_length)
    return make_batches(
        tokenizer,
        data,
        task=task,
        config=label_config,
        batch_size=max(1, len(data)),
        max_length=max_length,
        with_labels=with_labels,
    )[0]
