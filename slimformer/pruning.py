"""Structured pruning: choose the least important units, remove them physically, keep the config true.

A :class:`PruningPlan` names the heads, FFN neurons and whole MLPs to remove (indices of the model as
it is). :func:`plan_pruning` builds one from importance scores and a target; :func:`prune_model` carries
it out and rewrites the config in the same call, in one of two layouts:

* ``uniform``: every layer keeps the same sizes, written as the stock global attributes, so the folder
  loads with stock ``AutoModel...from_pretrained``. FFN sizes work for every family; head counts only
  where the config can say them (Llama, Mistral, Qwen2, Qwen3 carry an explicit ``head_dim``).
* ``per_layer``: each layer keeps what its scores say; sizes go to ``config.per_layer_config``
  (transformers' heterogeneous format) and the folder ships ``modeling_slimformer.py`` through
  ``auto_map``, loaded with ``trust_remote_code=True``.

:func:`iterative_prune` is Michel's and Prasanna's schedule: remove a step of what remains, re-score,
evaluate, and stop at the target or when the metric falls below a floor.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec, UnsupportedArchitecture
from slimformer.importance import Importance
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.models import count_macs, count_parameters

logger = logging.getLogger(__name__)

Layout = Literal["uniform", "per_layer"]
Ranking = Literal["global", "per_layer"]
GqaUnit = Literal["groups", "query_heads"]
UNIFORM_HEAD_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class PruningPlan:
    """Units to remove, by layer, as indices into the model as it is now."""

    heads: dict[int, list[int]] = field(default_factory=dict)
    neurons: dict[int, list[int]] = field(default_factory=dict)
    mlps: list[int] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not any(self.heads.values()) and not any(self.neurons.values()) and not self.mlps

    def to_dict(self) -> dict:
        return {
            "heads": {str(k): v for k, v in sorted(self.heads.items()) if v},
            "neurons": {str(k): len(v) for k, v in sorted(self.neurons.items()) if v},
            "mlps": sorted(self.mlps),
        }


@dataclass
class PruningTarget:
    """What to remove. Fractions are of the units the model has now, in [0, 1)."""

    heads: float = 0.0
    ffn: float = 0.0
    whole_mlps: int = 0
    macs_budget: float | None = None  # keep at most this fraction of the MACs (0, 1]
    params_budget: float | None = None  # keep at most this fraction of the parameters (0, 1]
    ranking: Ranking = "global"
    gqa_unit: GqaUnit = "groups"
    min_heads_per_layer: int = 1

    def validate(self) -> None:
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise InvalidSpec(f"{name} must be a fraction in [0, 1), got {value!r}", details={"field": name})
        if self.whole_mlps < 0:
            raise InvalidSpec(f"whole_mlps must be 0 or more, got {self.whole_mlps}", details={"field": "whole_mlps"})
        for name in ("macs_budget", "params_budget"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value <= 1.0):
                raise InvalidSpec(f"{name} must be in (0, 1], got {value!r}", details={"field": name})
        if self.macs_budget is not None and self.params_budget is not None:
            raise InvalidSpec("give macs_budget or params_budget, not both")
        if self.min_heads_per_layer < 1:
            raise InvalidSpec("min_heads_per_layer must be at least 1: a layer without attention is not supported")


@dataclass
class PruningRecord:
    """What was removed, in the original model's numbering, across every step."""

    original_heads: list[int]
    kept_heads: list[list[int]]
    original_neurons: list[int]
    kept_neurons: list[int]
    removed_mlps: list[int] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)

    @classmethod
    def start(cls, adapter: ModelAdapter) -> PruningRecord:
        sizes = adapter.all_sizes()
        return cls(
            original_heads=[s.heads for s in sizes],
            kept_heads=[list(range(s.heads)) for s in sizes],
            original_neurons=[s.intermediate for s in sizes],
            kept_neurons=[s.intermediate for s in sizes],
        )

    def apply(self, plan: PruningPlan, adapter: ModelAdapter) -> None:
        for layer, idx in plan.heads.items():
            drop = set(idx)
            self.kept_heads[layer] = [h for i, h in enumerate(self.kept_heads[layer]) if i not in drop]
        for layer in plan.mlps:
            self.removed_mlps.append(layer)
        self.kept_neurons = [0 if s.mlp_removed else s.intermediate for s in adapter.all_sizes()]

    def removed_heads(self) -> dict[int, list[int]]:
        return {
            layer: sorted(set(range(n)) - set(self.kept_heads[layer]))
            for layer, n in enumerate(self.original_heads)
        }

    def to_dict(self) -> dict:
        return {
            "removed_heads": {str(k): v for k, v in self.removed_heads().items()},
            "heads_per_layer": [len(k) for k in self.kept_heads],
            "original_heads_per_layer": self.original_heads,
            "neurons_per_layer": self.kept_neurons,
            "original_neurons_per_layer": self.original_neurons,
            "removed_mlps": sorted(self.removed_mlps),
            "curve": self.curve,
        }


