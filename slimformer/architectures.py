"""How to cut heads, KV groups, MLPs and layers out of a model of any supported family.

The facts about each family (where its heads, KV groups and MLPs live, which parameters of a layer
are sliced along which dimension when heads or FFN neurons go) are in :mod:`slimformer.families`;
this module holds the behaviour. :class:`ModelAdapter` reads the current sizes of a
model's layers from its modules (so it stays right while a model is pruned step by step) and
removes units physically, giving the layer the same shapes the bundled per-layer modelling
code builds at load time. :func:`keep_layers` removes whole layers (depth pruning and
layer-dropped students both use it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimformer.errors import InvalidSpec, UnsupportedArchitecture
from slimformer.families import FAMILIES, SUPPORTED_FAMILIES, Family
from slimformer.modeling.modeling_slimformer import (
    NoAttention,
    NoUnits,
    head_dim_of,
    layers_of,
    shape_layer,
)


def family_of(config) -> Family:
    """The family of a config, or :class:`UnsupportedArchitecture` naming what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedArchitecture(
            f"model type {model_type!r} is not supported; slimformer prunes these families: "
            f"{', '.join(SUPPORTED_FAMILIES)}",
            details={"model_type": model_type, "supported": list(SUPPORTED_FAMILIES)},
        )
    return FAMILIES[model_type]


def _submodule(layer: nn.Module, path: str) -> nn.Module:
    return layer.get_submodule(path)


def _in_width(module: nn.Module) -> int:
    if isinstance(module, NoUnits):
        return 0
    return module.weight.shape[0] if module.__class__.__name__ == "Conv1D" else module.in_features


def _elements(units: list[int], size: int, device: torch.device) -> torch.Tensor:
    """Indices of the elements of the given units (heads of ``size`` elements each)."""
    if not units:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat([torch.arange(u * size, (u + 1) * size, device=device) for u in units])


@dataclass
class LayerSizes:
    heads: int
    kv_heads: int
    intermediate: int
    mlp_removed: bool
    attention_removed: bool = False


