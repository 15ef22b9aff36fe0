"""Task metrics: a model's predictions and the scores computed from them (accuracy, macro F1,
correlations), and :func:`task_metric`, the one number schedules and summaries compare."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from slimformer.evaluation.lm import next_token_accuracy
from slimformer.models import mean_pool, model_task


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[dict]) -> torch.Tensor:
    """Logits (classification, regression) or mean-pooled embeddings for every example, in order."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    task = model_task(model)
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        out = model(**inputs)
        if task == "feature-extraction":
            outputs.append(
                mean_pool(out.last_hidden_state, inputs.get("attention_mask")).float().cpu()
            )
        else:
            outputs.append(out.logits.float().cpu())
    return torch.cat(outputs)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose highest logit is the label."""
    return float((logits.argmax(-1) == labels).double().mean())


def task_metric(
    model: nn.Module, batches: list[dict], reference: torch.Tensor | None = None
) -> tuple[str, float]:
    """The metric that schedules and summaries compare (higher is better).

    Classification with labels: accuracy; without: agreement with ``reference`` logits. Embeddings:
    mean cosine similarity to ``reference`` embeddings. Causal LM: next-token accuracy on the text.
    """
    task = model_task(model)
    if task == "text-generation":
        return "next_token_accuracy", next_token_accuracy(model, batches)
    out = predict(model, batches)
    if task == "feature-extraction":
        if reference is None:
            raise ValueError("embedding models are compared with reference embeddings")
        return "cosine_to_original", float(
            torch.nn.functional.cosine_similarity(out, reference, dim=-1).mean()
        )
    if "labels" in batches[0]:
        labels = torch.cat([b["labels"] for b in batches])
        if out.shape[-1] == 1:  # regression
            from scipy.stats import pearsonr

            return "pearson", float(pearsonr(out[:, 0].numpy(), labels.float().numpy()).statistic)
        return "accuracy", accuracy(out, labels)
    if reference is None:
        raise ValueError("without labels, predictions are compared with reference logits")
    return "agreement", float((out.argmax(-1) == reference.argmax(-1)).float().mean())


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean of the per-class F1 scores over every class that is a label or a prediction.

    A class's F1 is ``2 TP / (2 TP + FP + FN)``, which is 0 for a class that is predicted but never
    right or never predicted (scikit-learn's ``f1_score(average="macro")`` with
    ``zero_division=0``).

    Args:
        predictions: predicted class ids, shape [n].
        labels: true class ids, shape [n].

    Returns:
        The macro F1 in [0, 1]; 0.0 for empty input.

    Raises:
        ValueError: predictions and labels of different lengths.
    """
    predictions, labels = predictions.reshape(-1).long(), labels.reshape(-1).long()
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    classes = torch.unique(torch.cat([predictions, labels]))
    if len(classes) == 0:
        return 0.0
    scores = []
    for c in classes:
        predicted, actual = predictions == c, labels == c
        tp = int((predicted & actual).sum())
        fp = int((predicted & ~actual).sum())
        fn = int((~predicted & actual).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores))


def _correlation(
    kind: str, a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Pearson or Spearman correlation; None where it is undefined (fewer than 2 points, a constant
    input)."""
    from scipy import stats

    x = np.asarray(
        a.detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64
    ).reshape(-1)
    y = np.asarray(
        b.detach().cpu().double() if isinstance(b, torch.Tensor) else b, dtype=np.float64
    ).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"cannot correlate {len(x)} values with {len(y)}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's near-constant-input warnings
        value = (
            stats.pearsonr(x, y).statistic if kind == "pearson" else stats.spearmanr(x, y).statistic
        )
    return _finite(value)


def pearson(
    a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Pearson correlation of two equally long series; None where undefined (a constant series).

    Args:
        a: first series (any shape; flattened).
        b: second series.

    Returns:
        The correlation in [-1, 1], or None.
    """
    return _correlation("pearson", a, b)


def spearman(
    a: torch.Tensor | np.ndarray | list, b: torch.Tensor | np.ndarray | list
) -> float | None:
    """Spearman rank correlation of two equally long series; None where undefined (a constant
    series).

    Args:
        a: first series (any shape; flattened).
        b: second series.

    Returns:
        The correlation in [-1, 1], or None.
    """
    return _correlation("spearman", a, b)


def _finite(value: float | None) -> float | None:
    """A plain float, or None for NaN and infinities (so reports are strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
