"""The typed results the recipe's stages hand each other (each stage module fills one)."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

import torch
from torch import nn

from slimformer.data import TextData, make_batches
from slimformer.loading import LoadedModel
from slimformer.memory import MemoryEstimate
from slimformer.pruning import PruningTarget
from slimformer.recipe.job_data import JobData
from slimformer.spec import DistillSpec, JobSpec
from slimformer.streaming.model import StreamedModel
from slimformer.streaming.prune import SideBySide

LAYER_BY_LAYER, IN_MEMORY = "layer_by_layer", "in_memory"


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
    streamed: StreamedModel | None = None  # layer by layer: the model's layers stay on disk

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
    side_by_side: SideBySide | None = None  # layer by layer: both models measured while pruning


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
    quantized: list[dict] | None = None  # export.quantize: one record per quantized folder
    generation: dict | None = None  # the PyTorch rows of the served-files table


@dataclass
class Execution:
    """The report's ``execution``: the path, why a job did not stream, the estimate beside the
    measured peak."""

    path: str
    why_in_memory: str | None = None
    estimate: MemoryEstimate | None = None
    available_bytes: int | None = None
    extra: dict = field(default_factory=dict)
    states_in_files: bool = False  # layer by layer: the hidden states were spilled to files

    def to_dict(self) -> dict:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        whole = self.extra.get("whole_model")
        if whole is not None:  # the whole-model measurements came after the compression
            whole = whole | {"peak_bytes": peak if whole["loaded"] else None}
        return {
            "path": self.path,
            "why_in_memory": self.why_in_memory,
            "estimated_peak_bytes": self.estimate.total_bytes if self.estimate else None,
            "measured_peak_bytes": whole["peak_before_bytes"] if whole else peak,
            "available_bytes": self.available_bytes,
            "states_in_files": self.states_in_files,
            "estimate": self.estimate.to_dict() if self.estimate else None,
            "whole_model": whole,
        }
