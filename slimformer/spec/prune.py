"""What to remove and how (``prune``), and what its null fields mean for each kind of model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimformer.spec.base import _Strict


class PruneSpec(_Strict):
    """What to remove and how (see docs/pruning.md)."""

    heads: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of attention heads to remove.")
    ffn: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of FFN neurons to remove.")
    whole_mlps: int = Field(
        0, ge=0, description="Number of whole MLPs to remove (per_layer layout)."
    )
    macs_budget: float | None = Field(
        None, gt=0.0, le=1.0, description="Keep at most this fraction of the MACs."
    )
    layout: Literal["per_layer", "uniform", "nemotron_nas"] | None = Field(
        None,
        description="per_layer: best quality, loads in transformers with trust_remote_code=True; "
        "uniform: every layer the same shape, a stock config that loads anywhere; nemotron_nas "
        "(Llama): per-layer shapes in NVIDIA's Nemotron-NAS format, which vLLM and llama.cpp "
        "serve (attention removed whole per layer, FFN widths in multiples of 256). Null: "
        "per_layer; when export.targets names vllm or llama.cpp, nemotron_nas for FFN-only "
        "pruning of a Llama and uniform otherwise (measured best for each, docs/serving.md).",
    )
    schedule: Literal["one_shot", "iterative"] = Field(
        "one_shot",
        description="one_shot: prune to the target at once; iterative: remove `step` of what "
        "remains at a time, with a curve of the metric (heads/ffn fractions only).",
    )
    step: float = Field(
        0.1, gt=0.0, lt=1.0, description="Iterative: fraction of what remains removed per step."
    )
    metric_floor: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Iterative: stop before the metric falls below this fraction of the original.",
    )
    ranking: Literal["global", "per_layer", "adaptive"] | None = Field(
        None,
        description="How units compete: global (raw scores across layers, Michel), per_layer "
        "(every layer loses the same share), adaptive (scores standardised within each layer, then "
        "ranked across layers: FLAP). Null: global; adaptive for causal LMs.",
    )
    importance: Literal["michel", "activations", "flap", "obs", "magnitude", "random"] | None = (
        Field(
            None,
            description="michel (loss gradients of gates), activations (Minitron), flap "
            "(fluctuation, with bias compensation), obs (output error left after a least-squares "
            "refit, with reconstruction), magnitude or random. Null: michel; obs for causal LMs "
            "(docs/pruning.md).",
        )
    )
    calibration_samples: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Rows importance is scored on: the first N training rows "
        "in the job's seeded order (random.Random(seed) shuffle, held-out evaluation rows "
        "excluded); "
        "for causal LMs, N windows of packed text. Null: 512 rows; causal LMs: 32 windows.",
    )
    keep_first_layers: int | None = Field(
        None,
        ge=0,
        description="The first N layers keep their shape. Null: 0; causal LMs: 1 "
        "(0 with the uniform layout).",
    )
    keep_last_layers: int | None = Field(
        None,
        ge=0,
        description="The last N layers keep their shape. Null: 0; causal LMs: 1 "
        "(0 with the uniform layout).",
    )
    bias_compensation: bool | None = Field(
        None,
        description="Fold the removed units' mean output into a bias of the output projection "
        "(FLAP). Null: for flap only; true: also for activations; false: never.",
    )
    reconstruction: bool | None = Field(
        None,
        description="Refit each pruned layer's output projection (kept columns and bias) by least "
        "squares so it reproduces the original output on the calibration tokens. Null: for obs "
        "only (it measures what the refit needs); true: any one-shot method, at the cost of one "
        "more forward pass over the calibration data; false: never.",
    )
    layers: float = Field(
        0.0,
        ge=0.0,
        le=1000,
        description="Whole layers to drop (depth pruning): a "
        "fraction (below 1) or a count (1 or more).",
    )
    depth_importance: Literal["block_influence", "metric_drop"] = Field(
        "block_influence",
        description="How layers are ranked for prune.layers: block influence "
        "(ShortGPT, 1 - cosine of a layer's input and output) or the loss increase when the layer "
        "is skipped.",
    )

    @model_validator(mode="after")
    def _something(self) -> PruneSpec:
        if self.macs_budget is not None and (self.heads or self.ffn):
            raise ValueError("give macs_budget or heads/ffn fractions, not both")
        if self.schedule == "iterative" and (
            self.macs_budget is not None or self.whole_mlps or self.layers
        ):
            raise ValueError(
                "the iterative schedule takes heads/ffn fractions; use one_shot for macs_budget, "
                "whole_mlps and layers"
            )
        if self.schedule == "iterative" and self.reconstruction and self.importance != "obs":
            raise ValueError(
                "reconstruction with the iterative schedule needs importance obs (it re-measures "
                "the Gram matrices at every step)"
            )
        if self.layers >= 1 and self.layers != int(self.layers):
            raise ValueError("prune.layers is a fraction below 1 or a whole number of layers")
        return self

    def removes_width(self) -> bool:
        """Heads, neurons or MLPs go (not only whole layers)."""
        return bool(self.heads or self.ffn or self.whole_mlps or self.macs_budget is not None)

    def removes_something(self) -> bool:
        return bool(
            self.heads or self.ffn or self.whole_mlps or self.macs_budget is not None or self.layers
        )

    def resolved(self, task: str | None) -> PruneSpec:
        """This spec with every null default filled in for ``task`` (causal LMs get
        :data:`CAUSAL_LM_DEFAULTS`, every other task :data:`PRUNE_DEFAULTS`; the uniform layout
        keeps no layer's own shape)."""
        defaults = CAUSAL_LM_DEFAULTS if task == "text-generation" else PRUNE_DEFAULTS
        defaults = defaults | {"layout": "per_layer"}
        if self.layout == "uniform":  # every layer has the same shape: none can keep its own
            defaults = defaults | {"keep_first_layers": 0, "keep_last_layers": 0}
        values = self.model_dump()
        values.update({k: v for k, v in defaults.items() if values.get(k) is None})
        return PruneSpec(**values)


# What a null field of PruneSpec means: Michel's method and ranking for classifiers and embedding
# models; for causal LMs the settings measured on SmolLM2-135M (docs/pruning.md).
PRUNE_DEFAULTS: dict[str, object] = {
    "importance": "michel",
    "ranking": "global",
    "calibration_samples": 512,
    "keep_first_layers": 0,
    "keep_last_layers": 0,
}
CAUSAL_LM_DEFAULTS: dict[str, object] = {
    "importance": "obs",
    "ranking": "adaptive",
    "calibration_samples": 32,
    "keep_first_layers": 1,
    "keep_last_layers": 1,
}
