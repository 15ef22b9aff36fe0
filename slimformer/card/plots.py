"""The card's pictures, PNGs next to ``README.md``: the head-importance heatmap and the
metric-vs-fraction-pruned curve.

matplotlib is imported inside the plotting functions, after choosing its file-only Agg backend, so
importing the card costs no matplotlib start-up.
"""

from __future__ import annotations

from pathlib import Path

from slimformer.formatting import METRIC_LABELS
from slimformer.report import CompressionReport, CurvePoint

HEATMAP = "head_importance.png"
CURVE = "pruning_curve.png"


def draw_plots(report: CompressionReport, folder: Path) -> tuple[str | None, str | None]:
    """Draw the plots the report has data for into ``folder``; their file names (None for a plot
    not drawn): the heatmap and the curve."""
    pruning, importance = report.pruning, report.importance
    heatmap = curve = None
    if importance and importance.heads:
        plot_head_heatmap(
            importance.heads, pruning.removed_heads if pruning else {}, folder / HEATMAP
        )
        heatmap = HEATMAP
    if pruning and len(pruning.curve) > 1:
        plot_pruning_curve(pruning.curve, report.evaluation.primary_metric, folder / CURVE)
        curve = CURVE
    return heatmap, curve


def plot_head_heatmap(heads: list[list[float]], removed: dict[str, list[int]], path: Path) -> Path:
    """Layers x heads importance, removed heads crossed out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = max(len(h) for h in heads)
    grid = np.full((len(heads), width), np.nan)
    for i, row in enumerate(heads):
        grid[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * width + 2), max(2.5, 0.4 * len(heads) + 1.5)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for layer, idx in removed.items():
        for head in idx:
            ax.text(
                head,
                int(layer),
                "x",
                ha="center",
                va="center",
                color="white",
                fontsize=11,
                fontweight="bold",
            )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(len(heads)))
    ax.set_title("Head importance (x = removed)")
    fig.colorbar(image, ax=ax, label="importance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pruning_curve(curve: list[CurvePoint], metric: str, path: Path) -> Path:
    """Metric against the fraction of heads (and FFN neurons) removed, one point per iterative
    step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = [p.heads_removed for p in curve]
    y = [p.metric for p in curve]
    ax.plot(x, y, marker="o", label="heads removed")
    if any(p.ffn_removed for p in curve):
        ax.plot(
            [p.ffn_removed for p in curve],
            y,
            marker="s",
            linestyle="--",
            label="FFN neurons removed",
        )
    rejected = [p for p in curve if not p.kept]
    if rejected:
        ax.scatter(
            [p.heads_removed for p in rejected],
            [p.metric for p in rejected],
            color="red",
            zorder=3,
            label="below the floor (undone)",
        )
    ax.set_xlabel("fraction removed")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("Iterative pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
