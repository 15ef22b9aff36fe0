"""Knowledge distillation (``distill``): the student and the training settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimformer.spec.base import _Strict, hub_id_or_local


class StudentSpec(_Strict):
    """The student: a layer-dropped copy of the teacher ({layers}) or a smaller model ({id})."""

    layers: int | None = Field(None, ge=1, description="Keep this many of the teacher's layers.")
    id: str | None = Field(
        None, description="A smaller model sharing the teacher's tokenizer and labels."
    )
    layer_selection: Literal["even", "importance", "block_influence"] | None = Field(
        None,
        description="Which of the teacher's layers a layer-dropped student keeps: even (every "
        "other layer, ending with the last), importance (a gate on each layer's residual update, "
        "scored like heads) or block_influence (the layers depth pruning keeps: ShortGPT's block "
        "influence on the calibration text, so distillation starts where `prune --layers` ends). "
        "Null: block_influence for causal LMs, even for the other tasks.",
    )

    def selection_for(self, task: str) -> str:
        """The layer selection used for ``task`` (the field, or its default by task)."""
        if self.layer_selection is not None:
            return self.layer_selection
        return "block_influence" if task == "text-generation" else "even"

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else hub_id_or_local(value, info, "model")

    @model_validator(mode="after")
    def _one(self) -> StudentSpec:
        if (self.layers is None) == (self.id is None):
            raise ValueError("give the student as {layers: K} or {id: MODEL}, exactly one")
        return self


class DistillSpec(_Strict):
    """Knowledge distillation (Hinton et al. 2015) of the teacher into the student."""

    student: StudentSpec | None = Field(
        None,
        description="Required for method distill; prune_distill uses the "
        "pruned model as the student.",
    )
    # null: the recipe of the student's kind (slimformer/distill/recipes.py; docs/distillation.md)
    temperature: float | None = Field(
        None,
        gt=0.0,
        le=20.0,
        description="Softening of the soft targets; null: the student's recipe (2.0).",
    )
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Weight of the gold-label loss (when labels exist); null: the student's recipe "
        "(0.5).",
    )
    hidden_loss: Literal["cosine", "mse", "none"] | None = Field(
        None,
        description="Alignment of the student's layers with the teacher's; 'none': off; "
        "null: the student's recipe (cosine for layer-dropped and pruned students, none for a "
        "named model).",
    )
    epochs: float = Field(3.0, gt=0.0, le=100.0, description="Passes over the training rows.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimiser steps; null: the epochs decide."
    )
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        le=24 * 60,
        description="Wall-clock budget of the distilling stage, its evaluations included; the "
        "learning-rate schedule is fitted to the steps that fit. The job's other stages come on "
        "top: loading, the final side-by-side evaluation of teacher and student and writing "
        "(234 s beside a 10-minute budget for SmolLM2-135M with 64 evaluation windows on 2 CPU "
        "cores; fewer windows with --eval-samples shorten it).",
    )
    learning_rate: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Peak learning rate; null: the student's recipe (1e-4 layer-dropped or named, "
        "5e-5 pruned).",
    )
