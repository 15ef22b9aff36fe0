"""Labels as a model expects them, and tokenised batches of :class:`TextData`."""

from __future__ import annotations

import random

import torch

from slimformer.data.text_data import TextData
from slimformer.errors import DatasetError


def encode_labels(data: TextData, config) -> list:
    """Labels as the model expects them: class ids (strings mapped through ``label2id``) or
    floats."""
    if data.labels is None:
        raise DatasetError(f"{data.source} has no label column", details={"file": data.source})
    num_labels = getattr(config, "num_labels", 2)
    if num_labels == 1 or getattr(config, "problem_type", None) == "regression":
        try:
            return [float(v) for v in data.labels]
        except (TypeError, ValueError) as err:
            raise DatasetError(
                f"{data.source}: column {data.label_column!r} must hold numbers "
                "for a regression model",
                details={"file": data.source, "column": data.label_column},
            ) from err
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    folded = {k.casefold(): v for k, v in label2id.items()}
    values = data.labels
    if data.label_names and all(n.casefold() in folded for n in data.label_names):
        # class ids of the data's own order (ClassLabel): go through the names, which may be ordered
        # differently
        by_index = {i: folded[n.casefold()] for i, n in enumerate(data.label_names)}
        values = [
            by_index.get(v, v) if isinstance(v, int) and not isinstance(v, bool) else v
            for v in values
        ]
    out, unknown = [], set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            unknown.add(repr(value))
            continue
        if isinstance(value, str) and (value in label2id or value.strip().casefold() in folded):
            out.append(label2id[value] if value in label2id else folded[value.strip().casefold()])
            continue
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            unknown.add(str(value))
            continue
        if str(as_int) != str(value).strip() and float(value) != as_int:
            unknown.add(str(value))
        elif 0 <= as_int < num_labels:
            out.append(as_int)
        else:
            unknown.add(str(value))
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in sorted(label2id.items(), key=lambda kv: kv[1]))
        generic = all(k.upper() == f"LABEL_{v}" for k, v in label2id.items())
        names = "" if generic else "the model's label names or "
        raise DatasetError(
            f"{data.source}: labels {', '.join(sorted(unknown)[:5])} "
            f"in column {data.label_column!r} do not match "
            f"the model's {num_labels} labels ({known}); write the labels as {names}class ids 0 to "
            f"{num_labels - 1}, or name the right label column",
            details={
                "file": data.source,
                "column": data.label_column,
                "unknown": sorted(unknown)[:20],
            },
        )
    return out


def make_batches(
    tokenizer,
    data: TextData,
    *,
    task: str,
    config=None,
    batch_size: int = 32,
    max_length: int = 128,
    with_labels: bool = True,
    shuffle: bool = False,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches. Causal-LM batches carry ``labels`` = input ids with padding masked."""
    if len(data) == 0:
        raise DatasetError(f"{data.source or 'the data'} has no rows")
    order = list(range(len(data)))
    if shuffle:
        random.Random(seed).shuffle(order)
    labels = None
    if with_labels and task == "text-classification" and data.labels is not None:
        labels = encode_labels(data, config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [data.texts[i] for i in idx]
        pairs = [data.pairs[i] for i in idx] if data.pairs is not None else None
        enc = tokenizer(
            texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch = {
            k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        if labels is not None:
            dtype = torch.float if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=dtype)
        elif with_labels and task == "text-generation":
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batches.append(batch)
    return batches
