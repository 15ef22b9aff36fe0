"""The compression report, ``compression_report.json`` in each artifact folder, as typed models.

The writing stage builds the report as a dict and writes that dict as JSON; these models validate
and type it for the evaluation card (:func:`slimformer.card.build_card`) and for reports read back
from disk (``CompressionReport.model_validate(json.loads(text))``). They do not re-serialise it.

They are also the source of the published JSON schema, ``schemas/compression_report.schema.json``
(:func:`report_json_schema`; regenerate the file with ``python -m slimformer.report``).

Objects keep every key they do not name (``extra="allow"``: ``model_extra``). Keys added after
the first reports are optional (``None`` in Python when absent), so reports written by earlier
versions still load; the published schema allows null only where the report writes it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.json_schema import GenerateJsonSchema

from slimformer.report.artifacts import (
    ArtifactsInfo,
    GgufFile,
    OnnxInfo,
    OnnxInt8,
    QuantizedFolder,
    QuantizedServed,
    VllmInfo,
)
from slimformer.report.base import Number, Task, _Open, _optional
from slimformer.report.evaluation import (
    Downstream,
    DownstreamRow,
    Evaluation,
    Generation,
    GenerationItem,
    Generations,
    Latency,
    Measurement,
    Ratios,
)

SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "compression_report.schema.json"
SCHEMA_HEADER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://slimformer.invalid/schemas/compression_report.schema.json",
}
SPEC_KEYS = ("model", "dataset", "method", "prune", "distill", "evaluation", "seed")


class BaseModelInfo(_Open):
    """The model that was compressed and where it came from."""

    id: str = Field(
        description="The base model's Hub id where known, else the local folder's name "
        "(never a path)"
    )
    hub_id: str | None = Field(
        None,
        description="The Hub id, or null when a local folder's origin is unknown (absent from "
        "reports before it existed: there a Hub model has a commit)",
    )
    source: Literal["hub", "hub_cache", "config", "given", "local"] | None = _optional(
        "How hub_id is known: downloaded, a Hugging Face cache snapshot folder, _name_or_path in "
        "config.json, model.base_model, or not at all"
    )
    folder_name: str | None = _optional("A local model folder's name (not its path)")
    revision: str | None = Field(
        description="The revision asked for (model.revision); for a local folder, its commit "
        "where known"
    )
    commit: str | None = Field(
        description="Resolved commit of a Hub model (or of a cache snapshot); null when unknown"
    )
    task: Task
    family: str = Field(description="The model family (slimformer.families)")
    license: str | None = Field(description="The license in the base model's card metadata")
    new_head: list[str] = Field(
        default_factory=list,
        description="Head weights the checkpoint lacked, initialised at random "
        "(model.allow_new_head)",
    )
    own_code: bool = Field(
        False, description="A slimformer per_layer model, loaded with the installed modelling code"
    )


class DataInfo(_Open):
    """The data the job read: training (calibration, distillation) and evaluation."""

    source: str = Field(description="The training data: a Hub dataset id or a file name")
    rows: int = Field(ge=1, description="Rows (documents) of the training data")
    eval_source: str = Field(description="The evaluation data (or the held-out part of source)")
    eval_rows: int = Field(ge=1, description="Evaluation rows (windows for a causal LM)")
    calibration_rows: int = Field(
        ge=1, description="Rows (windows for a causal LM) importance was scored on"
    )
    eval_split: str | None = Field(None, description="The split of a Hub dataset; null for files")
    eval_dataset_type: str | None = _optional(
        "The evaluation data's Hub dataset id, or custom (the card's model-index)"
    )
    text_column: str | None = _optional("The text column")
    text_pair_column: str | None = None
    label_column: str | None = None
    unused_label_column: str | None = _optional(
        "A label column that was named but not used (a causal LM, an embedding model without pairs)"
    )
    calibration_source: str | None = _optional("The data importance was scored on")
    calibration_protocol: dict[str, Any] | None = _optional(
        "How a causal LM's calibration text was packed into windows (slimformer.text)"
    )


class CurvePoint(_Open):
    """One step of a pruning schedule."""

    heads_removed: Number = Field(description="Fraction of the heads removed")
    ffn_removed: Number = Field(description="Fraction of the FFN neurons removed")
    metric: Number = Field(description="The primary metric after this step")
    kept: bool = Field(description="False for a step undone for falling below the metric floor")


class PruningInfo(_Open):
    """What was removed, layer by layer (original numbering)."""

    removed_heads: dict[str, list[int]] = Field(description="Removed heads by layer")
    heads_per_layer: list[int]
    original_heads_per_layer: list[int]
    neurons_per_layer: list[int]
    original_neurons_per_layer: list[int]
    removed_mlps: list[int]
    removed_attention: list[int] = Field(
        default_factory=list,
        description="Layers whose attention was removed whole (nemotron_nas layout)",
    )
    reconstruction: bool = Field(
        False,
        description="Each pruned layer's output projection was refitted by least squares",
    )
    curve: list[CurvePoint] = Field(description="The metric at each step of an iterative schedule")
    removed_layers: list[int] = Field(
        default_factory=list, description="Layers removed whole (depth pruning)"
    )
    original_layers: int | None = _optional("The base model's layer count")


class ImportanceInfo(_Open):
    """The importance scores pruning ranked units by."""

    method: str
    loss: str = Field(description="What the scores were computed from: task, label_free or ''")
    batches: int
    seconds: Number
    heads: list[list[Number]] = Field(description="Head scores, layers x heads")
    mlps: list[Number | None] = Field(description="Whole-MLP scores; null for a removed MLP")


class HealthFinding(_Open):
    """A training-health finding of distillation."""

    level: str
    check: str
    message: str


class DistillationInfo(_Open):
    """The distillation run: the student, steps, time, the kept checkpoint, health."""

    steps: int | None = _optional("Training steps")
    seconds: Number | None = _optional("Training time")
    best_metric: Number | None = Field(
        None, description="The evaluation metric of the kept checkpoint; null when not evaluated"
    )
    health: list[HealthFinding] = Field(default_factory=list)


class Environment(_Open):
    """Where the job ran."""

    python: str
    torch: str
    transformers: str
    huggingface_hub: str | None = _optional("The huggingface_hub version")
    slimformer: str
    device: str
    threads: int
    platform: str | None = _optional("platform.platform()")


class WholeModel(_Open):
    """Layer by layer, after the folder is written: each model loaded whole, one at a time, for
    latency, generations and downstream tasks, where one fits."""

    loaded: bool = Field(description="Whether the whole models were loaded and measured")
    latency: bool | None = _optional("Whether latency was measured")
    generations: bool | None = _optional("Whether the generations were made")
    tasks: bool | None = _optional("Whether the downstream tasks ran")
    needed_bytes: int | None = Field(
        description="What one whole model needs for latency (batch 32), estimated"
    )
    generation_needed_bytes: int | None = _optional(
        "What one whole model needs for the generations alone (one sequence), estimated"
    )
    task_needed_bytes: int | None = Field(
        None,
        description="What one whole model needs for the default downstream tasks (a batch of "
        "lm-eval requests), estimated; null when the tasks were named (the estimate counts them) "
        "or there were none",
    )
    room_bytes: int | None = Field(description="The memory left for it at that moment")
    why_not: str | None = Field(description="What was not measured, and why")
    peak_before_bytes: int = Field(description="The process's peak before they were loaded")
    peak_bytes: int | None = Field(None, description="The process's peak after them")


class ExecutionInfo(_Open):
    """How the job ran: in memory, or layer by layer with the model's layers left on disk."""

    path: str = Field(description="layer_by_layer or in_memory")
    why_in_memory: str | None = Field(None, description="Why a causal LM was not streamed")
    estimated_peak_bytes: int | None = Field(None, description="The memory estimate's peak")
    measured_peak_bytes: int | None = Field(
        None,
        description="The process's peak resident memory while compressing (layer by layer: "
        "before the whole-model measurements; whole_model.peak_bytes is the peak after them)",
    )
    available_bytes: int | None = Field(None, description="The memory the job may use, where known")
    states_in_files: bool | None = Field(
        None,
        description="Layer by layer: the hidden states were kept in files, one window in memory "
        "(they would have taken more than a quarter of the available memory, or not fitted)",
    )
    estimate: dict[str, Any] | None = Field(None, description="The estimate, part by part")
    whole_model: WholeModel | None = Field(
        None, description="Layer by layer: loading one whole model for latency and generations"
    )