def _lowest(scores: list[tuple[float, int, int]], count: int, cap: dict[int, int]) -> dict[int, list[int]]:
    """The ``count`` lowest (score, layer, unit) entries, taking at most ``cap[layer]`` per layer."""
    chosen: dict[int, list[int]] = {}
    for _score, layer, unit in sorted(scores):
        if count <= 0:
            break
        if len(chosen.get(layer, [])) < cap[layer]:
            chosen.setdefault(layer, []).append(unit)
            count -= 1
    return chosen


def _plan_heads(
    adapter: ModelAdapter, importance: Importance, fraction: float, target: PruningTarget, uniform: bool
) -> dict[int, list[int]]:
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    groups = [adapter.group_size(i) for i in range(adapter.num_layers)]
    per_layer = target.ranking == "per_layer" or uniform
    if adapter.grouped and target.gqa_unit == "query_heads":
        # The same number of query heads leaves every KV group of every layer.
        plan = {}
        for layer, s in enumerate(sizes):
            g = groups[layer]
            keep_min = max(1, math.ceil(target.min_heads_per_layer / s.kv_heads))
            r = min(round(fraction * g), g - keep_min)
            if r <= 0:
                continue
            scores = importance.heads[layer]
            plan[layer] = [
                h
                for kv in range(s.kv_heads)
                for h in sorted(range(kv * g, (kv + 1) * g), key=lambda h: float(scores[h]))[:r]
            ]
        return plan
    # Units are KV groups (single heads without grouped-query attention): their query heads go together.
    units, cap = [], {}
    for layer, s in enumerate(sizes):
        g = groups[layer]
        group_scores = importance.heads[layer].reshape(s.kv_heads, g).sum(1)
        keep_min = max(1, math.ceil(target.min_heads_per_layer / g))
        cap[layer] = max(0, s.kv_heads - keep_min)
        units.extend((float(group_scores[u]), layer, u) for u in range(s.kv_heads))
    if per_layer:
        chosen = {}
        for layer, s in enumerate(sizes):
            n = min(round(fraction * s.kv_heads), cap[layer])
            layer_units = [u for u in units if u[1] == layer]
            chosen.update(_lowest(layer_units, n, cap))
    else:
        n_units = round(fraction * len(units))
        if n_units > sum(cap.values()):
            raise InvalidSpec(
                f"removing {fraction:.0%} of the heads would empty a layer's attention; at most "
                f"{sum(cap.values()) / len(units):.0%} can go while every layer keeps "
                f"{target.min_heads_per_layer} head(s)"
            )
        chosen = _lowest(units, n_units, cap)
    return {
        layer: sorted(h for u in us for h in range(u * groups[layer], (u + 1) * groups[layer]))
        for layer, us in chosen.items()
    }


def _plan_neurons(
    adapter: ModelAdapter, importance: Importance, fraction: float, target: PruningTarget, uniform: bool,
    skip_layers: set[int],
) -> dict[int, list[int]]:
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    live = [i for i, s in enumerate(sizes) if not s.mlp_removed and i not in skip_layers]
    if target.ranking == "per_layer" or uniform:
        plan = {}
        for layer in live:
            n = round(fraction * sizes[layer].intermediate)
            order = torch.argsort(importance.neurons[layer], stable=True)[:n]
            plan[layer] = sorted(int(i) for i in order)
        return plan
    scores = torch.cat([importance.neurons[i] for i in live])
    owners = torch.cat([torch.full((sizes[i].intermediate,), i) for i in live])
    positions = torch.cat([torch.arange(sizes[i].intermediate) for i in live])
    n = round(fraction * len(scores))
    order = torch.argsort(scores, stable=True)[:n]
    plan: dict[int, list[int]] = {}
    for k in order.tolist():
        plan.setdefault(int(owners[k]), []).append(int(positions[k]))
    return {layer: sorted(v) for layer, v in plan.items()}


