"""The ``uniform`` layout: every layer keeps the same sizes, written as the stock global
attributes, so the folder loads with stock ``AutoModel...from_pretrained``.

FFN sizes work for every family; head counts only where the config can say them (Llama, Mistral,
Qwen2, Qwen3 carry an explicit ``head_dim``: :attr:`~slimformer.families.Family.uniform_heads`).
Every layer loses the same share, so no layer can be protected and no MLP can go whole; output
biases only where a stock flag builds them.
"""

from __future__ import annotations

from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.families import Family
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.pruning.layouts.biases import unstated_biases
from slimformer.pruning.ranking import by_scores
from slimformer.pruning.types import PruningPlan, PruningTarget, UnitRequest, Units


class Uniform:
    """Every layer one shape, in the family's stock config."""

    name = "uniform"
    removes_attention_blocks = False

    def check(self, adapter: ModelAdapter, target: PruningTarget) -> None:
        """Refuse head pruning the family's config cannot state, whole MLPs and protected layers."""
        wants_heads = (
            target.heads > 0 or target.macs_budget is not None or target.params_budget is not None
        )
        if wants_heads and not adapter.family.uniform_heads:
            raise InvalidSpec(
                f"the uniform layout cannot express head pruning for {adapter.family.name}: its "
                "config derives the head size from hidden_size / num_attention_heads, so fewer "
                "heads would change the head size. Use layout 'per_layer' (loads with "
                "trust_remote_code=True) or prune only FFN neurons.",
                details={"field": "layout"},
            )
        if target.whole_mlps:
            raise InvalidSpec(
                "the uniform layout cannot remove whole MLPs (every layer would need the same "
                "size); use 'per_layer'",
                details={"field": "layout"},
            )
        if target.keep_first_layers or target.keep_last_layers:
            raise InvalidSpec(
                "the uniform layout gives every layer the same shape, so first or last layers "
                "cannot keep theirs; set keep_first_layers and keep_last_layers to 0 or use layout "
                "'per_layer'",
                details={"field": "layout"},
            )

    def check_compensation(self, adapter: ModelAdapter, target: PruningTarget, method: str) -> None:
        """Refuse, before anything is removed, bias compensation the stock config cannot express."""
        missing = _unflagged_parts(adapter, target)
        if missing:
            raise InvalidSpec(
                f"bias compensation puts a bias on the {' and '.join(missing)} output projection, "
                f"which {adapter.family.name}'s stock config cannot express; use layout "
                "'per_layer' (its modelling code has the bias) or turn bias_compensation off",
                details={"field": "bias_compensation"},
            )

    def refit_bias(self, adapter: ModelAdapter, target: PruningTarget) -> bool:
        """Only where a stock flag can state the biases the refit would set."""
        return not _unflagged_parts(adapter, target)

    def choose_units(self, request: UnitRequest) -> Units:
        return by_scores(request, equal_shares=True)

    def check_plan(self, model: nn.Module, adapter: ModelAdapter, plan: PruningPlan) -> None:
        """Refuse head counts the family's config cannot state (before anything is removed)."""
        if plan.heads and adapter.family.uniform_heads:
            heads_left = adapter.sizes(0).heads - len(plan.heads.get(0, []))
            _check_heads_divide(adapter.family, model.config.hidden_size, heads_left)

    def apply(self, model: nn.Module) -> None:
        """Set the stock global attributes from the layers' real sizes (every layer must agree)."""
        adapter = ModelAdapter(model)
        family = adapter.family
        sizes = adapter.all_sizes()
        config = model.config
        distinct = {(s.heads, s.kv_heads, s.intermediate, s.mlp_removed) for s in sizes}
        if len(distinct) != 1:
            raise InvalidSpec(
                "the layers differ in size, which the uniform layout cannot express; use "
                "'per_layer'",
                details={"sizes": sorted(distinct)},
            )
        s = sizes[0]
        if s.mlp_removed:
            raise InvalidSpec("the uniform layout cannot express removed MLPs; use 'per_layer'")
        if family.uniform_heads:
            _check_heads_divide(family, config.hidden_size, s.heads)
            config.head_dim = adapter.head_dim
            setattr(config, family.heads_attr, s.heads)
            setattr(config, family.kv_heads_attr, s.kv_heads)
        elif s.heads != bundled.layer_sizes(config, family.name, 0)["heads"]:
            raise InvalidSpec(
                f"the uniform layout cannot express head pruning for {family.name}; use 'per_layer'"
            )
        _write_biases(model, adapter)
        setattr(config, family.ffn_attr, s.intermediate)


def _unflagged_parts(adapter: ModelAdapter, target: PruningTarget) -> list[str]:
    """The parts (``attention``, ``mlp``) the target prunes whose output projection no stock flag
    of the family can give a bias."""
    flags = adapter.family.bias_flags
    if flags is None:
        return []  # BERT-like, DistilBERT and GPT-2 projections have biases already
    wants = [
        part for part, fraction in (("attention", target.heads), ("mlp", target.ffn)) if fraction
    ]
    if target.macs_budget is not None or target.params_budget is not None:
        wants = ["attention", "mlp"]
    return [part for part in wants if part not in flags]


def _check_heads_divide(family: Family, hidden: int, heads: int) -> None:
    # Qwen3's config takes head_dim as given; the others' configs insist that the head count
    # divides hidden_size even when head_dim is stated
    if family.heads_divide_hidden and hidden % heads:
        raise InvalidSpec(
            f"{family.name}'s config requires the head count to divide hidden_size ({hidden}); "
            f"{heads} heads per layer does not. Choose another fraction or layout 'per_layer'.",
            details={"field": "heads"},
        )


def _write_biases(model: nn.Module, adapter: ModelAdapter) -> None:
    """Make the stock flags (``attention_bias``, ``mlp_bias``) say which output projections carry
    a bias (FLAP's compensation gives some a bias the family's stock config does not build); a
    flag gives every projection of its part a bias, so the others get zero ones."""
    family = adapter.family
    for part in unstated_biases(model, adapter):
        flag = family.bias_flags.get(part)
        if flag is None:
            raise InvalidSpec(
                f"{family.name}'s stock config cannot give the {part} output projection a bias; "
                "use layout 'per_layer'",
                details={"field": "layout"},
            )
        setattr(model.config, flag, True)
        for layer in adapter.layers:
            for name in family.projections(part):  # a flag gives them all a bias together
                bundled.add_bias(layer.get_submodule(name))
