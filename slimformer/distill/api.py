"""The entry points: :func:`distill` a teacher into a student, or :func:`finetune` a student alone.

Both check their inputs, then hand the work to the training loop of
:mod:`slimformer.distill.trainer`; :func:`distill` also refuses a student that cannot learn from the
teacher and gives a fresh classification head the teacher's label names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData
from slimformer.distill.config import CancelFn, DistillConfig, DistillResult, EvalFn, ProgressFn
from slimformer.distill.students import _generic_labels, check_student_compatible
from slimformer.distill.trainer import _Run
from slimformer.errors import InvalidSpec
from slimformer.models import Task, model_task


def distill(
    teacher: nn.Module,
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: TextData,
    eval: TextData | None = None,
    config: DistillConfig | None = None,
    *,
    task: Task | None = None,
    layer_map: Sequence[int] | None = None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    eval_fn: EvalFn | None = None,
) -> DistillResult:
    """Train ``student`` (in place) to imitate ``teacher`` on ``train``.

    Before training: :func:`check_student_compatible` (another vocabulary or label set is refused
    here), :func:`check_training_data`, and the first batch's loss against chance and against the
    teacher. Then the loop of :mod:`slimformer.distill.trainer`; the best evaluated weights are
    loaded into the student at the end. With ``checkpoint_dir``, a checkpoint is written there every
    ``checkpoint_every`` steps (and on cancellation), and a later call with the same arguments
    resumes from it and ends with the same weights as an uninterrupted run; a call after the run
    finished returns its result without training.

    Args:
        teacher: the model to imitate (kept in eval mode, never updated).
        student: the model to train: a layer-dropped or pruned copy, or a smaller model of the same
            head.
        tokenizer: the teacher's tokenizer; both models read its ids.
        train: training texts (labels optional: the teacher labels). For causal LMs, ``pairs`` are
            read as completions of the ``texts`` prompts, and only completion tokens count in the
            loss.
        eval: evaluation data: accuracy with labels, agreement with the teacher without
            (classification), next-token accuracy (causal LM), cosine to the teacher's embeddings
            (embedding models).
        config: :class:`DistillConfig` (defaults when None).
        task: the models' task; inferred from the student's head when None.
        layer_map: for hidden-state alignment, the teacher layer of each student layer (the kept
            indices of :func:`make_layer_dropped_student`); evenly spread by depth when None.
        student_tokenizer: the student's own tokenizer, checked against ``tokenizer``.
        checkpoint_dir: folder for checkpoints and resumption.
        on_progress: ``on_progress("distilling", fraction, message)`` after every step.
        should_cancel: checked between steps (and micro-batches); true raises :class:`Cancelled`.
        eval_fn: ``eval_fn(student) -> float`` (higher is better) instead of the built-in metric.

    Returns:
        :class:`DistillResult`.

    Raises:
        InvalidSpec: an incompatible student, bad settings, a checkpoint written for another run.
        DatasetError: empty data, labels the teacher does not know.
        Cancelled: ``should_cancel`` returned true.
        SlimformerError: the loss or gradients became NaN/infinite twice (after one roll-back).

    Example:
        >>> student, kept = make_layer_dropped_student(teacher, 3)  # doctest: +SKIP
        >>> result = distill(teacher, student, tokenizer, train, dev,
        ...                  DistillConfig(hidden_loss="cosine"),
        ...                  layer_map=kept, checkpoint_dir="runs/ckpt")  # doctest: +SKIP
    """
    config = config or DistillConfig()
    check_student_compatible(teacher, student, tokenizer, student_tokenizer)
    run = _Run(
        student,
        teacher,
        tokenizer,
        train,
        eval,
        config,
        task=task,
        layer_map=layer_map,
        checkpoint_dir=checkpoint_dir,
        eval_fn=eval_fn,
        stage="distilling",
    )
    _adopt_teacher_label_names(teacher, student)
    return run.run(on_progress, should_cancel)


def _adopt_teacher_label_names(teacher: nn.Module, student: nn.Module) -> None:
    """Give a classifier student with a fresh head (generic ``LABEL_i`` names) the teacher's label
    names.
    """
    if model_task(teacher) == "text-classification":
        student_names = {int(k): v for k, v in student.config.id2label.items()}
        if _generic_labels(student_names):  # a fresh head
            teacher_names = teacher.config.id2label.items()
            student.config.id2label = {int(k): str(v) for k, v in teacher_names}
            student.config.label2id = {v: k for k, v in student.config.id2label.items()}


def finetune(
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: TextData,
    eval: TextData | None = None,
    config: DistillConfig | None = None,
    *,
    task: Task | None = None,
    checkpoint_dir: str | Path | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    eval_fn: EvalFn | None = None,
) -> DistillResult:
    """Train ``student`` on gold labels alone: the loop of :func:`distill` with no teacher forward.

    The baseline distillation is measured against. ``temperature``, ``alpha`` and the hidden-state
    loss of ``config`` do not apply; everything else (budget, schedule, evaluation, checkpoints,
    health) does.

    Args:
        student: the model to train, in place.
        tokenizer: its tokenizer.
        train: training data with labels (classification) or text (causal LM).
        eval: evaluation data with labels (classification) or text (causal LM).
        config: :class:`DistillConfig` (defaults when None).
        task: inferred from the student's head when None.
        checkpoint_dir: folder for checkpoints and resumption.
        on_progress: ``on_progress("fine-tuning", fraction, message)`` after every step.
        should_cancel: checked between steps; true raises :class:`Cancelled`.
        eval_fn: ``eval_fn(student) -> float`` instead of the built-in metric.

    Returns:
        :class:`DistillResult` (``teacher_metric`` is None).

    Raises:
        InvalidSpec: data without labels, an embedding model (nothing to learn without a teacher).
        DatasetError: empty data, unknown labels.
        Cancelled: ``should_cancel`` returned true.
        SlimformerError: the loss or gradients became NaN/infinite twice.
    """
    config = dataclasses.replace(config or DistillConfig(), alpha=1.0, hidden_loss=None)
    if model_task(student) == "feature-extraction":
        raise InvalidSpec(
            "an embedding model has no labels to fine-tune on; distil it from a teacher instead"
        )
    run = _Run(
        student,
        None,
        tokenizer,
        train,
        eval,
        config,
        task=task,
        layer_map=None,
        checkpoint_dir=checkpoint_dir,
        eval_fn=eval_fn,
        stage="fine-tuning",
    )
    return run.run(on_progress, should_cancel)