def plan_pruning(
    model: nn.Module,
    importance: Importance,
    target: PruningTarget,
    *,
    layout: Layout = "per_layer",
    seq_len: int = 128,
) -> PruningPlan:
    """Choose the units to remove so that ``target`` is met.

    Raises:
        InvalidSpec: fractions out of range, a target that empties every layer's attention, a request
            the ``uniform`` layout cannot express for this family.
    """
    target.validate()
    adapter = ModelAdapter(model)
    uniform = layout == "uniform"
    if layout not in ("uniform", "per_layer"):
        raise InvalidSpec(f"layout must be 'uniform' or 'per_layer', got {layout!r}", details={"field": "layout"})
    wants_heads = target.heads > 0 or target.macs_budget is not None or target.params_budget is not None
    if uniform and wants_heads and adapter.family.name not in UNIFORM_HEAD_FAMILIES:
        raise InvalidSpec(
            f"the uniform layout cannot express head pruning for {adapter.family.name}: its config derives "
            "the head size from hidden_size / num_attention_heads, so fewer heads would change the head size. "
            "Use layout 'per_layer' (loads with trust_remote_code=True) or prune only FFN neurons.",
            details={"field": "layout"},
        )
    if uniform and target.whole_mlps:
        raise InvalidSpec(
            "the uniform layout cannot remove whole MLPs (every layer would need the same size); use 'per_layer'",
            details={"field": "layout"},
        )
    sizes = adapter.all_sizes()
    live_mlps = [i for i, s in enumerate(sizes) if not s.mlp_removed]
    if target.whole_mlps > len(live_mlps):
        raise InvalidSpec(f"whole_mlps={target.whole_mlps} but the model has {len(live_mlps)} MLPs")
    mlps = sorted(sorted(live_mlps, key=lambda i: float(importance.mlps[i]))[: target.whole_mlps])

    def build(head_fraction: float, ffn_fraction: float) -> PruningPlan:
        return PruningPlan(
            heads=_plan_heads(adapter, importance, head_fraction, target, uniform),
            neurons=_plan_neurons(adapter, importance, ffn_fraction, target, uniform, set(mlps)),
            mlps=mlps,
        )

    budget = target.macs_budget or target.params_budget
    if budget is None:
        plan = build(target.heads, target.ffn)
    else:
        # The same fraction of heads and of FFN neurons, as small as meets the budget.
        measure = (lambda m: count_macs(m, seq_len)) if target.macs_budget else count_parameters
        full = measure(model)
        low, high, plan = 0.0, 0.95, None
        for _ in range(20):
            mid = (low + high) / 2
            candidate = build(mid, mid)
            if measure(_pruned_copy(model, candidate)) <= budget * full:
                plan, high = candidate, mid
            else:
                low = mid
        if plan is None:
            raise InvalidSpec(f"no plan keeps at most {budget:.0%} of the {'MACs' if target.macs_budget else 'parameters'}")
    if uniform and plan.heads and adapter.family.name in ("llama", "mistral", "qwen2"):
        heads_left = sizes[0].heads - len(plan.heads.get(0, []))
        hidden = model.config.hidden_size
        if hidden % heads_left:
            raise InvalidSpec(
                f"{adapter.family.name}'s config requires the head count to divide hidden_size ({hidden}); "
                f"{heads_left} heads per layer does not. Choose another fraction or layout 'per_layer'.",
                details={"field": "heads"},
            )
    if plan.is_empty():
        logger.info("the target removes nothing")
    return plan


