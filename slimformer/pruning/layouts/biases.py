"""Output biases in llama-like families: which stock config flag builds each, and which biases a
pruned model carries that its family's stock config does not build (FLAP's compensation and a
least-squares refit with a bias give output projections one)."""

from __future__ import annotations

from torch import nn

from slimformer.architectures import ModelAdapter

# which stock config flag gives a llama-like family's attention / MLP projections a bias
BIAS_FLAGS: dict[str, dict[str, str]] = {
    "llama": {"attention": "attention_bias", "mlp": "mlp_bias"},
    "qwen3": {"attention": "attention_bias"},
    "mistral": {},
    "qwen2": {},
}
# the families whose projections have a bias only where a flag says so (BERT-like, DistilBERT and
# GPT-2 projections have biases already)
LLAMA_LIKE = tuple(BIAS_FLAGS)
OUTPUT_PROJECTIONS = {"attention": "self_attn.o_proj", "mlp": "mlp.down_proj"}


def _stock_has_bias(config, family: str, part: str) -> bool:
    flag = BIAS_FLAGS.get(family, {}).get(part)
    return bool(flag and getattr(config, flag, False))


def unstated_biases(model: nn.Module, adapter: ModelAdapter) -> list[str]:
    """The parts (``attention``, ``mlp``) whose output projection carries a bias in some layer that
    the family's stock config does not build; none outside the llama-like families."""
    family = adapter.family.name
    if family not in LLAMA_LIKE:
        return []
    needed = []
    for part, path in OUTPUT_PROJECTIONS.items():
        biased = any(
            getattr(layer.get_submodule(path), "bias", None) is not None for layer in adapter.layers
        )
        if biased and not _stock_has_bias(model.config, family, part):
            needed.append(part)
    return needed
