"""The data of pruning: what to remove (:class:`PruningTarget`), the units chosen
(:class:`PruningPlan`), what was removed across steps (:class:`PruningRecord`) and a schedule's
result (:class:`PruneResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import nn

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.importance import Importance

# the names a layout goes by (slimformer.pruning.layouts.LAYOUTS has the rules behind each)
LayoutName = Literal["uniform", "per_layer", "nemotron_nas"]
Ranking = Literal["global", "per_layer", "adaptive"]
GqaUnit = Literal["groups", "query_heads"]


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
    # every kept FFN width a multiple of this (a quantized target's group size; 1: any width)
    width_multiple: int = 1

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


@dataclass(frozen=True)
class UnitRequest:
    """What one candidate plan asks of a layout: ``heads`` of the query heads and ``ffn`` of the
    FFN neurons of the model ``adapter`` sees, chosen by ``importance`` within ``target``'s limits;
    the layers in ``mlps`` lose their MLP whole. ``attention_scores``: one score per layer for a
    layout that removes attention whole (None: the sum of the layer's head scores)."""

    adapter: ModelAdapter
    importance: Importance
    target: PruningTarget
    heads: float
    ffn: float
    mlps: list[int]
    attention_scores: torch.Tensor | None = None


class Units(NamedTuple):
    """The units a layout chose for one candidate plan, as indices into the model as it is."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]
    attention: list[int]  # layers whose attention goes whole


@dataclass
class PruneResult:
    """A schedule's pruned model, what it removed, the scores it used and (one-shot) its plan."""

    model: nn.Module
    record: PruningRecord
    importance: list[Importance]
    plan: PruningPlan | None = None