def _pruned_copy(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A deep copy with ``plan`` carried out (config untouched): used to measure candidate plans."""
    clone = copy.deepcopy(model)
    remove_units(clone, plan)
    return clone


def remove_units(model: nn.Module, plan: PruningPlan) -> None:
    """Physically remove the plan's units from ``model`` (the config is not rewritten: see prune_model)."""
    adapter = ModelAdapter(model)
    for layer in range(adapter.num_layers):
        heads, neurons = plan.heads.get(layer, []), plan.neurons.get(layer, [])
        if heads or neurons or layer in plan.mlps:
            adapter.prune_layer(layer, remove_heads=heads, remove_neurons=neurons, remove_mlp=layer in plan.mlps)


def predicted_parameters(model: nn.Module, plan: PruningPlan) -> int:
    """Parameters the model will have after ``plan``, from the slicing rules alone (no copy made)."""
    adapter = ModelAdapter(model)
    family = adapter.family
    removed = 0
    for layer_idx, layer in enumerate(adapter.layers):
        sizes = adapter.sizes(layer_idx)
        group = adapter.group_size(layer_idx)
        drop_q = set(plan.heads.get(layer_idx, []))
        keep_q = [h for h in range(sizes.heads) if h not in drop_q]
        kv_removed = sizes.kv_heads - len({h // group for h in keep_q})
        removed_units = {
            "q": len(drop_q) * adapter.head_dim,
            "kv": (kv_removed if adapter.grouped else len(drop_q)) * adapter.head_dim,
            "qkv": 3 * len(drop_q) * adapter.head_dim,
            "ffn": len(plan.neurons.get(layer_idx, [])),
        }
        drop_mlp = layer_idx in plan.mlps
        for name, param in layer.named_parameters():
            if drop_mlp and name.startswith(family.mlp_prefixes):
                removed += param.numel()
                continue
            rule = family.slices.get(name)
            if rule:
                dim, unit = rule
                removed += param.numel() // param.shape[dim] * removed_units[unit]
    return count_parameters(model) - removed


def apply_layout(model: nn.Module, layout: Layout) -> None:
    """Rewrite ``model.config`` from the layers' real sizes, in the chosen layout.

    ``uniform`` sets the stock global attributes (every layer must agree); ``per_layer`` writes
    ``per_layer_config`` and points ``auto_map`` at the bundled modelling code.
    """
    adapter = ModelAdapter(model)
    family = adapter.family.name
    names = bundled.FAMILIES[family]
    sizes = adapter.all_sizes()
    config = model.config
    if layout == "uniform":
        distinct = {(s.heads, s.kv_heads, s.intermediate, s.mlp_removed) for s in sizes}
        if len(distinct) != 1:
            raise InvalidSpec(
                "the layers differ in size, which the uniform layout cannot express; use 'per_layer'",
                details={"sizes": sorted(distinct)},
            )
        s = sizes[0]
        if s.mlp_removed:
            raise InvalidSpec("the uniform layout cannot express removed MLPs; use 'per_layer'")
        if family in UNIFORM_HEAD_FAMILIES:
            hidden = config.hidden_size
            if family != "qwen3" and hidden % s.heads:
                raise InvalidSpec(
                    f"{family}'s config requires the head count to divide hidden_size ({hidden}); {s.heads} "
                    "heads per layer does not. Choose another fraction or layout 'per_layer'."
                )
            config.head_dim = adapter.head_dim
            setattr(config, names["heads"], s.heads)
            setattr(config, names["kv_heads"], s.kv_heads)
        elif s.heads != bundled.layer_sizes(config, family, 0)["heads"]:
            raise InvalidSpec(f"the uniform layout cannot express head pruning for {family}; use 'per_layer'")
        setattr(config, names["ffn"], s.intermediate)
        return
    if layout != "per_layer":
        raise InvalidSpec(f"layout must be 'uniform' or 'per_layer', got {layout!r}")
    per_layer = {}
    for i, s in enumerate(sizes):
        entry = {names["heads"]: s.heads, names["ffn"]: s.intermediate}
        if adapter.grouped:
            entry[names["kv_heads"]] = s.kv_heads
        if s.mlp_removed:
            entry["skip"] = ["mlp"]
        per_layer[i] = entry
    try:
        config_name, model_name = bundled.class_names(family, type(model).__name__)
    except KeyError:
        raise UnsupportedArchitecture(
            f"the per_layer layout has no bundled class for {type(model).__name__}; it covers the base model, "
            "sequence classification and (for decoders) causal LM heads. Use layout 'uniform' for FFN-only pruning.",
            details={"model_class": type(model).__name__},
        ) from None
    if not getattr(config, "head_dim", None):
        config.head_dim = adapter.head_dim  # the global head count no longer tells the head size
    config.__class__ = getattr(bundled, config_name)
    config.per_layer_config = per_layer
    config.auto_map = {
        "AutoConfig": f"modeling_slimformer.{config_name}",
        _auto_class_for(model): f"modeling_slimformer.{model_name}",
    }


def _auto_class_for(model: nn.Module) -> str:
    name = type(model).__name__
    if name.endswith("ForSequenceClassification"):
        return "AutoModelForSequenceClassification"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "AutoModelForCausalLM"
    return "AutoModel"


def prune_model(model: nn.Module, plan: PruningPlan, layout: Layout = "per_layer") -> None:
    """Remove the plan's units and rewrite the config for ``layout``, in one step."""
    remove_units(model, plan)
    apply_layout(model, layout)


@dataclass
class PruneResult:
    model: nn.Module
    record: PruningRecord
    importance: list[Importance]
    plan: PruningPlan | None = None


def one_shot_prune(
    model: nn.Module,
    importance: Importance,
    plan: PruningPlan,
    *,
    layout: Layout = "per_layer",
) -> PruneResult:
    """Remove everything ``plan`` names in one step and write the layout (``plan`` from :func:`plan_pruning`)."""
    adapter = ModelAdapter(model)
    record = PruningRecord.start(adapter)
    remove_units(model, plan)
    record.apply(plan, adapter)
    apply_layout(model, layout)
    return PruneResult(model=model, record=record, importance=[importance], plan=plan)


def iterative_prune(
    model: nn.Module,
    score: Callable[[nn.Module], Importance],
    evaluate: Callable[[nn.Module], float],
    target: PruningTarget,
    *,
    step: float = 0.1,
    metric_floor: float = 0.9,
    layout: Layout = "per_layer",
    on_step: Callable[[dict], None] | None = None,
) -> PruneResult:
    """Michel's and Prasanna's schedule.

    Each step removes ``step`` of the heads and of the FFN neurons that remain (as far as the target asks),
    re-scores, and evaluates. It stops at the target, or before the step whose metric falls below
    ``metric_floor`` x the original metric (that step is undone). The curve of
    (fraction of heads removed, fraction of FFN neurons removed, metric) is kept in the record.
    The result holds a new model; the one passed in is left unchanged.
    """
    target.validate()
    if not 0 < step < 1:
        raise InvalidSpec(f"step must be in (0, 1), got {step}", details={"field": "step"})
    if target.macs_budget is not None or target.params_budget is not None or target.whole_mlps:
        raise InvalidSpec("the iterative schedule takes head and FFN fractions; use one_shot for budgets and whole MLPs")
    model = copy.deepcopy(model)
    adapter = ModelAdapter(model)
    record = PruningRecord.start(adapter)
    total_heads, total_neurons = sum(record.original_heads), sum(record.original_neurons)
    baseline = evaluate(model)
    record.curve.append({"heads_removed": 0.0, "ffn_removed": 0.0, "metric": baseline, "kept": True})
    floor = metric_floor * baseline
    scores = []
    while True:
        sizes = ModelAdapter(model).all_sizes()
        heads_left = sum(s.heads for s in sizes)
        neurons_left = sum(s.intermediate for s in sizes)
        head_goal = total_heads * (1 - target.heads)
        neuron_goal = total_neurons * (1 - target.ffn)
        # a step of what remains, never past the goal
        head_fraction = min(step, max(0.0, (heads_left - head_goal) / heads_left)) if heads_left > head_goal + 0.5 else 0.0
        ffn_fraction = (
            min(step, max(0.0, (neurons_left - neuron_goal) / neurons_left)) if neurons_left > neuron_goal + 0.5 else 0.0
        )
        if head_fraction == 0 and ffn_fraction == 0:
            break
        importance = score(model)
        scores.append(importance)
        step_target = dataclasses.replace(target, heads=head_fraction, ffn=ffn_fraction)
        plan = plan_pruning(model, importance, step_target, layout=layout)
        if plan.is_empty():
            break
        candidate = _pruned_copy(model, plan)
        metric = evaluate(candidate)
        new_sizes = ModelAdapter(candidate).all_sizes()
        point = {
            "heads_removed": 1 - sum(s.heads for s in new_sizes) / total_heads,
            "ffn_removed": 1 - sum(s.intermediate for s in new_sizes) / max(1, total_neurons),
            "metric": metric,
            "kept": metric >= floor,
        }
        record.curve.append(point)
        if on_step:
            on_step(point)
        if metric < floor:
            logger.info("metric %.4f fell below the floor %.4f; keeping the previous step", metric, floor)
            break
        record.apply(plan, ModelAdapter(candidate))
        model = candidate
    apply_layout(model, layout)
    return PruneResult(model=model, record=record, importance=scores)
