"""Units chosen by their scores: the query heads (whole KV groups, or the same number from every
group) and FFN neurons with the lowest importance, ranked across layers (``global``, FLAP's
``adaptive``) or within each (``per_layer``). The layouts build their plans from these."""

from __future__ import annotations

import math

import torch

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.importance import Importance
from slimformer.pruning.types import PruningTarget, UnitRequest, Units


def by_scores(request: UnitRequest, *, equal_shares: bool) -> Units:
    """The request's heads and FFN neurons chosen by their scores alone (no attention goes whole);
    the layers whose MLP goes whole lose no neurons. ``equal_shares``: every layer loses the same
    share whatever the ranking."""
    r = request
    return Units(
        heads=plan_heads(r.adapter, r.importance, r.heads, r.target, equal_shares=equal_shares),
        neurons=plan_neurons(
            r.adapter,
            r.importance,
            r.ffn,
            r.target,
            equal_shares=equal_shares,
            skip_layers=set(r.mlps),
        ),
        attention=[],
    )


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


def plan_heads(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    *,
    equal_shares: bool,
) -> dict[int, list[int]]:
    """The query heads to remove, ``fraction`` of them: whole KV groups (single heads without
    grouped-query attention) ranked as ``target.ranking`` says, or, with ``gqa_unit="query_heads"``,
    the same number from every KV group. ``equal_shares``: every layer loses the same share
    whatever the ranking (for a layout that gives every layer one shape)."""
    if fraction <= 0:
        return {}
    protected = target.protected(adapter.num_layers)
    if adapter.grouped and target.gqa_unit == "query_heads":
        return _query_heads(adapter, importance, fraction, target, protected)
    return _kv_groups(adapter, importance, fraction, target, protected, equal_shares)


def _query_heads(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    protected: set[int],
) -> dict[int, list[int]]:
    """The same number of query heads leaves every KV group of every (eligible) layer."""
    sizes = adapter.all_sizes()
    eligible = [i for i in range(adapter.num_layers) if i not in protected]
    plan = {}
    pool = sum(sizes[i].heads for i in eligible)
    share = fraction * sum(s.heads for s in sizes) / pool if pool else 0.0
    for layer in eligible:
        s, g = sizes[layer], adapter.group_size(layer)
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


def _kv_groups(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    protected: set[int],
    equal_shares: bool,
) -> dict[int, list[int]]:
    """Units are KV groups (single heads without grouped-query attention): their query heads go
    together."""
    sizes = adapter.all_sizes()
    groups = [adapter.group_size(i) for i in range(adapter.num_layers)]
    eligible = [i for i in range(adapter.num_layers) if i not in protected]
    adaptive = target.ranking == "adaptive"
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
    if target.ranking == "per_layer" or equal_shares:
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


def plan_neurons(
    adapter: ModelAdapter,
    importance: Importance,
    fraction: float,
    target: PruningTarget,
    *,
    equal_shares: bool,
    skip_layers: set[int],
) -> dict[int, list[int]]:
    """The FFN neurons to remove, ``fraction`` of them, ranked as ``target.ranking`` says (every
    layer the same share with ``equal_shares``); ``skip_layers`` (their MLP goes whole) lose
    none."""
    if fraction <= 0:
        return {}
    sizes = adapter.all_sizes()
    protected = target.protected(adapter.num_layers)
    live = [i for i, s in enumerate(sizes) if not s.mlp_removed and i not in skip_layers]
    eligible = [i for i in live if i not in protected]
    if target.ranking == "per_layer" or equal_shares:
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
