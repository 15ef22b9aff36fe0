"""Transformers whose layers differ in shape: the modelling code shipped with per-layer pruned
checkpoints.

This file is copied next to ``config.json`` of every ``per_layer`` artifact and named in its
``auto_map``, so ``AutoModel...from_pretrained(folder, trust_remote_code=True)`` loads the model
with transformers alone: it imports nothing but torch and transformers.

Per-layer sizes are stored in transformers' own heterogeneous format, ``config.per_layer_config``
(``{layer: {"num_attention_heads": 5, "intermediate_size": 700, "skip": ["mlp"]}}``). Stock model
classes still read the global attributes, so each class here builds the stock model at the global
(original) sizes and then gives every layer its own sizes. The global attributes stay readable only
during that construction; afterwards code that assumes a homogeneous model fails loudly instead of
guessing.

slimformer's pruning uses :func:`shape_layer` too, so the shapes it writes are the shapes this file
builds.
"""

from __future__ import annotations

import logging

import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

# Per family: the config attributes that may differ per layer, and where the layers live in the base
# model.
FAMILIES: dict[str, dict] = {
    "bert": {"heads": "num_attention_heads", "ffn": "intermediate_size", "layers": "encoder.layer"},
    "roberta": {
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "layers": "encoder.layer",
    },
    "xlm-roberta": {
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "layers": "encoder.layer",
    },
    "distilbert": {"heads": "n_heads", "ffn": "hidden_dim", "layers": "transformer.layer"},
    "gpt2": {"heads": "n_head", "ffn": "n_inner", "layers": "h"},
    "llama": {
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "layers": "layers",
    },
    "mistral": {
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "layers": "layers",
    },
    "qwen2": {
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "layers": "layers",
    },
    "qwen3": {
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "layers": "layers",
    },
    # slimformer's Nemotron-NAS layout of a Llama (sizes in block_configs, see below)
    "nemotron-nas": {
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "layers": "layers",
    },
}


class NoUnits(nn.Module):
    """A projection whose units were all removed: it outputs zeros of its output width.

    A removed MLP therefore adds nothing to the residual stream, exactly like an MLP gated to zero.
    """

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)


