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
  widths in multiples of 256: :mod:`slimformer.nemotron`).

:func:`iterative_prune` is Michel's and Prasanna's schedule: remove a step of what remains,
re-score, evaluate, and stop at the target or when the metric falls below a floor.
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

from slimformer.architectures import ModelAdapter, keep_layers
from slimformer.errors import InvalidSpec, UnsupportedArchitecture
from slimformer.importance import Importance
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.models import count_macs, count_parameters
from slimformer.nemotron import (
    apply_nemotron_layout,
    check_nemotron,
    plan_attention,
    round_to_chunks,
)
from slimformer.reconstruction import kept_channels, refit, set_output

logger = logging.getLogger(__name__)

Layout = Literal["uniform", "per_layer", "nemotron_nas"]
Ranking = Literal["global", "per_layer", "adaptive"]
GqaUnit = Literal["groups", "query_heads"]
UNIFORM_HEAD_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
LLAMA_LIKE = UNIFORM_HEAD_FAMILIES
# which stock config flag gives a llama-like family's attention / MLP projections a bias
BIAS_FLAGS: dict[str, dict[str, str]] = {
    "llama": {"attention": "attention_bias", "mlp": "mlp_bias"},
    "qwen3": {"attention": "attention_bias"},
    "mistral": {},
    "qwen2": {},
}
# every projection a stock config flag gives a bias (they all get one together)
_FLAG_PROJECTIONS = {
    "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
}


