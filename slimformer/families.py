"""Every fact slimformer knows about a model family, in one registry.

One :class:`Family` per ``config.model_type`` says what a model of that family looks like: the
config attributes that hold its sizes, where its layers, attention and MLP projections live, which
parameters are sliced along which dimension when units go, which output biases a stock config can
build, whether a stock config can state fewer heads, what llama.cpp's GGUF converter calls it and
whether the ``nemotron_nas`` layout can write it. Other modules read these fields and never compare
family names.

This module holds data only and imports neither torch nor other slimformer modules (the service
reads it through :mod:`slimformer.spec`); :mod:`slimformer.architectures` holds the behaviour
(``family_of``, :class:`~slimformer.architectures.ModelAdapter`, ``keep_layers``). The bundled
modelling file (``slimformer/modeling/modeling_slimformer.py``) is copied into checkpoints and
imports nothing of slimformer, so it keeps its own copy of the size attributes and layer paths; a
test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# the parts of a layer whose output projection may carry a bias
PARTS = ("attention", "mlp")


@dataclass(frozen=True)
class Family:
    """What one architecture family looks like, in its config and inside a layer."""

    name: str  # config.model_type
    display: str  # how people write it (README, messages)
    # the stock family whose classes build this one when it is slimformer's own layout of it
    # ("nemotron-nas" is a Llama in block_configs form); None for a family a model may come in
    layout_of: str | None
    # config attributes
    hidden_attr: str  # model width
    heads_attr: str  # attention heads
    kv_heads_attr: str | None  # key/value heads; None: no grouped-query attention
    ffn_attr: str  # FFN neurons
    # modules (paths relative to the base model / to a layer)
    layers: str  # the list of layers in the base model
    attention_output: str  # projection whose input is the concatenation of the heads' outputs
    mlp_down: str  # projection whose input is the FFN neurons and whose output is the MLP's output
    mlp_prefixes: tuple[str, ...]  # parameters that belong to the MLP (dropped when it is removed)
    # parameter (relative to the layer) -> (dimension, unit): units are "q" (query-head elements),
    # "kv" (key/value-head elements), "qkv" (GPT-2's fused projection) or "ffn" (intermediate
    # neurons)
    slices: dict[str, tuple[int, str]]
    head_projections: tuple[str, ...]  # q/k/v projections (magnitude importance)
    up_projections: tuple[str, ...]  # projections whose outputs are the FFN neurons
    conv1d: bool  # projections are GPT-2's Conv1D, which stores weights as [in, out]
    fused_qkv: bool  # one projection holds q, k and v side by side (GPT-2's c_attn)
    decoder: bool  # a causal decoder (a classifier scores every token and picks the last)
    # a config flag under which attention depends on the layer's position (so layers cannot move)
    layer_scaled_attention: str | None
    # stock config facts
    # part ("attention", "mlp") -> the stock config flag that gives that part's projections a bias
    # (a part without one gets none); None where slimformer writes no bias flags: the projections
    # have biases already (BERT-like, DistilBERT, GPT-2) or the family is not a stock config
    bias_flags: dict[str, str] | None
    # a stock config states head_dim, so a uniform layout can state fewer heads of the same size
    uniform_heads: bool
    # the stock config insists that the head count divides the width even when head_dim is stated
    heads_divide_hidden: bool
    gguf_architecture: str | None  # llama.cpp's GGUF architecture; None: no GGUF export
    # the nemotron_nas layout (per-layer shapes that vLLM and llama.cpp serve) applies
    nemotron_nas: bool
    # an encoder whose GPTQ folder (export.quantize gptq-int4) reloads in transformers, as
    # tests/test_quantize.py checks; decoders all quantize
    gptq_encoder: bool = False

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.kv_heads_attr is not None

    @property
    def gated_mlp(self) -> bool:
        """The MLP has a gate and an up projection (SwiGLU) besides the down projection."""
        return len(self.up_projections) > 1

    @property
    def stock(self) -> bool:
        """A family a model may come in (not slimformer's own layout of another one)."""
        return self.layout_of is None

    def output_projection(self, part: str) -> str:
        """The projection (path in a layer) whose output is ``part``'s output."""
        return self.attention_output if part == "attention" else self.mlp_down

    def projections(self, part: str) -> tuple[str, ...]:
        """Every projection (paths in a layer) of ``part``, the output one last."""
        inputs = self.head_projections if part == "attention" else self.up_projections
        return (*inputs, self.output_projection(part))


_NO_GGUF = dict(gguf_architecture=None, nemotron_nas=False)
_ENCODER = dict(
    decoder=False,
    conv1d=False,
    fused_qkv=False,
    layer_scaled_attention=None,
    bias_flags=None,
    uniform_heads=False,
    heads_divide_hidden=True,
    **_NO_GGUF,
)


def _bert_like(name: str, display: str) -> Family:
    return Family(
        name=name,
        display=display,
        layout_of=None,
        hidden_attr="hidden_size",
        heads_attr="num_attention_heads",
        kv_heads_attr=None,
        ffn_attr="intermediate_size",
        layers="encoder.layer",
        attention_output="attention.output.dense",
        mlp_down="output.dense",
        mlp_prefixes=("intermediate.dense.", "output.dense."),
        slices={
            **{
                f"attention.self.{p}.{w}": (0, "q")
                for p in ("query", "key", "value")
                for w in ("weight", "bias")
            },
            "attention.output.dense.weight": (1, "q"),
            "intermediate.dense.weight": (0, "ffn"),
            "intermediate.dense.bias": (0, "ffn"),
            "output.dense.weight": (1, "ffn"),
        },
        head_projections=("attention.self.query", "attention.self.key", "attention.self.value"),
        up_projections=("intermediate.dense",),
        **_ENCODER,
    )


def _llama_like(
    name: str,
    display: str,
    *,
    bias_flags: dict[str, str] | None,
    gguf_architecture: str,
    layout_of: str | None = None,
    uniform_heads: bool = True,
    heads_divide_hidden: bool = True,
    nemotron_nas: bool = False,
) -> Family:
    return Family(
        name=name,
        display=display,
        layout_of=layout_of,
        hidden_attr="hidden_size",
        heads_attr="num_attention_heads",
        kv_heads_attr="num_key_value_heads",
        ffn_attr="intermediate_size",
        layers="layers",
        attention_output="self_attn.o_proj",
        mlp_down="mlp.down_proj",
        mlp_prefixes=("mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj."),
        slices={
            "self_attn.q_proj.weight": (0, "q"),
            "self_attn.q_proj.bias": (0, "q"),
            **{
                f"self_attn.{p}.{w}": (0, "kv")
                for p in ("k_proj", "v_proj")
                for w in ("weight", "bias")
            },
            "self_attn.o_proj.weight": (1, "q"),
            **{
                f"mlp.{p}.{w}": (0, "ffn")
                for p in ("gate_proj", "up_proj")
                for w in ("weight", "bias")
            },
            "mlp.down_proj.weight": (1, "ffn"),
        },
        head_projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        up_projections=("mlp.gate_proj", "mlp.up_proj"),
        conv1d=False,
        fused_qkv=False,
        decoder=True,
        layer_scaled_attention=None,
        bias_flags=bias_flags,
        uniform_heads=uniform_heads,
        heads_divide_hidden=heads_divide_hidden,
        gguf_architecture=gguf_architecture,
        nemotron_nas=nemotron_nas,
    )


_ALL = (
    replace(_bert_like("bert", "BERT"), gptq_encoder=True),
    _bert_like("roberta", "RoBERTa"),
    _bert_like("xlm-roberta", "XLM-RoBERTa"),
    Family(
        name="distilbert",
        display="DistilBERT",
        layout_of=None,
        hidden_attr="dim",
        heads_attr="n_heads",
        kv_heads_attr=None,
        ffn_attr="hidden_dim",
        layers="transformer.layer",
        attention_output="attention.out_lin",
        mlp_down="ffn.lin2",
        mlp_prefixes=("ffn.lin1.", "ffn.lin2."),
        slices={
            **{
                f"attention.{p}.{w}": (0, "q")
                for p in ("q_lin", "k_lin", "v_lin")
                for w in ("weight", "bias")
            },
            "attention.out_lin.weight": (1, "q"),
            "ffn.lin1.weight": (0, "ffn"),
            "ffn.lin1.bias": (0, "ffn"),
            "ffn.lin2.weight": (1, "ffn"),
        },
        head_projections=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        up_projections=("ffn.lin1",),
        **_ENCODER,
    ),
    # GPT-2's Conv1D stores weights as [in, out], so output units are columns.
    Family(
        name="gpt2",
        display="GPT-2",
        layout_of=None,
        hidden_attr="hidden_size",
        heads_attr="n_head",
        kv_heads_attr=None,
        ffn_attr="n_inner",
        layers="h",
        attention_output="attn.c_proj",
        mlp_down="mlp.c_proj",
        mlp_prefixes=("mlp.c_fc.", "mlp.c_proj."),
        slices={
            "attn.c_attn.weight": (1, "qkv"),
            "attn.c_attn.bias": (0, "qkv"),
            "attn.c_proj.weight": (0, "q"),
            "mlp.c_fc.weight": (1, "ffn"),
            "mlp.c_fc.bias": (0, "ffn"),
            "mlp.c_proj.weight": (0, "ffn"),
        },
        head_projections=("attn.c_attn",),
        up_projections=("mlp.c_fc",),
        conv1d=True,
        fused_qkv=True,
        decoder=True,
        layer_scaled_attention="scale_attn_by_inverse_layer_idx",
        bias_flags=None,
        uniform_heads=False,
        heads_divide_hidden=True,
        **_NO_GGUF,
    ),
    _llama_like(
        "llama",
        "Llama",
        bias_flags={"attention": "attention_bias", "mlp": "mlp_bias"},
        gguf_architecture="llama",
        nemotron_nas=True,
    ),
    # llama.cpp's converter writes Mistral as a Llama
    _llama_like("mistral", "Mistral", bias_flags={}, gguf_architecture="llama"),
    _llama_like("qwen2", "Qwen2", bias_flags={}, gguf_architecture="qwen2"),
    # Qwen3's config takes head_dim as given; the others' insist that the heads divide the width
    _llama_like(
        "qwen3",
        "Qwen3",
        bias_flags={"attention": "attention_bias"},
        gguf_architecture="qwen3",
        heads_divide_hidden=False,
    ),
    # slimformer's Nemotron-NAS layout of a Llama (sizes in block_configs)
    _llama_like(
        "nemotron-nas",
        "Nemotron-NAS",
        layout_of="llama",
        bias_flags=None,
        gguf_architecture="deci",
        uniform_heads=False,
        nemotron_nas=True,
    ),
)

FAMILIES: dict[str, Family] = {family.name: family for family in _ALL}

# the families a model may come in
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(f.name for f in _ALL if f.stock)
# the families llama.cpp's converter writes as GGUF
GGUF_FAMILIES: tuple[str, ...] = tuple(f.name for f in _ALL if f.gguf_architecture)
# the encoder families whose GPTQ folder reloads
GPTQ_ENCODERS: tuple[str, ...] = tuple(f.name for f in _ALL if f.gptq_encoder)


__all__ = [
    "FAMILIES",
    "GGUF_FAMILIES",
    "GPTQ_ENCODERS",
    "PARTS",
    "SUPPORTED_FAMILIES",
    "Family",
]
