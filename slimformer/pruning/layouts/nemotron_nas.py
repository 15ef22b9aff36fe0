"""The ``nemotron_nas`` layout: per-layer shapes that vLLM and llama.cpp serve natively.

Neither engine reads transformers' per-layer configs; both read NVIDIA's Nemotron-NAS format
(``DeciLMForCausalLM``, ``config.block_configs``). What that format can say, and so what the plan is
constrained to here:

* a layer keeps **all its query heads** or loses its **attention whole** (``attention.no_op``): head
  pruning becomes whole-attention removal, the blocks with the lowest attention influence first
  (:func:`slimformer.importance.depth.attention_influence`); layer 0 always keeps its attention
  (vLLM cannot start a model without it);
* an FFN's width is stated as ``ffn_mult`` and rounded up to a **multiple of 256** by both engines,
  so each layer loses whole chunks of 256 neurons: the ranking's own allocation of neurons to
  layers, rounded to chunks (largest remainder first);
* no output biases (bias compensation is refused; the least-squares refit goes through the origin);
* an MLP is never removed whole (llama.cpp drops a layer's attention output when its FFN is absent).

:meth:`NemotronNas.apply` writes the config (``block_configs``, ``architectures`` =
``DeciLMForCausalLM``, ``auto_map`` to slimformer's modelling file so transformers loads it with
``trust_remote_code=True``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.pruning.ranking import plan_neurons
from slimformer.pruning.types import PruningPlan, PruningTarget, UnitRequest, Units

STEP = bundled.DECILM_FFN_STEP
SERVED_ARCHITECTURE = "DeciLMForCausalLM"


def plan_attention(
    adapter: ModelAdapter, fraction: float, protected: set[int], scores: torch.Tensor
) -> list[int]:
    """Layers whose attention goes whole: ``fraction`` of the query heads the model has now, in
    whole blocks, the lowest ``scores`` first (never layer 0 or a protected layer)."""
    if fraction <= 0:
        return []
    sizes = adapter.all_sizes()
    per_layer = max(s.heads for s in sizes)
    count = round(fraction * sum(s.heads for s in sizes) / per_layer)
    eligible = [
        i for i, s in enumerate(sizes) if i != 0 and i not in protected and not s.attention_removed
    ]
    if count > len(eligible):
        raise InvalidSpec(
            f"removing {fraction:.0%} of the heads means removing the attention of {count} layers "
            f"whole, but only {len(eligible)} may lose it (layer 0 and the protected first/last "
            "layers keep theirs)",
            details={"field": "heads"},
        )
    order = sorted(eligible, key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def round_to_chunks(
    adapter: ModelAdapter,
    importance_neurons: list[torch.Tensor],
    fraction: float,
    wanted: dict[int, list[int]],
    protected: set[int],
) -> dict[int, list[int]]:
    """The neurons to remove, in whole chunks of 256 per layer: ``fraction`` of all neurons rounded
    to chunks, shared out as the unconstrained plan ``wanted`` shares them (each layer's count
    rounded down to chunks, the chunks left over to the largest remainders), every layer keeping at
    least one chunk; within a layer the lowest-scored neurons go."""
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    total = sum(s.intermediate for s in sizes)
    chunks = round(fraction * total / STEP)
    eligible = [i for i, s in enumerate(sizes) if i not in protected and s.intermediate > STEP]
    ideal = {layer: len(wanted.get(layer, [])) / STEP for layer in eligible}
    cap = {layer: sizes[layer].intermediate // STEP - 1 for layer in ideal}
    if chunks > sum(cap.values()):
        raise InvalidSpec(
            f"removing {fraction:.0%} of the FFN neurons in chunks of {STEP} would empty an MLP "
            "of the layers that may lose neurons; remove fewer or protect fewer layers",
            details={"field": "ffn"},
        )
    taken = {layer: min(cap[layer], math.floor(x)) for layer, x in ideal.items()}
    left = chunks - sum(taken.values())
    by_remainder = sorted(ideal, key=lambda layer: (-(ideal[layer] - taken[layer]), layer))
    while left > 0:
        progressed = False
        for layer in by_remainder:
            if left and taken[layer] < cap[layer]:
                taken[layer] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    while left < 0:  # rounding down overshot the rounded total: give back the smallest remainders
        layer = min((x for x in taken if taken[x]), key=lambda x: (ideal[x] - taken[x], x))
        taken[layer] -= 1
        left += 1
    plan = {}
    for layer, n in taken.items():
        if n:
            order = torch.argsort(importance_neurons[layer], stable=True)[: n * STEP]
            plan[layer] = sorted(int(i) for i in order)
    return plan


class NemotronNas:
    """Per-layer shapes as Nemotron-NAS block configs (Llama)."""

    name = "nemotron_nas"
    removes_attention_blocks = True

    def check(self, adapter: ModelAdapter, target: PruningTarget | None = None) -> None:
        """Refuse, before anything is scored or removed, what the layout cannot express.

        Raises:
            InvalidSpec: another family, whole MLPs, bias compensation, FFN widths that are not
                multiples of 256, a model without a causal LM head.
        """
        family = adapter.family
        if not family.nemotron_nas:
            raise InvalidSpec(
                f"the nemotron_nas layout is a Llama layout; this model is {family.name!r}. Use "
                "layout 'uniform' (stock config) for vLLM and llama.cpp, or 'per_layer' for "
                "transformers",
                details={"field": "layout"},
            )
        if target is not None and target.whole_mlps:
            raise InvalidSpec(
                "the nemotron_nas layout does not remove whole MLPs (llama.cpp drops a layer's "
                "attention output when its FFN is absent); prune FFN neurons with prune.ffn "
                "instead",
                details={"field": "whole_mlps"},
            )
        if target is not None and target.bias_compensation:
            raise InvalidSpec(
                "the nemotron_nas layout has no output biases, so bias compensation cannot be "
                "kept; turn bias_compensation off (reconstruction still refits the weights)",
                details={"field": "bias_compensation"},
            )
        for i, sizes in enumerate(adapter.all_sizes()):
            if not sizes.attention_removed and sizes.intermediate % STEP:
                raise InvalidSpec(
                    f"layer {i}'s FFN has {sizes.intermediate} neurons, not a multiple of {STEP}, "
                    "which a Nemotron-NAS block config cannot state; use layout 'uniform' or "
                    "'per_layer'",
                    details={"field": "layout"},
                )

    def check_compensation(self, adapter: ModelAdapter, target: PruningTarget, method: str) -> None:
        """Refuse bias compensation: the format has no output biases."""
        raise InvalidSpec(
            f"{method} folds removed units into output biases, which the nemotron_nas layout "
            "cannot state; set bias_compensation to false",
            details={"field": "bias_compensation"},
        )

    def refit_bias(self, adapter: ModelAdapter, target: PruningTarget) -> bool:
        """Never: the refit goes through the origin, as the format has no output biases."""
        return False

    def choose_units(self, request: UnitRequest) -> Units:
        """Heads go as whole attention blocks (the lowest ``attention_scores`` first; without them,
        the sum of each layer's head scores), FFN neurons in chunks of 256 shared out as the ranking
        would share them."""
        adapter, importance, target = request.adapter, request.importance, request.target
        protected = target.protected(adapter.num_layers)
        scores = request.attention_scores
        if scores is None:
            scores = torch.stack([h.double().sum() for h in importance.heads])
        attention = plan_attention(adapter, request.heads, protected, scores)
        wanted = plan_neurons(
            adapter, importance, request.ffn, target, equal_shares=False, skip_layers=set()
        )
        neurons = round_to_chunks(adapter, importance.neurons, request.ffn, wanted, protected)
        return Units(heads={}, neurons=neurons, attention=attention)

    def check_plan(self, model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> None:
        """The plan was built inside the format."""

    def apply(self, model: nn.Module) -> None:
        """Rewrite ``model.config`` as a Nemotron-NAS config from the layers' real sizes, and give
        the model slimformer's class for it.

        Raises:
            InvalidSpec: a layer the format cannot state (fewer query heads than the model's, an FFN
                width that is not a multiple of 256, a removed MLP, an output bias).
        """
        adapter = ModelAdapter(model)
        config = model.config
        self.check(adapter)
        heads = int(config.num_attention_heads)
        blocks = []
        for i, s in enumerate(adapter.all_sizes()):
            if s.mlp_removed:
                raise InvalidSpec(
                    f"layer {i} has no MLP, which the nemotron_nas layout cannot state"
                )
            layer = adapter.layers[i]
            biased = [
                path
                for path in (adapter.family.attention_output, adapter.family.mlp_down)
                if getattr(layer.get_submodule(path), "bias", None) is not None
            ]
            if biased and not (config.attention_bias or config.mlp_bias):
                raise InvalidSpec(
                    f"layer {i}'s {', '.join(biased)} carries a bias the nemotron_nas layout "
                    "cannot state; prune without bias compensation",
                    details={"field": "bias_compensation"},
                )
            if s.attention_removed:
                attention = {"no_op": True, "n_heads_in_group": None, "replace_with_linear": False}
            elif s.heads != heads:
                raise InvalidSpec(
                    f"layer {i} keeps {s.heads} of {heads} query heads; the nemotron_nas layout "
                    "keeps every query head or removes the attention whole",
                    details={"field": "layout"},
                )
            else:
                attention = {
                    "no_op": False,
                    "n_heads_in_group": s.heads // s.kv_heads,
                    "replace_with_linear": False,
                }
            ffn = {
                "no_op": False,
                "ffn_mult": bundled.decilm_ffn_mult(s.intermediate, config.hidden_size),
                "replace_with_linear": False,
            }
            blocks.append({"attention": attention, "ffn": ffn})
        if not getattr(config, "head_dim", None):
            config.head_dim = adapter.head_dim
        config.__class__ = bundled.SlimformerDeciLMConfig
        config.block_configs = bundled.decilm_blocks(blocks)
        config.auto_map = {
            "AutoConfig": "modeling_slimformer.SlimformerDeciLMConfig",
            "AutoModelForCausalLM": "modeling_slimformer.SlimformerDeciLMForCausalLM",
        }
        if type(model).__name__ != "LlamaForCausalLM" and not isinstance(
            model, bundled.SlimformerDeciLMForCausalLM
        ):
            raise InvalidSpec(
                "the nemotron_nas layout is written for causal LMs; this is "
                f"{type(model).__name__}",
                details={"field": "layout"},
            )
        model.__class__ = bundled.SlimformerDeciLMForCausalLM
