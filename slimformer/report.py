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
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.json_schema import GenerateJsonSchema

SCHEMA_FILE = Path(__file__).parent / "schemas" / "compression_report.schema.json"
SCHEMA_HEADER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://slimformer.invalid/schemas/compression_report.schema.json",
}
SPEC_KEYS = ("model", "dataset", "method", "prune", "distill", "evaluation", "seed")

# a JSON number: an int stays an int and a float a float, as the report wrote them
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]
Task = Literal["text-classification", "text-generation", "feature-extraction"]


def _never_null(schema: dict[str, Any]) -> None:
    """The schema of an optional key that is never null when present: without the null branch
    and the ``"default": null`` that the ``None`` default (absence) would give it."""
    schema.pop("default", None)
    (branch,) = [b for b in schema.pop("anyOf") if b != {"type": "null"}]
    schema.update(branch)


def _optional(description: str) -> Any:
    """An optional key that is never null: ``None`` in Python when the report lacks it."""
    return Field(None, description=description, json_schema_extra=_never_null)


class _Open(BaseModel):
    """A report object: the keys it does not name are kept."""

    model_config = ConfigDict(extra="allow")


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


class Latency(_Open):
    """One model's latency on evaluation-length sequences."""

    batch1_p50_ms: Number = Field(description="Median latency at batch 1, milliseconds")
    batch1_p95_ms: Number = Field(description="95th-percentile latency at batch 1, milliseconds")
    batch32_throughput: Number = Field(description="Sequences per second at batch 32")


class Measurement(_Open):
    """One model's column of the side-by-side table."""

    metrics: dict[str, Number | None] = Field(
        description="Task metrics by name; null where a value was not finite"
    )
    parameters: int
    weight_bytes: int
    macs: int = Field(description="Multiply-accumulates per sequence of seq_len tokens")
    embedding_parameters: int | None = _optional(
        "Parameters of the embedding tables and the LM head (once when tied); parameters less "
        "these are the non-embedding parameters"
    )
    latency: Latency | None = Field(description="null when latency was not measured")


class Ratios(_Open):
    """The compressed model against the original."""

    parameters: Number = Field(description="Compressed / original")
    non_embedding_parameters: Number | None = _optional(
        "Compressed / original, the embeddings and LM head left out (what pruning acts on)"
    )
    weight_bytes: Number = Field(description="Compressed / original")
    macs: Number = Field(description="Compressed / original")
    latency_speedup: Number | None = Field(
        description="Original / compressed median latency at batch 1; null when not measured"
    )
    throughput_speedup: Number | None = Field(
        description="Compressed / original throughput at batch 32; null when not measured"
    )


class Generation(_Open):
    """Greedy generation of one stream by both PyTorch models (jobs with serving targets and
    latency on)."""

    prompt_tokens: int
    new_tokens: int
    original_tokens_per_s: Number
    compressed_tokens_per_s: Number


class GenerationItem(_Open):
    """One prompt and both models' greedy continuations."""

    prompt: str
    original: str = Field(description="The original model's continuation")
    compressed: str = Field(description="The compressed model's continuation")
    same_leading_tokens: int = Field(
        description="Leading tokens of the compressed continuation equal to the original's"
    )
    original_tokens: int = Field(description="Tokens in the original's continuation")


class Generations(_Open):
    """Greedy continuations of a few prompts by both models, to read side by side."""

    source: Literal["given", "evaluation_text"] = Field(
        description="given: evaluation.prompts; evaluation_text: the start of evaluation windows"
    )
    decoding: Literal["greedy"]
    new_tokens: int = Field(description="Tokens generated at most per prompt")
    items: list[GenerationItem]


class DownstreamRow(_Open):
    """One metric of one lm-eval task, for both models on the same items."""

    task: str = Field(description="The lm-eval task name")
    metric: str = Field(description="lm-eval's metric name (acc, acc_norm, perplexity, ...)")
    items: int | None = Field(description="Items scored (evaluation.task_limit or all)")
    original: Number
    compressed: Number
    change: Number = Field(description="Compressed - original, in the metric's unit")
    change_points: Number | None = Field(
        description="The change in percentage points, for metrics that are shares; else null"
    )
    original_stderr: Number | None = Field(description="lm-eval's standard error; null if none")
    compressed_stderr: Number | None = Field(description="lm-eval's standard error; null if none")
    higher_is_better: bool | None = Field(description="As lm-eval states it for the metric")


class Downstream(_Open):
    """lm-evaluation-harness tasks on both models (evaluation.tasks)."""

    harness: Literal["lm-eval"]
    harness_version: str | None
    tasks: list[str]
    limit: int | None = Field(description="Items per task (evaluation.task_limit); null: all")
    rows: list[DownstreamRow] = Field(description="One per task and metric")
    seconds: Number = Field(description="Both models, all tasks")


