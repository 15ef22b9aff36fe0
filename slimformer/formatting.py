"""How slimformer writes measured numbers for people: the evaluation card, the command line's
summary and anything else that shows a metric, a change, a size or a speed-up.

Kept torch-free and free of the rest of the library (it imports only the standard library), and
outside ``slimformer.card`` so that importing it runs no card machinery (huggingface_hub, the
models module, torch): the client command line uses it, and so can the API, whose imports of the
library are limited to torch-free modules (``tests/test_architecture.py``).
"""

from __future__ import annotations

import math

# metrics that are fractions (shown as percent, changes in percentage points) and metrics where
# lower is better and a change is a factor (perplexity 12 -> 24 is "x2.00", not "+12.0000")
PERCENT_METRICS = ("accuracy", "macro_f1", "next_token_accuracy")
RATIO_METRICS = ("perplexity",)
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "perplexity": "Perplexity",
    "next_token_accuracy": "Next-token accuracy",
    "cosine_to_original": "Cosine to original",
}


def format_number(value: float | int | None) -> str:
    """A measured number as people read it: thousands separators, about four significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "∞" if value > 0 else ("−∞" if value < 0 else "n/a")
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    for limit, digits in ((100, 1), (10, 2), (1, 3)):
        if magnitude >= limit:
            return f"{value:.{digits}f}"
    if value == 0:
        return "0"
    return f"{value:.4f}" if magnitude >= 1e-3 else f"{value:.2e}"


def format_metric(value: float | int | None, metric: str | None = None) -> str:
    """A metric value: fractions as percent (``87.50%``), others as :func:`format_number`."""
    if value is not None and metric in PERCENT_METRICS:
        return f"{100 * value:.2f}%"
    return format_number(value)


def format_factor(factor: float) -> str:
    """``×1.25``, ``×12.3``, ``×59,695``: a ratio with sensible digits."""
    if not math.isfinite(factor):
        return "×∞"
    if factor >= 1000:
        return f"×{factor:,.0f}"
    return f"×{factor:.1f}" if factor >= 10 else f"×{factor:.2f}"


def format_speedup(speedup: float) -> str:
    """``×1.98 faster`` or, below 1, ``×1.05 slower``: a latency ratio as a person reads it."""
    if speedup >= 1 or speedup <= 0:
        return f"{format_factor(speedup)} faster"
    return f"{format_factor(1 / speedup)} slower"


def format_change(before: float | None, after: float | None, metric: str | None = None) -> str:
    """The change of a metric: percentage points for fractions, a factor for perplexity, else the
    difference."""
    if before is None or after is None:
        return ""
    if metric in PERCENT_METRICS:
        return f"{100 * (after - before):+.2f} pt"
    if metric in RATIO_METRICS:
        return format_factor(after / before) if before > 0 else ""
    difference = after - before
    if abs(difference) >= 1000:
        return f"{difference:+,.0f}"
    if abs(difference) >= 1e-3 or difference == 0:
        return f"{difference:+.3f}"
    return f"{difference:+.1e}"


def format_relative(before: float | int | None, after: float | int | None) -> str:
    """The relative change of a size (``-37.5%``); empty when unknown."""
    if not before or after is None:
        return ""
    return f"{after / before - 1:+.1%}"


def format_agreement(agreement: float, task: str) -> str:
    """Agreement with the original model: a share of identical predictions (``97.50%``), or for
    embeddings the mean cosine to the original's (``0.9812 mean cosine``)."""
    if task == "feature-extraction":
        return f"{agreement:.4f} mean cosine"
    return f"{agreement:.2%}"


def format_ms(milliseconds: float) -> str:
    """A latency in milliseconds, to a hundredth (``3.21``)."""
    return f"{milliseconds:.2f}"


def format_megabytes(size: float | None, *, thousands: bool = True) -> str:
    """A size in bytes as megabytes (``1,234.6 MB``; without ``thousands``, ``1234.6 MB``); ``—``
    when unknown."""
    if size is None:
        return "—"
    return f"{size / 1e6:,.1f} MB" if thousands else f"{size / 1e6:.1f} MB"


def format_rate(value: float | None) -> str:
    """A rate such as tokens per second (``1,234.5``); ``—`` when it was not measured."""
    return "—" if value is None else f"{value:,.1f}"