@dataclass
class PruningPlan:
    """Units to remove, by layer, as indices into the model as it is now."""

    heads: dict[int, list[int]] = field(default_factory=dict)
    neurons: dict[int, list[int]] = field(default_factory=dict)
    mlps: list[int] = field(default_factory=list)
    attention: list[int] = field(default_factory=list)  # layers whose attention goes whole
    # FLAP's bias compensation: per layer, the mean of every input channel of the attention output
    # projection / the MLP's down projection; None: no compensation
    attention_means: list[torch.Tensor] | None = None
    mlp_means: list[torch.Tensor] | None = None
    # least-squares reconstruction (slimformer.reconstruction): per (layer, part) the Gram matrix of
    # the output projection's input on the calibration tokens; None: no reconstruction
    grams: dict[tuple[int, str], torch.Tensor] | None = None
    reconstruct_bias: bool = True  # the refit may set an output bias (False: through the origin)

    def is_empty(self) -> bool:
        return (
            not any(self.heads.values())
            and not any(self.neurons.values())
            and not self.mlps
            and not self.attention
        )

    @property
    def compensates(self) -> bool:
        return self.attention_means is not None or self.mlp_means is not None

    def to_dict(self) -> dict:
        return {
            "heads": {str(k): v for k, v in sorted(self.heads.items()) if v},
            "neurons": {str(k): len(v) for k, v in sorted(self.neurons.items()) if v},
            "mlps": sorted(self.mlps),
            "attention": sorted(self.attention),
            "bias_compensation": self.compensates,
            "reconstruction": self.grams is not None,
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
    keep_first_layers: int = 0  # the first / last layers keep their shape (no unit removed)
    keep_last_layers: int = 0
    # fold the removed units' mean output into a bias: None = for FLAP only (its metric assumes it);
    # True = also for other methods that measured the means (activations)
    bias_compensation: bool | None = None
    # least-squares refit of the pruned layers' output projections (slimformer.reconstruction):
    # None = for OBS only (its scores assume it, and it measured the Gram matrices)
    reconstruction: bool | None = None

    def wants_reconstruction(self, method: str) -> bool:
        return method == "obs" if self.reconstruction is None else self.reconstruction

    def validate(self) -> None:
        for name in ("heads", "ffn"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
                raise InvalidSpec(
                    f"{name} must be a fraction in [0, 1), got {value!r}", details={"field": name}
                )
        if self.whole_mlps < 0:
            raise InvalidSpec(
                f"whole_mlps must be 0 or more, got {self.whole_mlps}",
                details={"field": "whole_mlps"},
            )
        for name in ("macs_budget", "params_budget"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value <= 1.0):
                raise InvalidSpec(
                    f"{name} must be in (0, 1], got {value!r}", details={"field": name}
                )
        if self.macs_budget is not None and self.params_budget is not None:
            raise InvalidSpec("give macs_budget or params_budget, not both")
        if self.min_heads_per_layer < 1:
            raise InvalidSpec(
                "min_heads_per_layer must be at least 1: a layer without attention is not supported"
            )
        if self.ranking not in Ranking.__args__:
            raise InvalidSpec(
                f"ranking must be one of {', '.join(Ranking.__args__)}, got {self.ranking!r}",
                details={"field": "ranking"},
            )
        for name in ("keep_first_layers", "keep_last_layers"):
            if getattr(self, name) < 0:
                raise InvalidSpec(f"{name} must be 0 or more", details={"field": name})

    def protected(self, num_layers: int) -> set[int]:
        """Layers whose shape is kept: the first ``keep_first_layers`` and last
        ``keep_last_layers``."""
        first = range(min(self.keep_first_layers, num_layers))
        last = range(max(0, num_layers - self.keep_last_layers), num_layers)
        return set(first) | set(last)


@dataclass
class PruningRecord:
    """What was removed, in the original model's numbering, across every step."""

    original_heads: list[int]
    kept_heads: list[list[int]]
    original_neurons: list[int]
    kept_neurons: list[int]
    removed_mlps: list[int] = field(default_factory=list)
    removed_attention: list[int] = field(default_factory=list)  # attention removed whole
    curve: list[dict] = field(default_factory=list)
    removed_layers: list[int] = field(default_factory=list)  # depth pruning, original numbering
    original_layers: int | None = None

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
            self.kept_heads[layer] = [
                h for i, h in enumerate(self.kept_heads[layer]) if i not in drop
            ]
        for layer in plan.mlps:
            self.removed_mlps.append(layer)
        for layer in plan.attention:
            self.removed_attention.append(layer)
            self.kept_heads[layer] = []
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
            "removed_attention": sorted(self.removed_attention),
            "curve": self.curve,
            "removed_layers": sorted(self.removed_layers),
            "original_layers": self.original_layers or len(self.original_heads),
        }


def _lowest(
    scores: list[tuple[float, int, int]], count: int, cap: dict[int, int]
) -> dict[int, list[int]]:
    """The ``count`` lowest (score, layer, unit) entries, taking at most ``cap[layer]`` per
    layer."""
    chosen: dict[int, list[int]] = {}
    for _score, layer, unit in sorted(scores):
        if count <= 0:
            break
        if len(chosen.get(layer, [])) < cap[layer]:
            chosen.setdefault(layer, []).append(unit)
            count -= 1
    return chosen


def _standardise(scores: torch.Tensor) -> torch.Tensor:
    """(scores - mean) / std within one layer: FLAP's adaptive structure (0 where nothing
    varies)."""
    scores = scores.double()
    if scores.numel() < 2:
        return torch.zeros_like(scores)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else torch.zeros_like(scores)


def _head_scores(importance: Importance, layer: int, adaptive: bool, head_dim: int) -> torch.Tensor:
    """A layer's query-head scores; standardised within the layer for adaptive ranking (over its
    channels when the method scored channels, as FLAP does, else over its heads)."""
    scores = importance.heads[layer].double()
    if not adaptive:
        return scores
    channels = importance.attention_channels[layer] if importance.attention_channels else None
    if channels is None or channels.numel() != scores.numel() * head_dim:
        return _standardise(scores)
    channels = channels.double()
    std = channels.std()
    if not std > 0:
        return torch.zeros_like(scores)
    return (channels.reshape(-1, head_dim).mean(1) - channels.mean()) / std


def _layer_quota(fraction: float, units: list[int], eligible: list[int]) -> dict[int, int]:
    """Units to remove per eligible layer when each loses the same share, scaled so that
    ``fraction`` of all units goes even when some layers are protected."""
    total = sum(units)
    pool = sum(units[i] for i in eligible)
    share = fraction * total / pool if pool else 0.0
    return {i: round(share * units[i]) for i in eligible}


def _plan_heads(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    uniform: bool,
) -> dict[int, list[int]]:
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    groups = [adapter.group_size(i) for i in range(adapter.num_layers)]
    protected = target.protected(adapter.num_layers)
    eligible = [i for i in range(adapter.num_layers) if i not in protected]
    per_layer = target.ranking == "per_layer" or uniform
    adaptive = target.ranking == "adaptive"
    if adapter.grouped and target.gqa_unit == "query_heads":
        # The same number of query heads leaves every KV group of every (eligible) layer.
        plan = {}
        pool = sum(sizes[i].heads for i in eligible)
        share = fraction * sum(s.heads for s in sizes) / pool if pool else 0.0
        for layer in eligible:
            s, g = sizes[layer], groups[layer]
            keep_min = max(1, math.ceil(target.min_heads_per_layer / s.kv_heads))
            r = min(round(share * g), g - keep_min)
            if r <= 0:
                continue
            scores = importance.heads[layer]
            plan[layer] = [
                h
                for kv in range(s.kv_heads)
                for h in sorted(range(kv * g, (kv + 1) * g), key=lambda h: float(scores[h]))[:r]
            ]
        return plan
    # Units are KV groups (single heads without grouped-query attention): their query heads go
    # together.
    units, cap = [], {}
    for layer, s in enumerate(sizes):
        g = groups[layer]
        head_scores = _head_scores(importance, layer, adaptive, adapter.head_dim).reshape(
            s.kv_heads, g
        )
        group_scores = head_scores.mean(1) if adaptive else head_scores.sum(1)
        keep_min = max(1, math.ceil(target.min_heads_per_layer / g))
        cap[layer] = 0 if layer in protected else max(0, s.kv_heads - keep_min)
        units.extend((float(group_scores[u]), layer, u) for u in range(s.kv_heads))
    if per_layer:
        chosen = {}
        quota = _layer_quota(fraction, [s.kv_heads for s in sizes], eligible)
        for layer in eligible:
            layer_units = [u for u in units if u[1] == layer]
            chosen.update(_lowest(layer_units, min(quota[layer], cap[layer]), cap))
    else:
        n_units = round(fraction * len(units))
        if n_units > sum(cap.values()):
            raise InvalidSpec(
                f"removing {fraction:.0%} of the heads would empty a layer's attention; at most "
                f"{sum(cap.values()) / len(units):.0%} can go while every layer keeps "
                f"{target.min_heads_per_layer} head(s)"
                + (" and the protected first/last layers keep all theirs" if protected else "")
            )
        chosen = _lowest(units, n_units, cap)
    return {
        layer: sorted(h for u in us for h in range(u * groups[layer], (u + 1) * groups[layer]))
        for layer, us in chosen.items()
    }


def _plan_neurons(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    uniform: bool,
    skip_layers: set[int],
) -> dict[int, list[int]]:
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    protected = target.protected(adapter.num_layers)
    live = [i for i, s in enumerate(sizes) if not s.mlp_removed and i not in skip_layers]
    eligible = [i for i in live if i not in protected]
    if target.ranking == "per_layer" or uniform:
        quota = _layer_quota(
            fraction,
            [sizes[i].intermediate if i in live else 0 for i in range(len(sizes))],
            eligible,
        )
        plan = {}
        for layer in eligible:
            n = min(quota[layer], sizes[layer].intermediate - 1)
            order = torch.argsort(importance.neurons[layer], stable=True)[:n]
            plan[layer] = sorted(int(i) for i in order)
        return plan
    adaptive = target.ranking == "adaptive"
    total = sum(sizes[i].intermediate for i in live)
    n = round(fraction * total)
    candidates = sum(sizes[i].intermediate - 1 for i in eligible)
    if n > candidates:
        raise InvalidSpec(
            f"removing {fraction:.0%} of the FFN neurons would empty the MLPs of the layers "
            "that may lose neurons; remove fewer or protect fewer layers"
        )
    scores = torch.cat(
        [
            _standardise(importance.neurons[i]) if adaptive else importance.neurons[i].double()
            for i in eligible
        ]
    )
    owners = torch.cat([torch.full((sizes[i].intermediate,), i) for i in eligible])
    positions = torch.cat([torch.arange(sizes[i].intermediate) for i in eligible])
    order = torch.argsort(scores, stable=True)
    plan: dict[int, list[int]] = {}
    taken = 0
    for k in order.tolist():
        if taken == n:
            break
        layer = int(owners[k])
        if len(plan.get(layer, [])) >= sizes[layer].intermediate - 1:
            continue  # every MLP keeps a neuron; whole MLPs go through whole_mlps
        plan.setdefault(layer, []).append(int(positions[k]))
        taken += 1
    return {layer: sorted(v) for layer, v in plan.items()}


def plan_pruning(
    model: nn.Module,
    importance: Importance,
    target: PruningTarget,
    *,
    layout: Layout = "per_layer",
    seq_len: int = 128,
    attention_scores: torch.Tensor | None = None,
) -> PruningPlan:
    """Choose the units to remove so that ``target`` is met.

    ``attention_scores`` (the nemotron_nas layout, which removes attention blocks whole): one score
    per layer, lowest removed first (:func:`slimformer.importance.depth.attention_influence`);
    without them, the sum of the layer's head scores.

    Raises:
        InvalidSpec: fractions out of range, a target that empties every layer's attention, a
            request the ``uniform`` layout cannot express for this family.
    """
    target.validate()
    adapter = ModelAdapter(model)
    uniform = layout == "uniform"
    nemotron = layout == "nemotron_nas"
    if layout not in Layout.__args__:
        raise InvalidSpec(
            f"layout must be one of {', '.join(Layout.__args__)}, got {layout!r}",
            details={"field": "layout"},
        )
    if nemotron:
        check_nemotron(adapter, target)
    wants_heads = (
        target.heads > 0 or target.macs_budget is not None or target.params_budget is not None
    )
    if uniform and wants_heads and adapter.family.name not in UNIFORM_HEAD_FAMILIES:
        raise InvalidSpec(
            f"the uniform layout cannot express head pruning for {adapter.family.name}: its config "
            "derives the head size from hidden_size / num_attention_heads, so fewer heads would "
            "change the head size. "
            "Use layout 'per_layer' (loads with trust_remote_code=True) or prune only FFN neurons.",
            details={"field": "layout"},
        )
    if uniform and target.whole_mlps:
        raise InvalidSpec(
            "the uniform layout cannot remove whole MLPs (every layer would need the same size); "
            "use 'per_layer'",
            details={"field": "layout"},
        )
    if uniform and (target.keep_first_layers or target.keep_last_layers):
        raise InvalidSpec(
            "the uniform layout gives every layer the same shape, so first or last layers cannot "
            "keep theirs; "
            "set keep_first_layers and keep_last_layers to 0 or use layout 'per_layer'",
            details={"field": "layout"},
        )
    sizes = adapter.all_sizes()
    live_mlps = [i for i, s in enumerate(sizes) if not s.mlp_removed]
    if target.whole_mlps > len(live_mlps):
        raise InvalidSpec(f"whole_mlps={target.whole_mlps} but the model has {len(live_mlps)} MLPs")
    mlps = sorted(sorted(live_mlps, key=lambda i: float(importance.mlps[i]))[: target.whole_mlps])

    wanted = (
        importance.method == "flap"
        if target.bias_compensation is None
        else target.bias_compensation
    )
    compensate = wanted and importance.attention_means is not None
    if compensate and nemotron:
        raise InvalidSpec(
            f"{importance.method} folds removed units into output biases, which the nemotron_nas "
            "layout cannot state; set bias_compensation to false",
            details={"field": "bias_compensation"},
        )
    if compensate and uniform:
        _check_uniform_bias(adapter, target)
    reconstruct = target.wants_reconstruction(importance.method)
    # the refit sets an output bias where the layout can hold one, else goes through the origin
    refit_bias = not nemotron and (not uniform or _uniform_bias_ok(adapter, target))
    if nemotron and attention_scores is None:
        attention_scores = torch.stack([h.double().sum() for h in importance.heads])

    def build(head_fraction: float, ffn_fraction: float) -> PruningPlan:
        attention: list[int] = []
        if nemotron:
            protected = target.protected(adapter.num_layers)
            attention = plan_attention(adapter, head_fraction, protected, attention_scores)
            heads = {}
            wanted = _plan_neurons(adapter, importance, ffn_fraction, target, False, set())
            neurons = round_to_chunks(adapter, importance.neurons, ffn_fraction, wanted, protected)
        else:
            heads = _plan_heads(adapter, importance, head_fraction, target, uniform)
            neurons = _plan_neurons(adapter, importance, ffn_fraction, target, uniform, set(mlps))
        return PruningPlan(
            heads=heads,
            neurons=neurons,
            mlps=mlps,
            attention=attention,
            attention_means=importance.attention_means if compensate and heads else None,
            mlp_means=importance.mlp_means if compensate and neurons else None,
            grams=importance.grams if reconstruct else None,
            reconstruct_bias=refit_bias,
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
            raise InvalidSpec(
                f"no plan keeps at most {budget:.0%} of the "
                f"{'MACs' if target.macs_budget else 'parameters'}"
            )
    if uniform and plan.heads and adapter.family.name in ("llama", "mistral", "qwen2"):
        heads_left = sizes[0].heads - len(plan.heads.get(0, []))
        hidden = model.config.hidden_size
        if hidden % heads_left:
            raise InvalidSpec(
                f"{adapter.family.name}'s config requires the head count to divide hidden_size "
                f"({hidden}); {heads_left} heads per layer does not. Choose another fraction or "
                "layout 'per_layer'.",
                details={"field": "heads"},
            )
    if plan.is_empty():
        logger.info("the target removes nothing")
    return plan


def _uniform_bias_ok(adapter: ModelAdapter, target: PruningTarget) -> bool:
    try:
        _check_uniform_bias(adapter, target)
    except InvalidSpec:
        return False
    return True


def _check_uniform_bias(adapter: ModelAdapter, target: PruningTarget) -> None:
    """Refuse, before anything is removed, bias compensation the stock config cannot express."""
    family = adapter.family.name
    if family not in LLAMA_LIKE:
        return  # BERT-like, DistilBERT and GPT-2 projections have biases already
    flags = BIAS_FLAGS[family]
    wants = [
        part for part, fraction in (("attention", target.heads), ("mlp", target.ffn)) if fraction
    ]
    if target.macs_budget is not None or target.params_budget is not None:
        wants = ["attention", "mlp"]
    missing = [part for part in wants if part not in flags]
    if missing:
        raise InvalidSpec(
            f"bias compensation puts a bias on the {' and '.join(missing)} output projection, "
            f"which {family}'s stock config cannot express; use layout 'per_layer' (its modelling "
            "code has the "
            "bias) or turn bias_compensation off",
            details={"field": "bias_compensation"},
        )


def _compensation(adapter: ModelAdapter, plan: PruningPlan) -> dict[tuple[int, str], torch.Tensor]:
    """FLAP's bias compensation: per (layer, part), the removed channels' mean contribution
    ``W[:, removed] @ mean[removed]`` (zeros for layers that lose nothing, so every layer of the
    part gets a bias)."""
    out: dict[tuple[int, str], torch.Tensor] = {}
    d = adapter.head_dim
    for part, removed, means in (
        ("attention", plan.heads, plan.attention_means),
        ("mlp", plan.neurons, plan.mlp_means),
    ):
        if means is None or not any(removed.values()):
            continue
        for layer in range(adapter.num_layers):
            if (
                isinstance(adapter.output_projection(layer, part), bundled.NoUnits)
                or layer in plan.mlps
            ):
                continue
            weight = adapter.output_weight(layer, part)
            units = removed.get(layer, [])
            channels = (
                [c for u in units for c in range(u * d, (u + 1) * d)]
                if part == "attention"
                else units
            )
            if not channels:
                out[(layer, part)] = weight.new_zeros(weight.shape[0])
                continue
            index = torch.tensor(channels, dtype=torch.long, device=weight.device)
            mean = means[layer].to(device=weight.device, dtype=torch.float64)[index]
            out[(layer, part)] = (weight.double()[:, index] @ mean).to(weight.dtype)
    return out


def _pruned_copy(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A deep copy with ``plan`` carried out (config untouched): used to measure candidate plans."""
    clone = copy.deepcopy(model)
    remove_units(clone, plan, refit=False)
    return clone


def remove_units(model: nn.Module, plan: PruningPlan, *, refit: bool = True) -> None:
    """Physically remove the plan's units from ``model`` (the config is not rewritten: see
    prune_model). ``refit=False`` skips the least-squares refit but gives the same shapes (zero
    biases where the refit would set them): for measuring candidate plans."""
    adapter = ModelAdapter(model)
    refits = _refits(adapter, plan, solve=refit) if plan.grams is not None else {}
    compensation = _compensation(adapter, plan) if plan.compensates and not refits else {}
    for layer in range(adapter.num_layers):
        heads, neurons = plan.heads.get(layer, []), plan.neurons.get(layer, [])
        whole = layer in plan.attention
        if heads or neurons or layer in plan.mlps or whole:
            adapter.prune_layer(
                layer,
                remove_heads=heads,
                remove_neurons=neurons,
                remove_mlp=layer in plan.mlps,
                remove_attention=whole,
            )
    for (layer, part), vector in compensation.items():
        adapter.add_output_bias(layer, part, vector)
    for (layer, part), (weight, bias) in refits.items():
        set_output(adapter, layer, part, weight, bias)


def refit_keys(plan: PruningPlan) -> list[tuple[int, str]]:
    """The (layer, part) output projections whose inputs ``plan`` removes."""
    keys = [(i, "attention") for i, heads in plan.heads.items() if heads]
    keys += [(i, "mlp") for i, neurons in plan.neurons.items() if neurons and i not in plan.mlps]
    return sorted(keys)


def _refits(adapter: ModelAdapter, plan: PruningPlan, *, solve: bool = True) -> dict:
    """Least-squares refits of every output projection whose inputs the plan removes, computed
    before anything is sliced (they need the full weight). ``solve=False``: the kept columns as
    they are and a zero bias (same shapes, no solve)."""
    out = {}
    for (layer, part), gram in (plan.grams or {}).items():
        removed = (plan.heads if part == "attention" else plan.neurons).get(layer, [])
        if not removed or layer in plan.mlps:
            continue
        module = adapter.output_projection(layer, part)
        keep = kept_channels(adapter, layer, part, removed)
        if not solve:
            weight = adapter.output_weight(layer, part)[:, keep]
            out[(layer, part)] = (
                weight,
                weight.new_zeros(len(weight)) if plan.reconstruct_bias else None,
            )
            continue
        out[(layer, part)] = refit(
            adapter.output_weight(layer, part),
            None if module.bias is None else module.bias.detach(),
            gram,
            keep,
            with_bias=plan.reconstruct_bias,
        )
    return out


def predicted_parameters(model: nn.Module, plan: PruningPlan) -> int:
    """Parameters the model will have after ``plan``, from the slicing rules alone (no copy
    made)."""
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
        drop_attention = layer_idx in plan.attention
        for name, param in layer.named_parameters():
            if drop_mlp and name.startswith(family.mlp_prefixes):
                removed += param.numel()
                continue
            if drop_attention and name.startswith(("self_attn.", "input_layernorm.")):
                removed += param.numel()
                continue
            rule = family.slices.get(name)
            if rule:
                dim, unit = rule
                removed += param.numel() // param.shape[dim] * removed_units[unit]
    return count_parameters(model) - removed + _new_bias_parameters(adapter, plan)


def _new_bias_parameters(adapter: ModelAdapter, plan: PruningPlan) -> int:
    """Parameters of the biases that bias compensation or a refit with a bias creates
    (projections that had none; every layer of a part gets one, as the config says it per part)."""
    refit = plan.grams is not None and plan.reconstruct_bias
    if not plan.compensates and not refit:
        return 0
    total = 0
    for part, removed, means in (
        ("attention", plan.heads, plan.attention_means),
        ("mlp", plan.neurons, plan.mlp_means),
    ):
        if (means is None and not refit) or not any(removed.values()):
            continue
        for layer in range(adapter.num_layers):
            module = adapter.output_projection(layer, part)
            if layer in plan.mlps or isinstance(module, bundled.NoUnits) or module.bias is not None:
                continue
            total += adapter.output_weight(layer, part).shape[0]
    return total


def _stock_has_bias(config, family: str, part: str) -> bool:
    flag = BIAS_FLAGS.get(family, {}).get(part)
    return bool(flag and getattr(config, flag, False))


def _write_biases(model: nn.Module, adapter: ModelAdapter, layout: Layout) -> None:
    """Make the config say which output projections carry a bias (FLAP's compensation gives some
    a bias the family's stock config does not build): the stock flags (``attention_bias``,
    ``mlp_bias``) in the uniform layout, ``projection_bias`` for the bundled code in per_layer."""
    family = adapter.family.name
    if family not in LLAMA_LIKE:
        return
    config = model.config
    paths = {"attention": "self_attn.o_proj", "mlp": "mlp.down_proj"}
    needed = []
    for part, path in paths.items():
        biased = any(
            getattr(layer.get_submodule(path), "bias", None) is not None for layer in adapter.layers
        )
        if biased and not _stock_has_bias(config, family, part):
            needed.append(part)
    if layout == "uniform":
        for part in needed:
            flag = BIAS_FLAGS[family].get(part)
            if flag is None:
                raise InvalidSpec(
                    f"{family}'s stock config cannot give the {part} output projection a bias; "
                    "use layout 'per_layer'",
                    details={"field": "layout"},
                )
            setattr(config, flag, True)
            for layer in adapter.layers:
                for name in _FLAG_PROJECTIONS[part]:
                    bundled.add_bias(layer.get_submodule(name))
        return
    extra = set(getattr(config, "projection_bias", None) or ()) | {paths[p] for p in needed}
    if not extra:
        return
    config.projection_bias = sorted(extra)
    for layer in adapter.layers:
        for path in config.projection_bias:
            bundled.add_bias(layer.get_submodule(path))


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
    if layout == "nemotron_nas":
        apply_nemotron_layout(model)
        return
    if layout == "uniform":
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
        if family in UNIFORM_HEAD_FAMILIES:
            hidden = config.hidden_size
            if family != "qwen3" and hidden % s.heads:
                raise InvalidSpec(
                    f"{family}'s config requires the head count to divide hidden_size ({hidden}); "
                    f"{s.heads} "
                    "heads per layer does not. Choose another fraction or layout 'per_layer'."
                )
            config.head_dim = adapter.head_dim
            setattr(config, names["heads"], s.heads)
            setattr(config, names["kv_heads"], s.kv_heads)
        elif s.heads != bundled.layer_sizes(config, family, 0)["heads"]:
            raise InvalidSpec(
                f"the uniform layout cannot express head pruning for {family}; use 'per_layer'"
            )
        _write_biases(model, adapter, layout)
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
            f"the per_layer layout has no bundled class for {type(model).__name__}; it covers the "
            "base model, sequence classification and (for decoders) causal LM heads. Use layout "
            "'uniform' for FFN-only pruning.",
            details={"model_class": type(model).__name__},
        ) from None
    if not getattr(config, "head_dim", None):
        config.head_dim = adapter.head_dim  # the global head count no longer tells the head size
    _write_biases(model, adapter, layout)
    config.__class__ = getattr(bundled, config_name)
    config.per_layer_config = per_layer
    config.auto_map = {
        "AutoConfig": f"modeling_slimformer.{config_name}",
        _auto_class_for(model): f"modeling_slimformer.{model_name}",
    }


def layers_to_drop(num_layers: int, layers: float) -> int:
    """How many layers ``layers`` asks for: a fraction of them (below 1) or a count (1 or more)."""
    if layers < 0:
        raise InvalidSpec(
            f"layers must be a fraction in [0, 1) or a count, got {layers}",
            details={"field": "layers"},
        )
    count = round(layers * num_layers) if layers < 1 else int(layers)
    if layers >= 1 and count != layers:
        raise InvalidSpec(
            f"a layer count must be a whole number, got {layers}", details={"field": "layers"}
        )
    return count


def plan_depth(
    scores: torch.Tensor, layers: float, *, keep_first_layers: int = 0, keep_last_layers: int = 0
) -> list[int]:
    """The layers to drop: the ``layers`` (fraction or count) lowest-scoring ones, never a protected
    first/last layer, and never all of them.

    Raises:
        InvalidSpec: a request that would drop every layer, or more than the unprotected ones.
    """
    n = len(scores)
    count = layers_to_drop(n, layers)
    if count == 0:
        return []
    protected = PruningTarget(
        keep_first_layers=keep_first_layers, keep_last_layers=keep_last_layers
    ).protected(n)
    eligible = [i for i in range(n) if i not in protected]
    if count >= n or count > len(eligible):
        raise InvalidSpec(
            f"dropping {count} of {n} layers leaves none or needs protected ones ({len(eligible)} "
            "may go)",
            details={"field": "layers"},
        )
    order = sorted(eligible, key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])


def drop_layers(model: nn.Module, layers: list[int]) -> list[int]:
    """Remove whole layers (ShortGPT-style depth pruning) and rewrite the config to match: fewer
    ``num_hidden_layers`` (so the uniform layout reloads with stock transformers), ``layer_types``
    and the attention modules' ``layer_idx`` renumbered. Returns the kept layers' old indices."""
    n = ModelAdapter(model).num_layers
    drop = set(layers)
    kept = [i for i in range(n) if i not in drop]
    if drop:
        keep_layers(model, kept)
    return kept


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
    importance: Importance | None,
    plan: PruningPlan,
    *,
    layout: Layout = "per_layer",
) -> PruneResult:
    """Remove everything ``plan`` names in one step and write the layout (``plan`` from
    :func:`plan_pruning`)."""
    adapter = ModelAdapter(model)
    record = PruningRecord.start(adapter)
    remove_units(model, plan)
    record.apply(plan, adapter)
    apply_layout(model, layout)
    return PruneResult(
        model=model, record=record, importance=[] if importance is None else [importance], plan=plan
    )


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

    Each step removes ``step`` of the heads and of the FFN neurons that remain (as far as the target
    asks), re-scores, and evaluates. It stops at the target, or before the step whose metric falls
    below ``metric_floor`` x the original metric (that step is undone). The curve of
    (fraction of heads removed, fraction of FFN neurons removed, metric) is kept in the record.
    The result holds a new model; the one passed in is left unchanged.
    """
    target.validate()
    if not 0 < step < 1:
        raise InvalidSpec(f"step must be in (0, 1), got {step}", details={"field": "step"})
    if target.macs_budget is not None or target.params_budget is not None or target.whole_mlps:
        raise InvalidSpec(
            "the iterative schedule takes head and FFN fractions; use one_shot for budgets and "
            "whole MLPs"
        )
    model = copy.deepcopy(model)
    adapter = ModelAdapter(model)
    record = PruningRecord.start(adapter)
    total_heads, total_neurons = sum(record.original_heads), sum(record.original_neurons)
    baseline = evaluate(model)
    record.curve.append(
        {"heads_removed": 0.0, "ffn_removed": 0.0, "metric": baseline, "kept": True}
    )
    floor = metric_floor * baseline
    scores = []
    while True:
        sizes = ModelAdapter(model).all_sizes()
        heads_left = sum(s.heads for s in sizes)
        neurons_left = sum(s.intermediate for s in sizes)
        head_goal = total_heads * (1 - target.heads)
        neuron_goal = total_neurons * (1 - target.ffn)
        # a step of what remains, never past the goal
        head_fraction = (
            min(step, max(0.0, (heads_left - head_goal) / heads_left))
            if heads_left > head_goal + 0.5
            else 0.0
        )
        ffn_fraction = (
            min(step, max(0.0, (neurons_left - neuron_goal) / neurons_left))
            if neurons_left > neuron_goal + 0.5
            else 0.0
        )
        if head_fraction == 0 and ffn_fraction == 0:
            break
        importance = score(model)
        scores.append(importance)
        step_target = dataclasses.replace(target, heads=head_fraction, ffn=ffn_fraction)
        plan = plan_pruning(model, importance, step_target, layout=layout)
        if plan.is_empty():
            break
        candidate = copy.deepcopy(model)
        remove_units(candidate, plan)  # with the refit, when the plan carries Gram matrices
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
            logger.info(
                "metric %.4f fell below the floor %.4f; keeping the previous step", metric, floor
            )
            break
        record.apply(plan, ModelAdapter(candidate))
        model = candidate
    apply_layout(model, layout)
    return PruneResult(model=model, record=record, importance=scores)