class CompressionReport(_Open):
    """Every number behind an evaluation card: compression_report.json in each artifact folder."""

    model_config = ConfigDict(title="slimformer compression report")

    schema_version: Literal[1]
    job_id: str | None = None
    created_at: dt.datetime
    spec: dict[str, Any] = Field(
        description="The job spec (docs/job-spec.schema.json)",
        json_schema_extra={"required": list(SPEC_KEYS)},
    )
    base_model: BaseModelInfo
    data: DataInfo
    evaluation: Evaluation
    pruning: PruningInfo | None
    importance: ImportanceInfo | None
    distillation: DistillationInfo | None
    artifacts: ArtifactsInfo
    environment: Environment
    seconds: dict[str, Number] = Field(description="Seconds per stage, and the total")
    execution: ExecutionInfo | None = Field(
        None, description="How the job ran (absent from reports before layer-by-layer jobs)"
    )

    @field_validator("spec")
    @classmethod
    def _spec_is_whole(cls, spec: dict[str, Any]) -> dict[str, Any]:
        missing = [key for key in SPEC_KEYS if key not in spec]
        if missing:
            raise ValueError(f"the spec lacks {', '.join(missing)}")
        return spec


class _NoFieldTitles(GenerateJsonSchema):
    """Field titles only repeat the field names: left out."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def report_json_schema() -> dict:
    """The JSON schema of :class:`CompressionReport`, as published in
    ``schemas/compression_report.schema.json``."""
    return SCHEMA_HEADER | CompressionReport.model_json_schema(schema_generator=_NoFieldTitles)


__all__ = [
    "SCHEMA_FILE",
    "ArtifactsInfo",
    "BaseModelInfo",
    "CompressionReport",
    "CurvePoint",
    "DataInfo",
    "DistillationInfo",
    "Downstream",
    "DownstreamRow",
    "Environment",
    "Evaluation",
    "ExecutionInfo",
    "GgufFile",
    "Generation",
    "GenerationItem",
    "Generations",
    "HealthFinding",
    "ImportanceInfo",
    "Latency",
    "Measurement",
    "Number",
    "OnnxInfo",
    "OnnxInt8",
    "PruningInfo",
    "QuantizedFolder",
    "QuantizedServed",
    "Ratios",
    "VllmInfo",
    "WholeModel",
    "report_json_schema",
]
