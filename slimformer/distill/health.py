"""Training-health checks: findings about the data, the first batch, gradients and the loss curve.

Each finding is a ``{"level", "check", "message"}`` dict, logged when it is made, and the run keeps
them in its result: data problems before training, a first-batch loss far from chance (or a teacher
no better than chance), parameters that get no gradient on the first step, and a plateau of the
training loss. The trainer calls these; they never call the trainer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData, encode_labels
from slimformer.distill.batches import _epoch_order
from slimformer.distill.config import DistillConfig
from slimformer.distill.losses.batch import batch_loss
from slimformer.errors import DatasetError
from slimformer.models import Task

if TYPE_CHECKING:  # only for a type hint: the run state is the checkpoint's business
    from slimformer.distill.checkpoint import _RunState

logger = logging.getLogger(__name__)

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _finding(level: str, check: str, message: str) -> dict:
    logger.log(_LEVELS[level], "%s: %s", check, message)
    return {"level": level, "check": check, "message": message}


def check_training_data(
    train: TextData,
    tokenizer: PreTrainedTokenizerBase,
    config: DistillConfig,
    *,
    task: Task,
    model_config=None,
    eval_data: TextData | None = None,
) -> list[dict]:
    """Findings about the training data, before any training.

    Checks: empty and duplicate texts (and duplicates with conflicting labels), the label
    distribution and its imbalance, the share of inputs longer than ``max_length`` (truncated),
    batches of the first epoch's order that hold a single label, and evaluation texts that also
    occur in the training data.

    Args:
        train: the training data.
        tokenizer: the tokenizer the models read.
        config: batch size, max length, seed and shuffle of the run.
        task: the models' task.
        model_config: the config whose ``label2id``/``num_labels`` map the labels (classification).
        eval_data: the evaluation data, if any.

    Returns:
        ``[{"level": "info" | "warning" | "error", "check": name, "message": text}, ...]`` (also
        logged).

    Raises:
        DatasetError: no rows, only empty texts, labels the model does not know.
    """
    n = len(train)
    if n == 0:
        raise DatasetError(f"{train.source or 'the training data'} has no rows")
    findings = _empty_text_findings(train)
    keys = _row_keys(train)
    findings += _duplicate_findings(train, keys)
    labels = _class_labels(train, task, model_config)
    if labels is not None:
        findings.extend(_label_findings(labels, model_config))
    findings += _truncation_findings(train, tokenizer, config)
    if labels is not None:
        findings += _single_label_batch_findings(labels, n, config)
    if eval_data is not None and len(eval_data):
        findings += _eval_overlap_findings(eval_data, keys)
    return findings


def _row_keys(data: TextData) -> list[tuple]:
    """Each row as ``(text, pair)`` (``pair`` None without pairs): what makes two rows the same."""
    return list(zip(data.texts, data.pairs or [None] * len(data), strict=True))


def _empty_text_findings(train: TextData) -> list[dict]:
    """A warning about empty texts.

    Raises:
        DatasetError: every text is empty.
    """
    n = len(train)
    empty = [i for i, t in enumerate(train.texts) if not t.strip()]
    if len(empty) == n:
        raise DatasetError(f"{train.source or 'the training data'}: every text is empty")
    if not empty:
        return []
    return [
        _finding(
            "warning",
            "empty_texts",
            f"{len(empty)} of {n} texts are empty (first at row {empty[0] + 1}); "
            "they teach the student nothing",
        )
    ]


def _duplicate_findings(train: TextData, keys: list[tuple]) -> list[dict]:
    """Rows that repeat an earlier text, and texts that appear with different labels."""
    n = len(train)
    counts = Counter(keys)
    duplicates = n - len(counts)
    if not duplicates:
        return []
    level = "warning" if duplicates / n > 0.01 else "info"
    message = f"{duplicates} of {n} rows repeat an earlier text ({duplicates / n:.1%})"
    if train.labels is not None:
        seen: dict = {}
        for key, label in zip(keys, train.labels, strict=True):
            seen.setdefault(key, set()).add(str(label))
        conflicting = sum(1 for labels in seen.values() if len(labels) > 1)
        if conflicting:
            level = "warning"
            message += f"; {conflicting} texts appear with different labels"
    return [_finding(level, "duplicate_texts", message)]


def _class_labels(train: TextData, task: Task, model_config) -> list[int] | None:
    """The class ids of a classification task's gold labels; None without labels or classes
    (another task, no labels, no model config, regression).

    Raises:
        DatasetError: labels the model does not know.
    """
    labels = None
    classification = task == "text-classification"
    if classification and train.labels is not None and model_config is not None:
        labels = encode_labels(train, model_config)
        if isinstance(labels[0], float):
            labels = None  # regression: no classes to count
    return labels


def _truncation_findings(
    train: TextData, tokenizer: PreTrainedTokenizerBase, config: DistillConfig
) -> list[dict]:
    """The share of inputs (of a sample of up to 5000) longer than ``max_length`` tokens."""
    sample = _epoch_order(len(train), config.seed, 0, True)[:5000]
    texts = [train.texts[i] for i in sample]
    pairs = [train.pairs[i] for i in sample] if train.pairs is not None else None
    lengths = [len(ids) for ids in tokenizer(texts, pairs, truncation=False)["input_ids"]]
    truncated = sum(1 for length in lengths if length > config.max_length)
    if not truncated:
        return []
    share = truncated / len(lengths)
    return [
        _finding(
            "warning" if share > 0.05 else "info",
            "truncation",
            f"{share:.1%} of the inputs are longer than max_length={config.max_length} tokens "
            f"and are cut (longest {max(lengths)})",
        )
    ]


def _single_label_batch_findings(labels: list[int], n: int, config: DistillConfig) -> list[dict]:
    """Batches of the first epoch's order of ``n`` rows that hold a single label (when there is
    more than one label).
    """
    if config.batch_size <= 1 or len(set(labels)) <= 1:
        return []
    order = _epoch_order(n, config.seed, 0, config.shuffle)
    size = config.batch_size
    batches = [order[i : i + size] for i in range(0, n, size)]
    single = sum(1 for b in batches if len(b) > 1 and len({labels[i] for i in b}) == 1)
    if not single:
        return []
    hint = "turn shuffle on" if not config.shuffle else "the classes are very imbalanced"
    return [
        _finding(
            "warning",
            "single_label_batches",
            f"{single} of {len(batches)} batches of the first epoch hold a single label "
            f"({hint}); such batches push the student towards one class",
        )
    ]


def _eval_overlap_findings(eval_data: TextData, train_keys: list[tuple]) -> list[dict]:
    """Evaluation texts that also occur in the training data."""
    known = set(train_keys)
    overlap = sum(1 for key in _row_keys(eval_data) if key in known)
    if not overlap:
        return []
    share = overlap / len(eval_data)
    return [
        _finding(
            "warning" if share > 0.01 else "info",
            "eval_overlap",
            f"{overlap} of {len(eval_data)} evaluation texts ({share:.1%}) also occur "
            "in the training data; the metric overstates generalisation",
        )
    ]


def _label_findings(labels: list[int], model_config) -> list[dict]:
    """The label distribution of the training data, and a warning when it is badly imbalanced."""
    findings = []
    num_classes = max(int(getattr(model_config, "num_labels", 2)), max(labels) + 1)
    id2label = getattr(model_config, "id2label", None) or {}
    names = {int(k): str(v) for k, v in id2label.items()}
    distribution = Counter(labels)
    shown = ", ".join(f"{names.get(c, c)}: {distribution.get(c, 0)}" for c in range(num_classes))
    findings.append(_finding("info", "label_distribution", f"labels: {shown}"))
    present = [distribution[c] for c in range(num_classes) if distribution.get(c, 0)]
    missing = [names.get(c, str(c)) for c in range(num_classes) if not distribution.get(c, 0)]
    if len(present) == 1:
        findings.append(
            _finding(
                "warning",
                "label_imbalance",
                "every training example has the same label; the gold-label loss teaches "
                "nothing about the others",
            )
        )
    elif missing:
        findings.append(
            _finding(
                "warning",
                "label_imbalance",
                f"no training example has label(s) {', '.join(missing)}",
            )
        )
    elif max(present) / min(present) > 3:
        findings.append(
            _finding(
                "warning",
                "label_imbalance",
                f"the most common label is {max(present) / min(present):.1f}x as frequent as the "
                "rarest",
            )
        )
    return findings


def _initial_loss_findings(
    student: nn.Module,
    teacher: nn.Module | None,
    batch: dict,
    *,
    task: Task,
    config: DistillConfig,
) -> list[dict]:
    """The first batch's loss against the chance level (-ln(1/C)) and against the teacher's own
    loss.
    """
    findings = []
    gold = dataclasses.replace(config, alpha=1.0, hidden_loss=None)
    with torch.no_grad():
        if "labels" in batch and task in ("text-classification", "text-generation"):
            if task == "text-classification":
                classes = int(student.config.num_labels)
                if classes < 2:
                    return findings
            else:
                classes = int(student.get_output_embeddings().weight.shape[0])
            chance = math.log(classes)
            _, s_parts = batch_loss(student, None, batch, task=task, config=gold)
            message = (
                f"first batch: student cross-entropy {s_parts['ce']:.4f}, chance level "
                f"ln({classes}) = {chance:.4f}"
            )
            t_ce = None
            if teacher is not None:
                _, t_parts = batch_loss(teacher, None, batch, task=task, config=gold)
                t_ce = t_parts["ce"]
                message += f", teacher {t_ce:.4f}"
            findings.append(_finding("info", "initial_loss", message))
            if s_parts["ce"] > 3 * chance and task == "text-classification":
                findings.append(
                    _finding(
                        "warning",
                        "initial_loss",
                        f"the student starts at {s_parts['ce']:.3f}, far above chance "
                        f"({chance:.3f}): it is confidently wrong; check that the labels mean "
                        "what the student's head was trained on",
                    )
                )
            elif s_parts["ce"] > chance:
                findings.append(
                    _finding(
                        "warning",
                        "initial_loss",
                        f"the student starts at {s_parts['ce']:.3f}, above the random-guess level "
                        f"ln({classes}) = {chance:.3f}: it predicts worse than a uniform guess "
                        "(layer dropping or pruning broke it); distillation must first recover "
                        "it, so expect a slow start, and keep more of the model if it does not "
                        "recover",
                    )
                )
            if t_ce is not None and t_ce > chance:
                if task == "text-classification":
                    hint = "do the data's labels mean what the teacher's label2id says?"
                else:
                    hint = "is this text in the teacher's language and tokenizer?"
                findings.append(
                    _finding(
                        "warning",
                        "teacher_loss",
                        f"the teacher does no better than chance on the first batch ({t_ce:.3f} > "
                        f"{chance:.3f}): {hint}",
                    )
                )
        elif teacher is not None:
            loss, _ = batch_loss(student, teacher, batch, task=task, config=config)
            findings.append(
                _finding(
                    "info", "initial_loss", f"first batch: distillation loss {float(loss):.4f}"
                )
            )
    return findings


def _gradient_findings(student: nn.Module, task: str) -> list[dict]:
    """After the first backward pass: parameters that are frozen, or that receive no (or only zero)
    gradient.
    """
    findings = []
    frozen = [n for n, p in student.named_parameters() if not p.requires_grad]
    if frozen:
        findings.append(
            _finding(
                "info",
                "frozen_parameters",
                f"{len(frozen)} parameter tensors are frozen and not trained: "
                f"{', '.join(frozen[:5])}" + (" ..." if len(frozen) > 5 else ""),
            )
        )
    unused = [
        n
        for n, p in student.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(p.grad.detach().abs().sum() > 0))
    ]
    if task == "feature-extraction":  # mean pooling never reads a pooler
        pooler = [n for n in unused if ".pooler." in f".{n}"]
        unused = [n for n in unused if n not in pooler]
        if pooler:
            findings.append(
                _finding(
                    "info", "unused_parameters", f"mean pooling does not use {', '.join(pooler)}"
                )
            )
    if unused:
        findings.append(
            _finding(
                "warning",
                "unused_parameters",
                f"{len(unused)} trainable parameter tensors got no gradient on the first step "
                f"(unused by the loss): {', '.join(unused[:5])}"
                + (" ..." if len(unused) > 5 else ""),
            )
        )
    return findings


def _note_plateau(state: _RunState, window: int) -> None:
    """Note once when the mean training loss improved by less than 1% over two windows in a row."""
    if state.plateau_noted or state.step < 3 * window or state.step % window:
        return
    losses = [h["loss"] for h in state.history if h["loss"] is not None]
    means = [sum(losses[-(i + 1) * window : len(losses) - i * window]) / window for i in range(3)]
    latest, middle, oldest = means
    if latest > middle * 0.99 and middle > oldest * 0.99:
        state.plateau_noted = True
        state.health.append(
            _finding(
                "info",
                "loss_plateau",
                f"the training loss has stopped falling: mean {oldest:.4f} -> {middle:.4f} -> "
                f"{latest:.4f} over the last {3 * window} steps (to step {state.step})",
            )
        )
