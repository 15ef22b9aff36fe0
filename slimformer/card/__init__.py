"""The evaluation card: a Hugging Face model card that puts the original and the compressed model
side by side.

Built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` / ``EvalResult`` (metadata the Hub
reads: ``base_model``, tags, ``pipeline_tag``, ``license``, ``model-index``) and a Jinja template
for the body. Plots are PNGs next to ``README.md``: the head-importance heatmap and the
metric-vs-fraction-pruned curve.

- ``build``: :func:`build_card`, the template rendered into ``README.md``;
- ``template.md.j2``: the card's body;
- ``metadata``: the YAML header (``ModelCardData``, ``model-index``);
- ``tables``: the side-by-side table, what was removed, the files to serve;
- ``prose``: the sentences (summary, method, origin, how to load and serve);
- ``plots``: the heatmap and the pruning curve.

How numbers are written lives in :mod:`slimformer.formatting`, outside this package, so that the
command line and the API can format a metric without importing this package's huggingface_hub and
torch (``prose`` needs the models module for the Auto class of a task); it is re-exported here.
"""

from slimformer.card.build import TEMPLATE, build_card
from slimformer.card.metadata import HUB_URL, PIPELINE_TAG, base_hub_id, card_data, eval_results
from slimformer.card.plots import CURVE, HEATMAP, plot_head_heatmap, plot_pruning_curve
from slimformer.card.prose import LOAD_PLACEHOLDER, _origin_text, load_snippet
from slimformer.formatting import (
    METRIC_LABELS,
    PERCENT_METRICS,
    RATIO_METRICS,
    format_agreement,
    format_change,
    format_factor,
    format_metric,
    format_number,
    format_relative,
    format_speedup,
)

__all__ = [
    "CURVE",
    "HEATMAP",
    "HUB_URL",
    "LOAD_PLACEHOLDER",
    "METRIC_LABELS",
    "PERCENT_METRICS",
    "PIPELINE_TAG",
    "RATIO_METRICS",
    "TEMPLATE",
    "_origin_text",
    "base_hub_id",
    "build_card",
    "card_data",
    "eval_results",
    "format_agreement",
    "format_change",
    "format_factor",
    "format_metric",
    "format_number",
    "format_relative",
    "format_speedup",
    "load_snippet",
    "plot_head_heatmap",
    "plot_pruning_curve",
]
