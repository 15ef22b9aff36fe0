"""What a run's evaluation data is measured against, set up once before training.

With labelled evaluation data the student's metric compares with the gold labels (or, for a causal
LM, the next tokens); without labels, a classifier or embedding student is compared with the
teacher's predictions on the same batches. The teacher's own metric is measured once, as the mark
the student aims at.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData, make_batches
from slimformer.distill.config import DistillConfig
from slimformer.errors import InvalidSpec
from slimformer.evaluation import predict, task_metric
from slimformer.models import Task


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
    otherwise); ``metric_name`` and ``teacher_metric`` are None without a teacher.

    Raises:
        InvalidSpec: unlabelled evaluation data and no teacher to compare with.
    """
    eval_has_labels = task == "text-classification" and eval_data.labels is not None
    batches = make_batches(
        tokenizer, eval_data, task=task, config=label_config, batch_size=config.batch_size,
        max_length=config.max_length, with_labels=eval_has_labels or task == "text-generation",
    )
    reference = metric_name = teacher_metric = None
    if task != "text-generation" and not eval_has_labels:
        if teacher is None:
            raise InvalidSpec(
                "evaluation data without labels needs a teacher to compare with (or eval_fn)"
            )
        reference = predict(teacher, batches)
    if teacher is not None:
        metric_name, teacher_metric = task_metric(teacher, batches, reference)
    return batches, reference, metric_name, teacher_metric
