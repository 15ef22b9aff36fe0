"""Carrying a plan out: the units it names leave the model physically, with FLAP's bias
compensation or the least-squares refit of the output projections they fed; and the parameter
count a plan leads to, from the slicing rules alone."""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.modeling import modeling_slimformer as bundled
from slimformer.models import count_parameters
from slimformer.pruning.layouts import DEFAULT_LAYOUT, apply_layout
from slimformer.pruning.types import LayoutName, PruningPlan
from slimformer.reconstruction import kept_channels, refit, set_output


def prune_model(model: nn.Module, plan: PruningPlan, layout: LayoutName = DEFAULT_LAYOUT) -> None:
    """Remove the plan's units and rewrite the config for ``layout``, in one step."""
    remove_units(model, plan)
    apply_layout(model, layout)


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


def pruned_copy(model: nn.Module, plan: PruningPlan) -> nn.Module:
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