class NoAttention(nn.Module):
    """A decoder layer's attention removed whole (the Nemotron-NAS ``attention.no_op``): it adds
    nothing to the residual stream and holds no weights. Its projections are :class:`NoUnits`, so
    code that reads a layer's sizes sees zero heads."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = NoUnits(0), NoUnits(0), NoUnits(0)
        self.o_proj = NoUnits(hidden_size)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(hidden_states.shape), None


def _linear(old: nn.Module, in_features: int, out_features: int) -> nn.Module:
    """An uninitialised projection of the same kind, dtype, device and bias-ness as ``old``."""
    weight = old.weight
    if isinstance(old, Conv1D):  # GPT-2 stores weights as [in, out]
        new = Conv1D(out_features, in_features)
        new.to(device=weight.device, dtype=weight.dtype)
        return new
    return nn.Linear(
        in_features,
        out_features,
        bias=old.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )


def _width(module: nn.Module, side: str) -> int:
    if isinstance(module, NoUnits):
        return 0 if side == "in" else module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0] if side == "in" else module.weight.shape[1]
    return module.in_features if side == "in" else module.out_features


def _resize(
    parent: nn.Module, name: str, *, in_features: int | None = None, out_features: int | None = None
) -> None:
    old = getattr(parent, name)
    new_in = _width(old, "in") if in_features is None else in_features
    new_out = _width(old, "out") if out_features is None else out_features
    if isinstance(old, NoUnits):
        raise ValueError(f"{name} was removed; a removed MLP cannot be given units again")
    if (new_in, new_out) != (_width(old, "in"), _width(old, "out")):
        setattr(parent, name, _linear(old, new_in, new_out))


def _mlp_parts(family: str, layer: nn.Module) -> tuple[nn.Module, list[str], nn.Module, str]:
    """(module holding the up projections, their names, module holding the down projection, its
    name)."""
    if family in ("bert", "roberta", "xlm-roberta"):
        return layer.intermediate, ["dense"], layer.output, "dense"
    if family == "distilbert":
        return layer.ffn, ["lin1"], layer.ffn, "lin2"
    if family == "gpt2":
        return layer.mlp, ["c_fc"], layer.mlp, "c_proj"
    return layer.mlp, ["gate_proj", "up_proj"], layer.mlp, "down_proj"


def shape_layer(
    family: str,
    layer: nn.Module,
    *,
    heads: int,
    kv_heads: int | None,
    head_dim: int,
    intermediate: int,
    skip_mlp: bool = False,
    skip_attention: bool = False,
) -> None:
    """Give one layer these sizes, replacing projections whose shape changes with uninitialised
    ones. ``skip_attention`` (llama-like families) removes the attention and its input norm whole.

    Weights are loaded afterwards (``from_pretrained``, or slimformer's pruning loading sliced
    tensors).
    """
    width = heads * head_dim
    if family in ("bert", "roberta", "xlm-roberta"):
        attn = layer.attention.self
        for name in ("query", "key", "value"):
            _resize(attn, name, out_features=width)
        _resize(layer.attention.output, "dense", in_features=width)
        attn.num_attention_heads, attn.all_head_size = heads, width
    elif family == "distilbert":
        attn = layer.attention
        for name in ("q_lin", "k_lin", "v_lin"):
            _resize(attn, name, out_features=width)
        _resize(attn, "out_lin", in_features=width)
        attn.n_heads = heads
    elif family == "gpt2":
        attn = layer.attn
        _resize(attn, "c_attn", out_features=3 * width)
        _resize(attn, "c_proj", in_features=width)
        attn.num_heads, attn.split_size = heads, width
    elif skip_attention:
        if not isinstance(layer.self_attn, NoAttention):
            layer.self_attn = NoAttention(layer.self_attn.o_proj.out_features)
            layer.input_layernorm = nn.Identity()
    else:  # llama-like, grouped-query attention
        attn = layer.self_attn
        kv_width = kv_heads * head_dim
        _resize(attn, "q_proj", out_features=width)
        _resize(attn, "k_proj", out_features=kv_width)
        _resize(attn, "v_proj", out_features=kv_width)
        _resize(attn, "o_proj", in_features=width)
        attn.num_key_value_groups = heads // kv_heads

    up_parent, up_names, down_parent, down_name = _mlp_parts(family, layer)
    if skip_mlp:
        for name in up_names:
            setattr(up_parent, name, NoUnits(0))
        setattr(down_parent, down_name, NoUnits(_width(getattr(down_parent, down_name), "out")))
        return
    for name in up_names:
        _resize(up_parent, name, out_features=intermediate)
    _resize(down_parent, down_name, in_features=intermediate)


def add_bias(module: nn.Module) -> None:
    """Give a projection a zero bias if it has none (a removed projection has no weights).

    Pruning with bias compensation (FLAP) folds the removed units' mean contribution into the bias
    of the attention output and MLP down projections, which some families build without one;
    ``config.projection_bias`` names those projections (paths inside a layer).
    """
    if isinstance(module, NoUnits) or getattr(module, "bias", None) is not None:
        return
    weight = module.weight
    width = weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0]
    module.bias = nn.Parameter(torch.zeros(width, device=weight.device, dtype=weight.dtype))


def layers_of(model: nn.Module, family: str) -> nn.ModuleList:
    module = model.base_model
    for part in FAMILIES[family]["layers"].split("."):
        module = getattr(module, part)
    return module


def _global(config, name: str):
    """The global value of an attribute that may also be set per layer."""
    return config._getattr_without_heterogeneous_validation(name)


def head_dim_of(config, family: str) -> int:
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    hidden = getattr(config, "dim", None) if family == "distilbert" else config.hidden_size
    return int(hidden) // int(_global(config, FAMILIES[family]["heads"]))


def layer_sizes(config, family: str, layer_idx: int) -> dict:
    """Heads, KV heads, intermediate size and skipped parts of one layer, read from
    ``per_layer_config``."""
    spec = FAMILIES[family]
    layer_config = config.per_layer_config[layer_idx] if config.is_heterogeneous else config
    read = (
        (lambda name: getattr(layer_config, name))
        if config.is_heterogeneous
        else (lambda name: _global(config, name))
    )
    intermediate = read(spec["ffn"])
    if intermediate is None:  # GPT-2's n_inner=None means 4 x hidden
        intermediate = 4 * config.hidden_size
    return {
        "heads": int(read(spec["heads"])),
        "kv_heads": int(read(spec["kv_heads"])) if "kv_heads" in spec else None,
        "intermediate": int(intermediate),
        "skip_mlp": "mlp" in (getattr(layer_config, "skip", None) or []),
    }


# Written into config.json where a stock model class would be refused the weights. Stock
# transformers reads a folder's config to load anything from it (AutoTokenizer does), and stock
# config checks read global sizes: with this flag they read the original sizes instead of raising.
# A stock model class then builds the original shapes and transformers refuses the pruned weights
# (size mismatch). Where those shapes would fit (only whole MLPs removed, which would be silently
# re-initialised) it is not written, and stock transformers refuses the config. This file's config
# class drops the flag as it loads, keeping transformers' strict per-layer access.
GLOBAL_ACCESS_FLAG = "allow_global_per_layer_attribute_access"


def stock_shapes_refused(config) -> bool:
    """Whether a stock model class, building every layer at the global sizes, would be refused the
    weights: some layer keeps its attention at other head counts, or its MLP at another width."""
    spec = FAMILIES.get(config.model_type)
    if spec is None or not getattr(config, "is_heterogeneous", False):
        return False
    kv = spec.get("kv_heads")
    full_ffn = _global(config, spec["ffn"]) or 4 * config.hidden_size  # GPT-2's n_inner=None
    for idx in range(config.num_hidden_layers):
        sizes = layer_sizes(config, config.model_type, idx)
        if sizes["heads"] != _global(config, spec["heads"]):
            return True
        if kv is not None and sizes["kv_heads"] != _global(config, kv):
            return True
        if not sizes["skip_mlp"] and sizes["intermediate"] != full_ffn:
            return True
    return False


class PerLayerConfigMixin:
    """Validates per-layer sizes instead of the stock global checks (which reject heterogeneous head
    counts); saved, lets stock transformers read the config (:data:`GLOBAL_ACCESS_FLAG`)."""

    def __post_init__(self, **kwargs) -> None:
        super().__post_init__(**kwargs)
        self.__dict__.pop(GLOBAL_ACCESS_FLAG, None)

    def to_dict(self) -> dict:
        output = super().to_dict()
        if stock_shapes_refused(self):
            output[GLOBAL_ACCESS_FLAG] = True
        return output

    def validate(self) -> None:
        # The stock validators were collected from the stock class, so its global-only architecture
        # check would run instead of ours; swap it, keep the others.
        for validator in getattr(self, "__class_validators__", []):
            if validator.__name__ == "validate_architecture":
                self.validate_architecture()
            else:
                validator(self)

    def validate_architecture(self) -> None:
        family = FAMILIES.get(self.model_type)
        if family is None or not getattr(self, "is_heterogeneous", False):
            return
        for idx in range(self.num_hidden_layers):
            sizes = layer_sizes(self, self.model_type, idx)
            if sizes["heads"] < 1:
                raise ValueError(
                    f"layer {idx} has {sizes['heads']} attention heads; at least one is needed"
                )
            if sizes["kv_heads"] is not None and (
                sizes["kv_heads"] < 1 or sizes["heads"] % sizes["kv_heads"]
            ):
                raise ValueError(
                    f"layer {idx}: {sizes['heads']} query heads cannot be grouped over "
                    f"{sizes['kv_heads']} KV heads"
                )


class PerLayerModelMixin:
    """Builds the stock model at the global sizes, then gives each layer the sizes of
    ``per_layer_config``."""

    def __init__(self, config, *args, **kwargs) -> None:
        heterogeneous = getattr(config, "is_heterogeneous", False)
        quiet = logging.getLogger("transformers.integrations.heterogeneity.configuration_utils")
        level = quiet.level
        if heterogeneous:
            config.allow_global_per_layer_attribute_access = True
            quiet.setLevel(logging.ERROR)
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            if heterogeneous:
                config.__dict__.pop("allow_global_per_layer_attribute_access", None)
                quiet.setLevel(level)
        if heterogeneous:
            family = config.model_type
            head_dim = head_dim_of(config, family)
            for idx, layer in enumerate(layers_of(self, family)):
                shape_layer(family, layer, head_dim=head_dim, **layer_sizes(config, family, idx))
                for path in getattr(config, "projection_bias", None) or ():
                    add_bias(layer.get_submodule(path))
            self.post_init()


# (model_type, config class, model classes) of the families and heads slimformer prunes.
_CLASSES = {
    "bert": ("BertConfig", ["BertModel", "BertForSequenceClassification"]),
    "roberta": ("RobertaConfig", ["RobertaModel", "RobertaForSequenceClassification"]),
    "xlm-roberta": ("XLMRobertaConfig", ["XLMRobertaModel", "XLMRobertaForSequenceClassification"]),
    "distilbert": ("DistilBertConfig", ["DistilBertModel", "DistilBertForSequenceClassification"]),
    "gpt2": ("GPT2Config", ["GPT2Model", "GPT2ForSequenceClassification", "GPT2LMHeadModel"]),
    "llama": ("LlamaConfig", ["LlamaModel", "LlamaForSequenceClassification", "LlamaForCausalLM"]),
    "mistral": (
        "MistralConfig",
        ["MistralModel", "MistralForSequenceClassification", "MistralForCausalLM"],
    ),
    "qwen2": ("Qwen2Config", ["Qwen2Model", "Qwen2ForSequenceClassification", "Qwen2ForCausalLM"]),
    "qwen3": ("Qwen3Config", ["Qwen3Model", "Qwen3ForSequenceClassification", "Qwen3ForCausalLM"]),
}

# Generated rather than spelled out: every class is the stock class plus the mixin, nothing else.
for _family, (_config_name, _model_names) in _CLASSES.items():
    _config_cls = type(
        f"Slimformer{_config_name}", (PerLayerConfigMixin, getattr(transformers, _config_name)), {}
    )
    globals()[_config_cls.__name__] = _config_cls
    for _model_name in _model_names:
        _model_cls = type(
            f"Slimformer{_model_name}",
            (PerLayerModelMixin, getattr(transformers, _model_name)),
            {"config_class": _config_cls},
        )
        globals()[_model_cls.__name__] = _model_cls
        if _model_name.endswith("Model") and not _model_name.endswith("LMHeadModel"):
            # Generic heads (LlamaForSequenceClassification, ...) build their body with
            # AutoModel.from_config.
            transformers.AutoModel.register(_config_cls, _model_cls, exist_ok=True)


def class_names(model_type: str, stock_model_class: str) -> tuple[str, str]:
    """Names (config class, model class) in this file for a stock model class of a family."""
    if model_type not in _CLASSES or stock_model_class not in _CLASSES[model_type][1]:
        raise KeyError(f"no per-layer class for {stock_model_class} ({model_type})")
    return f"Slimformer{_CLASSES[model_type][0]}", f"Slimformer{stock_model_class}"


# -- Nemotron-NAS (DeciLM) layout: per-layer shapes in the form vLLM and llama.cpp serve natively.
# ``config.block_configs[i]`` says, for layer i, whether its attention is removed (``no_op``) or
# how many query heads share a KV head (``n_heads_in_group``; every layer keeps all query heads),
# and its FFN width as ``ffn_mult``, from which both engines compute int(2 * mult * hidden / 3)
# rounded up to a multiple of 256. The weights keep Llama's names; removed sub-blocks have none.
DECILM_FFN_STEP = 256


def decilm_ffn_width(ffn_mult: float, hidden_size: int) -> int:
    """The FFN width a Nemotron-NAS block with this ``ffn_mult`` has (as vLLM and llama.cpp compute
    it)."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // DECILM_FFN_STEP) * DECILM_FFN_STEP