class ModelAdapter:
    """A model seen through its family: layer sizes, gate points, and physical removal of units."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.family = family_of(model.config)
        self.layers = list(layers_of(model, self.family.name))
        self.head_dim = head_dim_of(model.config, self.family.name)
        self.grouped = self.family.grouped

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def attention_output(self, layer_idx: int) -> nn.Module:
        return _submodule(self.layers[layer_idx], self.family.attention_output)

    def mlp_down(self, layer_idx: int) -> nn.Module:
        return _submodule(self.layers[layer_idx], self.family.mlp_down)

    def sizes(self, layer_idx: int) -> LayerSizes:
        layer = self.layers[layer_idx]
        heads = _in_width(self.attention_output(layer_idx)) // self.head_dim
        kv_heads = heads
        if self.grouped:
            key = _submodule(layer, self.family.head_projections[1])
            kv_heads = key.out_features // self.head_dim
        down = self.mlp_down(layer_idx)
        return LayerSizes(
            heads,
            kv_heads,
            _in_width(down),
            isinstance(down, NoUnits),
            attention_removed=isinstance(getattr(layer, "self_attn", None), NoAttention),
        )

    def all_sizes(self) -> list[LayerSizes]:
        return [self.sizes(i) for i in range(self.num_layers)]

    def group_size(self, layer_idx: int) -> int:
        """Query heads that share one key/value head in this layer (1 without grouped-query
        attention)."""
        sizes = self.sizes(layer_idx)
        return sizes.heads // sizes.kv_heads if sizes.kv_heads else 1

    def output_projection(self, layer_idx: int, part: str) -> nn.Module:
        """The projection whose input is the heads' outputs (``part="attention"``) or the FFN
        neurons (``"mlp"``)."""
        return self.attention_output(layer_idx) if part == "attention" else self.mlp_down(layer_idx)

    def output_weight(self, layer_idx: int, part: str) -> torch.Tensor:
        """That projection's weight as [out, in] (GPT-2's Conv1D stores [in, out]), detached."""
        module = self.output_projection(layer_idx, part)
        weight = module.weight.detach()
        return weight.t() if module.__class__.__name__ == "Conv1D" else weight

    def normed_inputs(self, layer_idx: int) -> list[nn.Module]:
        """Projections that read the layer's normalised hidden state (the first query/key/value and
        the first up projection): the embedding channels as Minitron scores them."""
        layer = self.layers[layer_idx]
        paths = (self.family.head_projections[0], self.family.up_projections[0])
        modules = [_submodule(layer, p) for p in paths]
        return [m for m in modules if not isinstance(m, NoUnits)]

    def add_output_bias(self, layer_idx: int, part: str, vector: torch.Tensor) -> None:
        """Add ``vector`` to the output bias of the layer's attention output or down projection,
        creating the bias (zeros) when the projection has none (FLAP's bias compensation)."""
        module = self.output_projection(layer_idx, part)
        if isinstance(module, NoUnits):
            return
        weight = module.weight
        vector = vector.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            if module.bias is None:
                module.bias = nn.Parameter(
                    torch.zeros_like(vector), requires_grad=weight.requires_grad
                )
            module.bias.add_(vector)

    def head_magnitude(self, layer_idx: int) -> torch.Tensor:
        """L2 norm of each query head's q/k/v rows and output columns (the weight-magnitude
        baseline)."""
        layer = self.layers[layer_idx]
        sizes = self.sizes(layer_idx)
        d, group = self.head_dim, self.group_size(layer_idx)
        sq = torch.zeros(sizes.heads)
        out = self.attention_output(layer_idx).weight.detach().float()
        conv1d = self.family.conv1d
        out = out if conv1d else out.t()  # -> [in (heads), out]
        for h in range(sizes.heads):
            sq[h] += out[h * d : (h + 1) * d].pow(2).sum()
        for path in self.family.head_projections:
            weight = _submodule(layer, path).weight.detach().float()
            weight = weight.t() if conv1d else weight  # -> [out, in]
            if self.family.fused_qkv:  # q, k, v of width heads * d each
                width = sizes.heads * d
                for part in range(3):
                    block = weight[part * width : (part + 1) * width]
                    for h in range(sizes.heads):
                        sq[h] += block[h * d : (h + 1) * d].pow(2).sum()
                continue
            is_kv = self.grouped and not path.endswith("q_proj")
            for h in range(sizes.heads):
                unit = h // group if is_kv else h
                # a KV head is shared by its group: each query head gets an equal share of it
                share = 1.0 / group if is_kv else 1.0
                sq[h] += share * weight[unit * d : (unit + 1) * d].pow(2).sum()
        return sq.sqrt()

    def neuron_magnitude(self, layer_idx: int) -> torch.Tensor:
        """L2 norm of each FFN neuron's input rows and output column."""
        layer = self.layers[layer_idx]
        down = self.mlp_down(layer_idx)
        if isinstance(down, NoUnits):
            return torch.zeros(0)
        conv1d = self.family.conv1d
        sq = (
            (down.weight.detach().float() if conv1d else down.weight.detach().float().t())
            .pow(2)
            .sum(1)
        )
        for path in self.family.up_projections:
            weight = _submodule(layer, path).weight.detach().float()
            sq = sq + (weight.t() if conv1d else weight).pow(2).sum(1)
        return sq.sqrt()

    def prune_layer(
        self,
        layer_idx: int,
        *,
        remove_heads: list[int] = (),
        remove_neurons: list[int] = (),
        remove_mlp: bool = False,
        remove_attention: bool = False,
    ) -> None:
        """Physically remove query heads, FFN neurons, the whole MLP or (llama-like families) the
        whole attention of one layer.

        Indices refer to the layer as it is now. With grouped-query attention, a KV head goes
        when all its query heads go, and the kept groups must keep equal numbers of query heads.
        """
        layer = self.layers[layer_idx]
        sizes = self.sizes(layer_idx)
        group = self.group_size(layer_idx)
        drop_heads = set(remove_heads)
        skip_attention = remove_attention or sizes.attention_removed
        keep_q = [] if skip_attention else [h for h in range(sizes.heads) if h not in drop_heads]
        if not keep_q and not skip_attention:
            raise ValueError(
                f"layer {layer_idx}: removing every attention head is not supported (remove the "
                "attention whole)"
            )
        keep_kv = sorted({h // group for h in keep_q})
        per_group = {g: sum(1 for h in keep_q if h // group == g) for g in keep_kv}
        if len(set(per_group.values())) > 1:
            raise ValueError(
                f"layer {layer_idx}: kept query heads per KV group differ ({per_group}); "
                "num_key_value_groups must stay an integer"
            )
        drop_neurons = set(remove_neurons)
        keep_ffn = (
            []
            if (remove_mlp or sizes.mlp_removed)
            else [n for n in range(sizes.intermediate) if n not in drop_neurons]
        )
        skip_mlp = remove_mlp or sizes.mlp_removed

        device = next(layer.parameters()).device
        q_elements = _elements(keep_q, self.head_dim, device)
        width = sizes.heads * self.head_dim
        index = {
            "q": q_elements,
            "kv": _elements(keep_kv, self.head_dim, device),
            "qkv": torch.cat([q_elements, q_elements + width, q_elements + 2 * width]),
            "ffn": torch.tensor(keep_ffn, dtype=torch.long, device=device),
        }
        state = {}
        for key, value in layer.state_dict().items():
            if skip_mlp and key.startswith(self.family.mlp_prefixes):
                continue
            if skip_attention and key.startswith(("self_attn.", "input_layernorm.")):
                continue
            rule = self.family.slices.get(key)
            state[key] = value.index_select(rule[0], index[rule[1]]).clone() if rule else value
        shape_layer(
            self.family.name,
            layer,
            heads=len(keep_q),
            kv_heads=len(keep_kv) if self.grouped else None,
            head_dim=self.head_dim,
            intermediate=len(keep_ffn),
            skip_mlp=skip_mlp,
            skip_attention=skip_attention,
        )
        layer.load_state_dict(state, strict=True)


def keep_layers(model: nn.Module, kept: Sequence[int]) -> None:
    """Keep only the layers ``kept`` (indices in the model as it is), and rewrite the config to
    match.

    The attention modules' ``layer_idx`` (the key/value cache slot), ``layer_types`` and, for
    per-layer pruned models, ``per_layer_config`` are renumbered with the layers, so generation with
    a cache and a save/reload round trip see the model as it is.

    Raises:
        InvalidSpec: indices out of range or repeated, or a GPT-2 config whose attention scaling
            depends on the layer's position (``scale_attn_by_inverse_layer_idx``).
    """
    adapter = ModelAdapter(model)
    family = adapter.family
    n = adapter.num_layers
    kept = list(kept)
    if not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= n:
        raise InvalidSpec(
            f"layers to keep must be increasing distinct indices in [0, {n}), got {kept}"
        )
    config = model.config
    flag = family.layer_scaled_attention
    if flag and getattr(config, flag, False):
        raise InvalidSpec(
            f"this {family.display} scales attention by 1 / (layer index + 1) "
            f"({flag}), so a kept layer would compute something else at "
            "its new position; layer dropping is not supported for it"
        )
    parent_path, _, attr = family.layers.rpartition(".")
    parent = model.base_model.get_submodule(parent_path) if parent_path else model.base_model
    old_layers = getattr(parent, attr)
    new_layers = nn.ModuleList([old_layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    setattr(parent, attr, new_layers)
    if hasattr(parent, "n_layers"):  # DistilBERT's Transformer keeps its own count
        parent.n_layers = len(kept)
    per_layer = None
    if getattr(config, "is_heterogeneous", False):
        per_layer = config.to_dict().get("per_layer_config")
    config.num_hidden_layers = len(kept)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in kept]
    if per_layer is not None:
        config.per_layer_config = {new: per_layer[str(old)] for new, old in enumerate(kept)}


# the family facts, importable from here too
__all__ = [
    "SUPPORTED_FAMILIES",
    "Family",
    "LayerSizes",
    "ModelAdapter",
    "family_of",
    "keep_layers",
]
