"""Structured pruning: choose the least important units, remove them physically, keep the config
true.

A :class:`PruningPlan` names the heads, FFN neurons and whole MLPs to remove (indices of the model
as it is). :func:`plan_pruning` builds one from importance scores and a target; :func:`prune_model`
carries it out and rewrites the config in the same call, in one of three layouts:

* ``uniform``: every layer keeps the same sizes, written as the stock global attributes, so the
  folder loads with stock ``AutoModel...from_pretrained``. FFN sizes work for every family; head
  counts only where the config can say them (Llama, Mistral, Qwen2, Qwen3 carry an explicit
  ``head_dim``).
* ``per_layer``: each layer keeps what its scores say; sizes go to ``config.per_layer_config``
  (transformers' heterogeneous format) and the folder ships ``modeling_slimformer.py`` through
  ``auto_map``, loaded with ``trust_remote_code=True``.
* ``nemotron_nas`` (Llama): per-layer shapes in NVIDIA's Nemotron-NAS format, which vLLM and
  llama.cpp serve; the plan is constrained to what that format states (whole attention blocks, FFN
  widths in multiples of 256: :mod:`slimformer.pruning.layouts.nemotron_nas`).

Each layout is an object behind one protocol (:mod:`slimformer.pruning.layouts`). The modules:
:mod:`.types` (plans, targets, records), :mod:`.ranking` (units by score), :mod:`.plan`
(:func:`plan_pruning`), :mod:`.remove` (:func:`remove_units`, compensation and refits),
:mod:`.depth` (whole layers) and :mod:`.schedules` (:func:`one_shot_prune`, and
:func:`iterative_prune`, Michel's and Prasanna's schedule: remove a step of what remains,
re-score, evaluate, and stop at the target or when the metric falls below a floor).
"""

from slimformer.pruning.depth import drop_layers, layers_to_drop, plan_depth
from slimformer.pruning.layouts import (
    DEFAULT_LAYOUT,
    LAYOUTS,
    STOCK_LAYOUT,
    Layout,
    apply_layout,
    layout_for,
)
from slimformer.pruning.plan import plan_pruning
from slimformer.pruning.remove import (
    predicted_parameters,
    prune_model,
    refit_keys,
    remove_units,
)
from slimformer.pruning.schedules import iterative_prune, one_shot_prune
from slimformer.pruning.types import (
    GqaUnit,
    LayoutName,
    PruneResult,
    PruningPlan,
    PruningRecord,
    PruningTarget,
    Ranking,
    UnitRequest,
    Units,
)

__all__ = [
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "GqaUnit",
    "Layout",
    "LayoutName",
    "PruneResult",
    "PruningPlan",
    "PruningRecord",
    "PruningTarget",
    "Ranking",
    "UnitRequest",
    "Units",
    "apply_layout",
    "drop_layers",
    "iterative_prune",
    "layers_to_drop",
    "layout_for",
    "STOCK_LAYOUT",
    "one_shot_prune",
    "plan_depth",
    "plan_pruning",
    "predicted_parameters",
    "prune_model",
    "refit_keys",
    "remove_units",
]
