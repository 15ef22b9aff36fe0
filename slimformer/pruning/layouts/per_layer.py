"""The ``per_layer`` layout: each layer keeps what its scores say.

Sizes go to ``config.per_layer_config`` (transformers' heterogeneous format) and the folder ships
``modeling_slimformer.py`` through ``auto_map``, loaded with ``trust_remote_code=True``. The bundled
modelling code states anything a plan removes: heads, neurons and whole MLPs in any layer, and
output biases (``projection_bias``).
"""

from __future__ import annotations

from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import UnsupportedArchitecture
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.models import AUTO_CLASS_FOR_TASK, model_task
from slimformer.pruning.layouts.biases import unstated_biases
from slimformer.pruning.ranking import by_scores
from slimformer.pruning.types import PruningPlan, PruningTarget, UnitRequest, Units


class PerLayer:
    """Every layer its own shape, in slimformer's bundled modelling code."""

    name = "per_layer"
    removes_attention_blocks = False

    def check(self, adapter: ModelAdapter, target: PruningTarget) -> None:
        """Every target can be stated layer by layer."""

    def check_compensation(self, adapter: ModelAdapter, target: PruningTarget, method: str) -> None:
        """The bundled code builds any output bias the compensation sets."""

    def refit_bias(self, adapter: ModelAdapter, target: PruningTarget) -> bool:
        return True

    def choose_units(self, request: UnitRequest) -> Units:
        return by_scores(request, equal_shares=False)

    def check_plan(self, model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> None:
        """Every plan can be stated layer by layer."""

    def apply(self, model: nn.Module) -> None:
        """Write ``per_layer_config`` from the layers' real sizes and point ``auto_map`` at the
        bundled modelling code."""
        adapter = ModelAdapter(model)
        family = adapter.family
        config = model.config
        per_layer = {}
        for i, s in enumerate(adapter.all_sizes()):
            entry = {family.heads_attr: s.heads, family.ffn_attr: s.intermediate}
            if family.grouped:
                entry[family.kv_heads_attr] = s.kv_heads
            if s.mlp_removed:
                entry["skip"] = ["mlp"]
            per_layer[i] = entry
        try:
            config_name, model_name = bundled.class_names(family.name, type(model).__name__)
        except KeyError:
            raise UnsupportedArchitecture(
                f"the per_layer layout has no bundled class for {type(model).__name__}; it covers "
                "the base model, sequence classification and (for decoders) causal LM heads. Use "
                "layout 'uniform' for FFN-only pruning.",
                details={"model_class": type(model).__name__},
            ) from None
        if not getattr(config, "head_dim", None):
            config.head_dim = (
                adapter.head_dim
            )  # the global head count no longer tells the head size
        _write_biases(model, adapter)
        config.__class__ = getattr(bundled, config_name)
        config.per_layer_config = per_layer
        config.auto_map = {
            "AutoConfig": f"modeling_slimformer.{config_name}",
            AUTO_CLASS_FOR_TASK[model_task(model)]: f"modeling_slimformer.{model_name}",
        }


def _write_biases(model: nn.Module, adapter: ModelAdapter) -> None:
    """Make ``projection_bias`` name the output projections that carry a bias (FLAP's
    compensation gives some a bias the family's stock config does not build), and give them one in
    every layer, as the bundled code builds them."""
    family = adapter.family
    if family.bias_flags is None:
        return
    config = model.config
    needed = unstated_biases(model, adapter)
    extra = set(getattr(config, "projection_bias", None) or ()) | {
        family.output_projection(p) for p in needed
    }
    if not extra:
        return
    config.projection_bias = sorted(extra)
    for layer in adapter.layers:
        for path in config.projection_bias:
            bundled.add_bias(layer.get_submodule(path))
