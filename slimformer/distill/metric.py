"""What a run's evaluation data is measured against, set up once before training.

With labelled evaluation data the student's metric compares with the gold labels; without labels, a
classifier or embedding student is compared with the teacher's predictions on the same batches. A
causal LM is measured by its held-out perplexity (lower is better) on a bounded slice: the first
rows of the evaluation data up to ``lm_eval_tokens`` tokens, its loss computed in chunks of
positions, so that an evaluation costs the same small, fixed time however large the data or the
vocabulary. The teacher's own metric is measured once, as the mark the student aims at.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData, make_batches
from slimformer.distill.batches import _make_batch
from slimformer.distill.config import DistillConfig
from slimformer.distill.losses.batch import _inputs, _lm_positions
from slimformer.distill.losses.kl import token_distillation_losses
from slimformer.errors import InvalidSpec
from slimformer.evaluation import predict, task_metric
from slimformer.models import Task

LM_METRIC = "perplexity"
_MAX_NLL = 700.0


def _lm_eval_rows(
    eval_data: TextData, tokenizer: PreTrainedTokenizerBase, config: DistillConfig
) -> TextData:
    """The first non-empty rows of ``eval_data`` holding ``lm_eval_tokens`` tokens (truncated to
    ``max_length`` each), at least one row.
    """
    chosen, tokens = [], 0
    for i, text in enumerate(eval_data.texts):
        full = text if eval_data.pairs is None else text + eval_data.pairs[i]
        if not full.strip():
            continue
        length = min(config.max_length, len(tokenizer(full)["input_ids"]))
        if length < 2:
            continue
        chosen.append(i)
        tokens += length
        if tokens >= config.lm_eval_tokens:
            break
    if not chosen:
        raise InvalidSpec(
            f"{eval_data.source or 'the evaluation data'} has no text of two tokens or more to "
            "measure a causal LM on"
        )
    return eval_data.subset(chosen)


@torch.inference_mode()
def _lm_perplexity(model: nn.Module, batches: list[dict], chunk_size: int) -> float:
    """Perplexity over the counted next-token positions of ``batches``, the head applied in chunks.

    At most ``chunk_size x vocab`` logits exist at once. A mean loss above 700 nats (``exp``
    would overflow) is reported as ``exp(700)``, so reports stay finite JSON.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            keep = _lm_positions(batch)
            hidden = model.base_model(**_inputs(batch), use_cache=False).last_hidden_state
            targets = batch["input_ids"][:, 1:][keep]
            n = int(keep.sum())
            if not n:
                continue
            _, ce = token_distillation_losses(
                hidden[:, :-1][keep],
                model.get_output_embeddings(),
                targets=targets,
                chunk_size=chunk_size,
            )
            nll += float(ce) * n
            count += n
    finally:
        model.train(was_training)
    mean = nll / count if count else _MAX_NLL
    return math.exp(min(mean, _MAX_NLL))


def _prepare_evaluation(
    eval_data: TextData,
    tokenizer: PreTrainedTokenizerBase,
    teacher: nn.Module | None,
    *,
    task: Task,
    label_config,
    config: DistillConfig,
) -> tuple[list[dict], torch.Tensor | None, str | None, float | None]:
    """``(eval_batches, reference, metric_name, teacher_metric)`` for the built-in metric.

    ``reference`` is the teacher's predictions when the data has no labels to compare with (None
    otherwise); ``teacher_metric`` is None without a teacher. A causal LM gets the bounded slice of
    :func:`_lm_eval_rows` and ``metric_name`` ``"perplexity"``.

    Raises:
        InvalidSpec: unlabelled evaluation data and no teacher to compare with.
    """
    if task == "text-generation":
        rows = _lm_eval_rows(eval_data, tokenizer, config)
        batches = [
            _make_batch(
                tokenizer,
                rows.subset(list(range(i, min(i + config.batch_size, len(rows))))),
                task=task,
                label_config=label_config,
                max_length=config.max_length,
                with_labels=True,
            )
            for i in range(0, len(rows), config.batch_size)
        ]
        teacher_metric = None
        if teacher is not None:
            teacher_metric = _lm_perplexity(teacher, batches, config.kl_chunk_size)
        return batches, None, LM_METRIC, teacher_metric
    eval_has_labels = task == "text-classification" and eval_data.labels is not None
    batches = make_batches(
        tokenizer,
        eval_data,
        task=task,
        config=label_config,
        batch_size=config.batch_size,
        max_length=config.max_length,
        with_labels=eval_has_labels,
    )
    reference = metric_name = teacher_metric = None
    if not eval_has_labels:
        if teacher is None:
            raise InvalidSpec(
                "evaluation data without labels needs a teacher to compare with (or eval_fn)"
            )
        reference = predict(teacher, batches)
    if teacher is not None:
        metric_name, teacher_metric = task_metric(teacher, batches, reference)
    return batches, reference, metric_name, teacher_metric


def _measure(
    model: nn.Module,
    batches: list[dict],
    reference: torch.Tensor | None,
    *,
    task: Task,
    config: DistillConfig,
) -> tuple[str, float]:
    """``(metric_name, value)`` of ``model`` on the prepared evaluation batches."""
    if task == "text-generation":
        return LM_METRIC, _lm_perplexity(model, batches, config.kl_chunk_size)
    return task_metric(model, batches, reference)