def decilm_ffn_mult(width: int, hidden_size: int) -> float:
    """The ``ffn_mult`` that gives exactly ``width`` (a multiple of 256)."""
    mult = 1.5 * width / hidden_size
    if width % DECILM_FFN_STEP or decilm_ffn_width(mult, hidden_size) != width:
        raise ValueError(f"an FFN width of {width} is not a multiple of {DECILM_FFN_STEP}")
    return mult


def decilm_layer_sizes(config, layer_idx: int) -> dict:
    """Sizes of one layer of a Nemotron-NAS config, in :func:`shape_layer`'s terms."""
    block = config.block_configs[layer_idx]
    attention, ffn = block["attention"], block["ffn"]
    heads = int(config.num_attention_heads)
    skip_attention = bool(attention.get("no_op"))
    kv_heads = heads if skip_attention else heads // int(attention["n_heads_in_group"])
    skip_mlp = bool(ffn.get("no_op"))
    intermediate = 0 if skip_mlp else decilm_ffn_width(ffn["ffn_mult"], config.hidden_size)
    return {
        "heads": heads,
        "kv_heads": kv_heads,
        "intermediate": intermediate,
        "skip_mlp": skip_mlp,
        "skip_attention": skip_attention,
    }


class DeciLMModelMixin:
    """Builds the stock Llama model at the global sizes, then gives each layer the sizes of
    ``block_configs``."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        head_dim = head_dim_of(config, "llama")
        for idx, layer in enumerate(layers_of(self, "llama")):
            shape_layer("llama", layer, head_dim=head_dim, **decilm_layer_sizes(config, idx))
        self.post_init()


class DeciLMBlock(dict):
    """One ``block_configs`` entry: stored (and written to ``config.json``) as a plain dict, read
    as attributes too (``block.attention.no_op``), as vLLM's Nemotron-NAS code reads it. A key that
    is absent is an absent attribute."""

    def __init__(self, entry: dict) -> None:
        super().__init__(
            {k: DeciLMBlock(v) if isinstance(v, dict) else v for k, v in dict(entry).items()}
        )

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def decilm_blocks(entries) -> list[DeciLMBlock]:
    return [DeciLMBlock(entry) for entry in entries]


class SlimformerDeciLMConfig(transformers.LlamaConfig):
    """A Llama config whose layers' shapes are in ``block_configs`` (Nemotron-NAS)."""

    model_type = "nemotron-nas"

    def __post_init__(self, **kwargs):
        blocks = kwargs.pop("block_configs", None)
        super().__post_init__(**kwargs)
        if blocks is not None:
            self.block_configs = decilm_blocks(blocks)


SlimformerDeciLMModel = type(
    "SlimformerDeciLMModel",
    (DeciLMModelMixin, transformers.LlamaModel),
    {"config_class": SlimformerDeciLMConfig},
)
SlimformerDeciLMForCausalLM = type(
    "SlimformerDeciLMForCausalLM",
    (DeciLMModelMixin, transformers.LlamaForCausalLM),
    {"config_class": SlimformerDeciLMConfig},
)
