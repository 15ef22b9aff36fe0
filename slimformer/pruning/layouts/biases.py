"""Output biases in llama-like families: which biases a pruned model carries that its family's
stock config does not build (FLAP's compensation and a least-squares refit with a bias give output
projections one). Which stock config flag builds each is the family's
:attr:`~slimformer.families.Family.bias_flags`."""

from __future__ import annotations

from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.families import PARTS, Family


def _stock_has_bias(config, family: Family, part: str) -> bool:
    flag = (family.bias_flags or {}).get(part)
    return bool(flag and getattr(config, flag, False))


def unstated_biases(model: nn.Module, adapter: ModelAdapter) -> list[str]:
    """The parts (``attention``, ``mlp``) whose output projection carries a bias in some layer that
    the family's stock config does not build; none where the family has no bias flags (BERT-like,
    DistilBERT and GPT-2 projections have biases already)."""
    family = adapter.family
    if family.bias_flags is None:
        return []
    needed = []
    for part in PARTS:
        path = family.output_projection(part)
        biased = any(
            getattr(layer.get_submodule(path), "bias", None) is not None for layer in adapter.layers
        )
        if biased and not _stock_has_bias(model.config, family, part):
            needed.append(part)
    return needed
