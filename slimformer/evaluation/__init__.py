"""Measuring models: predictions, task metrics, parameters, MACs and latency, and the side-by-side
evaluation of an original and a compressed model (:func:`evaluate_side_by_side`).

MACs are counted analytically from each layer's real sizes (so a per-layer pruned model is counted
as it is, not as its config's global values say) and checked against ``torch.utils.flop_counter``
in the tests.

Next-token metrics (perplexity, next-token accuracy, greedy agreement) count a position when both
the token that is predicted and the token it is predicted from are real (attention mask 1, label not
-100): padding never enters them, whichever side it is on.

- ``metrics``: predictions and task metrics (accuracy, macro F1, correlations, :func:`task_metric`);
- ``lm``: next-token statistics of causal LMs and the speed of generation;
- ``efficiency``: latency, throughput and the bytes of the weights;
- ``side_by_side``: :func:`evaluate_side_by_side`.
"""

from slimformer.evaluation.efficiency import Latency, measure_latency, weight_bytes
from slimformer.evaluation.lm import (
    NextTokenScores,
    generation_speed,
    next_token_accuracy,
    perplexity,
    score_next_tokens,
)
from slimformer.evaluation.metrics import (
    accuracy,
    macro_f1,
    pearson,
    predict,
    spearman,
    task_metric,
)
from slimformer.evaluation.side_by_side import CancelFn, ProgressFn, evaluate_side_by_side

# parameter and MAC counts live with the other facts about a model; callers measuring a model
# find them here too
from slimformer.models import count_macs, count_parameters

__all__ = [
    "CancelFn",
    "Latency",
    "NextTokenScores",
    "ProgressFn",
    "accuracy",
    "count_macs",
    "count_parameters",
    "evaluate_side_by_side",
    "generation_speed",
    "macro_f1",
    "measure_latency",
    "next_token_accuracy",
    "pearson",
    "perplexity",
    "predict",
    "score_next_tokens",
    "spearman",
    "task_metric",
    "weight_bytes",
]
