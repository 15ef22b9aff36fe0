"""The typed results the recipe's stages hand each other (each stage module fills one)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from slimformer.data import TextData, make_batches
from slimformer.loading import LoadedModel
from slimformer.pruning import PruningTarget
from slimformer.recipe.job_data import JobData
from slimformer.spec import DistillSpec, JobSpec


@dataclass
class Inputs:
    """What the ``downloading`` stage hands the others."""

    loaded: LoadedModel
    spec: JobSpec  # defaults resolved for this model (layout, prune settings by task)
    task: str
    family: str
    data: JobData
    original: nn.Module  # an untouched copy, for the side-by-side evaluation
    eval_batches: list[dict]
    batch_kwargs: dict
    cal_batches: list[dict] | None = None  # causal LMs: packed windows, made here
    calibration: TextData | None = None  # other tasks: rows, batched when scoring needs them
    protocol: dict | None = None  # causal LMs: how the evaluation windows were cut
    lm_windows: list[list[int]] | None = None  # token ids engines score the same way
    pair_kwargs: dict = field(default_factory=dict)  # embedding models: pairs and gold scores
    reference: torch.Tensor | None = None  # the original's outputs on the evaluation batches

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def calibration_batches(self) -> list[dict]:
        """The batches importance is scored on (made once, on first use)."""
        if self.cal_batches is None:
            self.cal_batches = make_batches(self.tokenizer, self.calibration, **self.batch_kwargs)
        return self.cal_batches


@dataclass
class Scores:
    target: PruningTarget
    started: float  # when scoring began: the pruning stage's time counts from here
    depth: dict | None = None  # removed layers, of how many, and the report's layer scores
    importance: object | None = None  # an Importance, when the schedule is one-shot


@dataclass
class Pruned:
    model: nn.Module
    record: dict  # the report's ``pruning``
    importance: dict | None  # the report's ``importance``


@dataclass
class Distilled:
    model: nn.Module
    report: dict  # the report's ``distillation``
    settings: DistillSpec  # the spec's distillation settings with the recipe's values filled in


@dataclass
class Served:
    onnx: dict | None = None
    gguf: list[dict] | None = None
    vllm: dict | None = None
    generation: dict | None = None  # the PyTorch rows of the served-files table