class Evaluation(_Open):
    """The original and the compressed model measured side by side in the same run."""

    task: str
    primary_metric: str
    higher_is_better: bool
    rows: int
    seq_len: int
    device: str
    threads: int
    torch_version: str | None = _optional("The torch version that measured")
    protocol: dict[str, Any] | None = _optional(
        "How a causal LM's evaluation text was packed into windows (slimformer.text)"
    )
    generation: Generation | None = _optional(
        "Greedy generation of one stream by both PyTorch models (jobs with serving targets and "
        "latency on): prompt_tokens, new_tokens, original_tokens_per_s, compressed_tokens_per_s"
    )
    downstream: Downstream | None = _optional(
        "lm-evaluation-harness tasks on both models, same items (evaluation.tasks)"
    )
    generations: Generations | None = _optional(
        "Causal LMs: greedy continuations of a few prompts by both models (evaluation.prompts, "
        "evaluation.new_tokens)"
    )
    original: Measurement
    compressed: Measurement
    agreement: Number | None = Field(
        description="Agreement with the original: the share of identical predictions, or for "
        "embeddings the mean cosine; null when not measured"
    )
    ratios: Ratios


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


class OnnxInt8(_Open):
    """onnxruntime's dynamic int8 quantization of model.onnx."""

    path: str
    size_bytes: int
    float_size_bytes: int
    max_abs_diff: Number = Field(description="Largest output difference from the float graph")
    top1_agreement: Number | None = Field(
        None, description="Share of identical top-1 predictions on the first evaluation batch"
    )


class OnnxInfo(_Open):
    """The compressed model exported to ONNX."""

    path: str
    inputs: list[str]
    max_abs_diff: Number = Field(description="Largest output difference from PyTorch")
    int8: OnnxInt8 | None = _optional("The int8 graph (evaluation.onnx_int8)")


class VllmInfo(_Open):
    """The folder loaded by vLLM's CPU build."""

    perplexity: Number = Field(description="On the evaluation windows")
    next_token_accuracy: Number = Field(description="On the evaluation windows")
    load_seconds: Number
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class GgufFile(_Open):
    """A GGUF file written by llama.cpp's tools."""

    type: str = Field(description="The GGUF type, e.g. f16 or q8_0")
    file: str = Field(description="The path in the folder")
    size_bytes: int
    seconds: Number | None = _optional("Time to write it")
    perplexity: Number | None = _optional("In llama.cpp on the evaluation windows (causal LMs)")
    next_token_accuracy: Number | None = _optional("In llama.cpp on the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class QuantizedServed(_Open):
    """A quantized folder loaded by vLLM's CPU build."""

    perplexity: Number = Field(description="On the evaluation windows")
    next_token_accuracy: Number = Field(description="On the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class QuantizedFolder(_Open):
    """A quantized copy of the model folder (export.quantize), reloaded in a fresh process."""

    method: Literal["gptq-int4", "w8a8"]
    path: str = Field(description="The folder, relative to the model folder")
    size_bytes: int = Field(description="Its weights on disk")
    seconds: Number = Field(description="Time to quantize and save it")
    peak_rss_bytes: int = Field(description="The quantizing process's peak resident memory")
    reload_agreement: Number = Field(
        description="The reload against the quantizing process on the probe windows: share of "
        "identical top-1 predictions (causal LMs) or cosine of the last hidden states"
    )
    group_size: int | None = _optional("gptq-int4: the group size")
    desc_act: bool | None = _optional("gptq-int4: act-order")
    perplexity: Number | None = _optional("In transformers on the evaluation windows (causal LMs)")
    next_token_accuracy: Number | None = _optional("In transformers on the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    vllm: QuantizedServed | None = _optional("The folder in vLLM (target vllm)")


def _files_required(schema: dict[str, Any]) -> None:
    schema["required"].append("files")


class ArtifactsInfo(_Open):
    """The folder: layout, sizes, served files."""

    # the card is built before ``files`` is known (it lists the card's own files); every written
    # report has it, so the schema requires it
    model_config = ConfigDict(json_schema_extra=_files_required)

    layout: Literal["per_layer", "uniform", "nemotron_nas"]
    per_layer: bool = Field(
        description="The folder ships modelling code (auto_map): per_layer and nemotron_nas"
    )
    config_reads_without_code: bool | None = _optional(
        "Stock transformers reads config.json without remote code, so the tokenizer loads without "
        "trust_remote_code (a per_layer folder allows it where a stock model class would be "
        "refused the weights; a nemotron_nas folder does not)"
    )
    targets: list[Literal["transformers", "vllm", "llama.cpp", "onnx"]] = Field(
        default_factory=list
    )
    vllm: VllmInfo | None = Field(
        None,
        description="The folder loaded by vLLM's CPU build: perplexity and next-token accuracy on "
        "the evaluation windows, load_seconds, tokens_per_s (one stream, when latency is on)",
    )
    gguf: list[GgufFile] | None = Field(
        None,
        description="GGUF files written by llama.cpp's tools, each with its size and (causal LMs) "
        "its perplexity in llama.cpp",
    )
    quantized: list[QuantizedFolder] | None = Field(
        None,
        description="Quantized copies of the folder (export.quantize), each with its size and "
        "(causal LMs) its perplexity in transformers and vLLM",
    )
    size_bytes: int
    original_size_bytes: int | None
    onnx: OnnxInfo | None
    files: list[str] | None = _optional("Every file in the folder")


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
    needed_bytes: int | None = Field(
        description="What one whole model needs for latency (batch 32), estimated"
    )
    generation_needed_bytes: int | None = _optional(
        "What one whole model needs for the generations alone (one sequence), estimated"
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


if __name__ == "__main__":
    SCHEMA_FILE.write_text(json.dumps(report_json_schema(), indent=2) + "\n")
