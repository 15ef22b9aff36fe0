"""How much each attention head, FFN neuron, whole MLP and whole layer of a model matters.

One module per method:

* :mod:`~slimformer.importance.michel`: gradients of the loss with respect to gates (Michel et al.
  2019; Prasanna et al. 2020 for whole MLPs), the default for classifiers;
* :mod:`~slimformer.importance.activations`: activation magnitudes (Minitron), forward passes only;
* :mod:`~slimformer.importance.flap`: FLAP's fluctuation metric, with the channel means that bias
  compensation folds into the pruned model;
* :mod:`~slimformer.importance.obs`: the structured OBS criterion (the output error a unit's
  removal leaves after a least-squares refit of the layer's output projection), forward passes only;
* :mod:`~slimformer.importance.depth`: whole layers, by block influence (ShortGPT) or by the loss
  increase when a layer is skipped;
* :mod:`~slimformer.importance.baselines`: weight magnitude and a seeded random order.

:func:`score_importance` is the one entry point for heads, neurons and MLPs; :func:`score_depth`
for layers.
"""

from slimformer.importance.activations import score_activations
from slimformer.importance.base import (
    CancelFn,
    DepthImportance,
    Importance,
    ImportanceMethod,
    LossKind,
    ProgressFn,
)
from slimformer.importance.baselines import score_magnitude, score_random
from slimformer.importance.depth import block_influence, metric_drop, score_depth
from slimformer.importance.flap import score_flap
from slimformer.importance.grams import input_grams
from slimformer.importance.michel import Gates, compute_loss, gated, score_michel
from slimformer.importance.obs import score_obs
from slimformer.importance.scoring import METHODS, score_importance

__all__ = [
    "METHODS",
    "CancelFn",
    "DepthImportance",
    "Gates",
    "Importance",
    "ImportanceMethod",
    "LossKind",
    "ProgressFn",
    "block_influence",
    "compute_loss",
    "gated",
    "input_grams",
    "metric_drop",
    "score_activations",
    "score_depth",
    "score_flap",
    "score_importance",
    "score_magnitude",
    "score_michel",
    "score_obs",
    "score_random",
]
