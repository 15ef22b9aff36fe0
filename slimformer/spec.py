"""The job spec: what a user asks slimformer to do. The service's API accepts exactly this model.

Unknown fields are rejected and every field has a default or a clear error. Local paths
(``dataset.path``, a local folder as ``model.id``) are for the command line only: validate with
``JobSpec.model_validate(data, context={"local_files": False})`` to refuse them (the service does).
"""

from __future__ import annotations

import re
import types
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from slimformer.families import FAMILIES

Task = Literal[
    "text-classification", "sentence-similarity", "feature-extraction", "text-generation"
]
TASKS: tuple[str, ...] = Task.__args__

Method = Literal["prune", "distill", "prune_distill"]
PRUNES: tuple[str, ...] = ("prune", "prune_distill")
DISTILS: tuple[str, ...] = ("distill", "prune_distill")


class StageInfo(BaseModel):
    """One stage of the recipe: its name (a job's ``stage``), its share of the progress bar
    (relative; only the stages a job runs count), what it does, and which jobs run it."""

    model_config = ConfigDict(frozen=True)

    name: str
    weight: float
    does: str
    methods: tuple[str, ...] = ("prune", "distill", "prune_distill")
    when_publishing: bool = False  # run only when the job publishes

    def runs(self, method: str, publishes: bool) -> bool:
        return method in self.methods and (publishes or not self.when_publishing)


# The recipe's stages in order: slimformer.pipeline runs exactly these, the runner and the service
# read them from here (the one table of stages).
STAGE_TABLE: tuple[StageInfo, ...] = (
    StageInfo(name="downloading", weight=0.1, does="pull the model and the data"),
    StageInfo(
        name="scoring", weight=0.2, does="score layers, heads, neurons and MLPs", methods=PRUNES
    ),
    StageInfo(name="pruning", weight=0.1, does="remove the least important units", methods=PRUNES),
    StageInfo(
        name="distilling", weight=0.6, does="distil the original into the student", methods=DISTILS
    ),
    StageInfo(name="evaluating", weight=0.2, does="measure the original and the result"),
    StageInfo(name="writing_card", weight=0.05, does="write the model, served files and card"),
    StageInfo(
        name="publishing", weight=0.05, does="upload the folder to the Hub", when_publishing=True
    ),
)
STAGE_WEIGHTS: dict[str, float] = {stage.name: stage.weight for stage in STAGE_TABLE}
STAGES: tuple[str, ...] = tuple(STAGE_WEIGHTS)

# Data files slimformer reads (local files and uploads): suffix -> reader.
UPLOAD_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",  # one document per blank-line-separated block (causal LMs; slimformer/text.py)
}


def upload_suffixes() -> str:
    """The suffixes of :data:`UPLOAD_FORMATS` as a phrase: ``.csv, .tsv, ... or .txt``."""
    names = list(UPLOAD_FORMATS)
    return ", ".join(names[:-1]) + " or " + names[-1]


# matched whole (fullmatch): a "$" would also match before a final newline
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?", re.ASCII)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _local_allowed(info: ValidationInfo) -> bool:
    return (info.context or {}).get("local_files", True)


def is_hub_id(value: str) -> bool:
    """``name`` or ``org/name`` as the Hub spells repo ids: no path segments (``.``, ``..``), no
    leading or trailing ``.``/``-`` in a part, no ``--``/``..`` inside one, nothing that a file
    system would read as a path."""
    if not HUB_ID.fullmatch(value):
        return False
    return all(
        not part.startswith((".", "-"))
        and not part.endswith((".", "-"))
        and ".." not in part
        and "--" not in part
        for part in value.split("/")
    )


def hub_id_or_local(value: str, info: ValidationInfo, what: str) -> str:
    """A Hub id; on the command line (``local_files`` context true) also a local folder or file."""
    if is_hub_id(value) or _local_allowed(info):
        return value
    raise ValueError(
        f"{value!r} is not a Hub {what} id (expected 'name' or 'org/name'); local paths are "
        "accepted on the command line only"
    )


class ModelSpec(_Strict):
    """The model to compress."""

    id: str = Field(
        ...,
        min_length=1,
        description="Hub model id (`org/name`), or a local folder on the command line.",
        examples=["sentence-transformers/all-MiniLM-L6-v2"],
    )
    revision: str = Field(
        "main", min_length=1, description="Branch, tag or commit of the Hub repo."
    )
    task: Task | None = Field(
        None, description="Inferred from the checkpoint's architecture when null."
    )
    base_model: str | None = Field(
        None,
        description="Command line only: the Hub id a local model folder came from, for the "
        "card's `base_model` when the folder does not tell (a Hugging Face cache snapshot and a "
        "config's `_name_or_path` do).",
        examples=["HuggingFaceTB/SmolLM2-135M-Instruct"],
    )
    allow_new_head: bool = Field(
        False,
        description="Accept a checkpoint without a head for the task: the head is then new "
        "and randomly initialised (the card says so). Refused when false.",
    )

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str, info: ValidationInfo) -> str:
        return hub_id_or_local(value, info, "model")

    @field_validator("base_model")
    @classmethod
    def _base_model_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not is_hub_id(value):
            raise ValueError(f"{value!r} is not a Hub model id (expected 'name' or 'org/name')")
        if not _local_allowed(info):
            raise ValueError(
                "base_model names the Hub origin of a local model folder (command "
                "line only); a Hub model is its own base"
            )
        return value

    @field_validator("revision")
    @classmethod
    def _revision_shape(cls, value: str) -> str:
        # a branch, tag or commit; never something a cache or a file system could read as a path
        parts = value.split("/")
        if (
            len(value) > 255
            or value.startswith("/")
            or "\\" in value
            or any(p in ("", ".", "..") for p in parts)
            or not value.isprintable()
            or any(c.isspace() for c in value)
        ):
            raise ValueError(f"{value!r} is not a branch, tag or commit name")
        return value


class DatasetSpec(_Strict):
    """Where the calibration / training data and the evaluation data come from: one of three \
sources."""

    hub_id: str | None = Field(
        None,
        description="Hub dataset id, read with datasets.load_dataset.",
        examples=["stanfordnlp/sst2"],
    )
    config: str | None = Field(None, description="Dataset configuration (Hub datasets).")
    split: str = Field("train", description="Split used for scoring and training (Hub datasets).")
    eval_split: str | None = Field(
        "validation", description="Split used for evaluation (Hub datasets)."
    )
    upload_id: str | None = Field(None, description="An upload from POST /v1/datasets.")
    eval_upload_id: str | None = Field(None, description="An upload used for evaluation.")
    path: str | None = Field(
        None, description=f"A local data file, {upload_suffixes()} (command line only)."
    )
    eval_path: str | None = Field(None, description="A local evaluation file (command line only).")
    text_column: str | None = Field(
        None, description="Text column; guessed (text, sentence, ...) when null."
    )
    text_pair_column: str | None = Field(None, description="Second text of sentence pairs.")
    label_column: str | None = Field(
        None, description="Labels; 'label' is used when present and this is null."
    )
    max_samples: int | None = Field(None, ge=1, description="Use at most this many training rows.")

    @field_validator("hub_id")
    @classmethod
    def _hub_id_shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else hub_id_or_local(value, info, "dataset")

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> DatasetSpec:
        sources = [name for name in ("hub_id", "upload_id", "path") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one data source: hub_id, upload_id or path"
                + (f" (got {', '.join(sources)})" if sources else "")
            )
        if self.eval_upload_id and not self.upload_id:
            raise ValueError("eval_upload_id goes with upload_id")
        if self.eval_path and not self.path:
            raise ValueError("eval_path goes with path")
        if (self.path or self.eval_path) and not _local_allowed(info):
            raise ValueError(
                "local file paths are accepted on the command line only; upload the file to "
                "POST /v1/datasets and use upload_id"
            )
        return self


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


class StudentSpec(_Strict):
    """The student: a layer-dropped copy of the teacher ({layers}) or a smaller model ({id})."""

    layers: int | None = Field(None, ge=1, description="Keep this many of the teacher's layers.")
    id: str | None = Field(
        None, description="A smaller model sharing the teacher's tokenizer and labels."
    )
    layer_selection: Literal["even", "importance"] = Field(
        "even",
        description="Which of the teacher's layers a layer-dropped student keeps: even (every "
        "other layer, ending with the last) or importance (a gate on each layer's residual update, "
        "scored like heads).",
    )

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
        "learning-rate schedule is fitted to the steps that fit.",
    )
    learning_rate: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Peak learning rate; null: the student's recipe (1e-4 layer-dropped or named, "
        "5e-5 pruned).",
    )


EVAL_ROWS = 2000  # rows a classifier or embedding model is evaluated on by default
# windows a causal LM is evaluated on by default: 32k predicted tokens, a stable perplexity (all of
# WikiText-2 test is over 500 windows: most of an hour for two 135M models on 2 cores)
EVAL_WINDOWS = 64


class EvaluationSpec(_Strict):
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate on at most this many rows; causal LMs: windows of packed text. Null: "
        "2000 rows; causal LMs: 64 windows of 512 tokens (32k predicted tokens).",
    )

    def rows(self, task: str | None) -> int:
        """The evaluation size used for ``task`` (``max_samples`` or the task's default)."""
        if self.max_samples is not None:
            return self.max_samples
        return EVAL_WINDOWS if task == "text-generation" else EVAL_ROWS

    latency: bool = Field(True, description="Measure latency and throughput of both models.")
    onnx: bool = Field(False, description="Also export model.onnx, checked with onnxruntime.")
    onnx_int8: bool = Field(
        False,
        description="Also write model.int8.onnx: onnxruntime's dynamic int8 quantization of "
        "model.onnx (implies onnx), with its output difference and top-1 agreement on the card.",
    )


class PublishSpec(_Strict):
    """Publish the result to the Hub (the token travels separately, never in the spec)."""

    repo_id: str = Field(..., description="Target repo, `org/name`.")
    private: bool = True
    create_pr: bool = False

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not is_hub_id(value) or "/" not in value:
            raise ValueError(f"{value!r} is not a Hub repo id (expected 'org/name')")
        return value


SERVING_TARGETS = ("vllm", "llama.cpp")


class ExportSpec(_Strict):
    """Where the result must load, and files for serving engines, written beside the model
    folder."""

    targets: list[Literal["transformers", "vllm", "llama.cpp", "onnx"]] = Field(
        default_factory=lambda: ["transformers"],
        description="Where the result must load; each target is checked by loading it there. "
        "transformers: the model folder (always written). vllm: vLLM's CPU build loads the folder "
        "and its perplexity is measured on the evaluation windows (causal LMs; `make engines`). "
        "llama.cpp: GGUF files (export.gguf, q8_0 when empty), each measured by llama.cpp. onnx: "
        "model.onnx checked with onnxruntime. vllm and llama.cpp read per-layer shapes only in the "
        "nemotron_nas layout, which an unset prune.layout then becomes.",
    )

    gguf: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(
        default_factory=list,
        description="GGUF files for llama.cpp, written by llama.cpp's own converter and quantizer "
        "(the llama-cpp engine, `make engines`): a stock config (layout uniform, or layers "
        "dropped only) of the Llama, Mistral or Qwen2/3 family, or the nemotron_nas layout of a "
        "Llama; implies target llama.cpp. Causal LMs: each file's "
        "perplexity is measured by llama.cpp on the evaluation windows.",
    )


class JobSpec(_Strict):
    """A compression job."""

    model: ModelSpec
    dataset: DatasetSpec
    method: Method = "prune"
    prune: PruneSpec = Field(default_factory=PruneSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    publish: PublishSpec | None = None
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seeds python, numpy and torch (0 to 2**32 - 1)."
    )

    @model_validator(mode="after")
    def _method_needs(self) -> JobSpec:
        if self.method in ("prune", "prune_distill") and not self.prune.removes_something():
            raise ValueError(
                f"method {self.method} needs something to remove: set prune.heads, prune.ffn, "
                "prune.whole_mlps, prune.macs_budget or prune.layers"
            )
        if self.method == "distill" and self.distill.student is None:
            raise ValueError("method distill needs distill.student: {layers: K} or {id: MODEL}")
        if self.method == "prune_distill" and self.distill.student is not None:
            raise ValueError(
                "method prune_distill distils into the pruned model; leave distill.student unset"
            )
        p = self.prune
        width = self.method != "distill" and bool(
            p.heads or p.ffn or p.whole_mlps or p.macs_budget is not None
        )
        serving = [t for t in self.served_targets() if t in SERVING_TARGETS]
        if width and p.layout == "per_layer" and serving:
            raise ValueError(
                f"export.targets names {' and '.join(serving)}, which cannot read the per_layer "
                "layout's per-layer shapes: set prune.layout to nemotron_nas (Llama) or uniform, "
                "or leave it unset"
            )
        return self

    # What the job writes, derived from what the spec says (the spec itself is kept as given):
    # export.targets, export.gguf and evaluation.onnx/onnx_int8 each imply files of the others.
    def gguf_types(self) -> tuple[str, ...]:
        """The GGUF files to write: ``export.gguf``, or q8_0 when ``export.targets`` names
        llama.cpp without naming types; none otherwise."""
        if self.export.gguf:
            return tuple(self.export.gguf)
        return ("q8_0",) if "llama.cpp" in self.export.targets else ()

    def writes_onnx(self) -> bool:
        """Whether model.onnx is written and checked: target onnx, or evaluation.onnx or
        evaluation.onnx_int8."""
        evaluation = self.evaluation
        return "onnx" in self.export.targets or evaluation.onnx or evaluation.onnx_int8

    def served_targets(self) -> list[str]:
        """Where the result will load: ``export.targets`` with llama.cpp when GGUF files are
        written and onnx when model.onnx is, in that order (the report's ``artifacts.targets``)."""
        targets = list(self.export.targets)
        if self.gguf_types() and "llama.cpp" not in targets:
            targets.append("llama.cpp")
        if self.writes_onnx() and "onnx" not in targets:
            targets.append("onnx")
        return targets


def default_layout(spec: JobSpec, family: str) -> str:
    """The layout an unset ``prune.layout`` means for a model of ``family``: ``per_layer``, or,
    when ``export.targets`` names vllm or llama.cpp (which read per-layer shapes only as
    Nemotron-NAS), ``nemotron_nas`` for FFN-only pruning of a Llama (SmolLM2 at 30% of the FFN:
    x1.31 against uniform's x1.45) and ``uniform`` when heads go too (at 30% heads and FFN: x1.87
    against nemotron_nas's x2.16, whose heads go as whole attention blocks)."""
    if spec.prune.layout is not None:
        return spec.prune.layout
    p = spec.prune
    if not any(t in SERVING_TARGETS for t in spec.served_targets()) or not p.removes_width():
        return "per_layer"
    ffn_only = not (p.heads or p.whole_mlps or p.macs_budget is not None)
    facts = FAMILIES.get(family)
    nemotron = facts is not None and facts.stock and facts.nemotron_nas  # a Llama
    return "nemotron_nas" if ffn_only and nemotron else "uniform"


def stages_for(spec: JobSpec | dict) -> list[str]:
    """The stages a job runs, in order, from its method and whether it publishes."""
    data = spec.model_dump() if isinstance(spec, JobSpec) else spec
    method, publishes = data.get("method", "prune"), bool(data.get("publish"))
    return [stage.name for stage in STAGE_TABLE if stage.runs(method, publishes)]


def overall_progress(stages: list[str], stage: str, fraction: float) -> float:
    """A job's progress 0..1 from the stage it is in and that stage's own fraction."""
    total = sum(STAGE_WEIGHTS[s] for s in stages)
    done = 0.0
    for name in stages:
        if name == stage:
            return min(1.0, (done + STAGE_WEIGHTS[name] * max(0.0, min(1.0, fraction))) / total)
        done += STAGE_WEIGHTS[name]
    return min(1.0, done / total)


def job_spec_schema() -> dict:
    """The JSON schema of :class:`JobSpec` (published as docs/job-spec.schema.json)."""
    return JobSpec.model_json_schema()


# -- what the front doors (the command line, the dashboard) read of the spec's fields --------------
class FieldFacts(BaseModel):
    """One leaf field of the job spec as a form or a flag needs it: its type, choices (from its
    ``Literal`` type), range (from its ``ge``/``gt``/``le``/``lt`` constraints), default and
    description."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(..., description="The dotted path in the job spec, e.g. `prune.heads`.")
    type: Literal["string", "integer", "number", "boolean"] = Field(
        ..., description="The JSON type of a value (of each item when `many`)."
    )
    many: bool = Field(False, description="A list of values, e.g. `export.targets`.")
    nullable: bool = Field(False, description="null is accepted (it means the default).")
    required: bool = Field(False, description="The spec must give it.")
    choices: list[str] | None = Field(None, description="The accepted values; null: any.")
    default: Any = Field(None, description="The value when not given.")
    ge: int | float | None = Field(None, description="Smallest accepted value (inclusive).")
    gt: int | float | None = Field(None, description="Values must be greater than this.")
    le: int | float | None = Field(None, description="Largest accepted value (inclusive).")
    lt: int | float | None = Field(None, description="Values must be less than this.")
    description: str | None = Field(None, description="What the field means.")

    def range_text(self) -> str | None:
        """The range as ``[0, 1)``, ``(0, 1]``, ``>= 1`` or ``<= 20``; None when unbounded."""
        low = (
            ("[", self.ge)
            if self.ge is not None
            else ("(", self.gt)
            if self.gt is not None
            else None
        )
        high = (
            ("]", self.le)
            if self.le is not None
            else (")", self.lt)
            if self.lt is not None
            else None
        )
        if low and high:
            return f"{low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}"
        if high:
            return f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}"
        return None

    def is_fraction(self) -> bool:
        """Bounded within [0, 1]: a fraction of something."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        return low is not None and high is not None and 0 <= low and high <= 1


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(get_args(annotation))
    return annotation, False


def _field_facts(path: str, info: Any) -> FieldFacts:
    annotation, nullable = _unwrap_optional(info.annotation)
    many = get_origin(annotation) is list
    if many:
        annotation = get_args(annotation)[0]
    choices = list(get_args(annotation)) if get_origin(annotation) is Literal else None
    bounds = {
        name: getattr(item, name)
        for item in info.metadata
        for name in ("ge", "gt", "le", "lt")
        if hasattr(item, name)
    }
    return FieldFacts(
        path=path,
        type="string" if choices else _JSON_TYPES.get(annotation, "string"),
        many=many,
        nullable=nullable,
        required=info.is_required(),
        choices=choices,
        default=None if info.is_required() else info.get_default(call_default_factory=True),
        description=info.description,
        **bounds,
    )


@cache
def spec_fields() -> dict[str, FieldFacts]:
    """Every leaf field of :class:`JobSpec` by dotted path (``prune.heads``,
    ``distill.student.layers``), in the spec's order: the one source of the choices, ranges and
    defaults that the command line's flags and the dashboard's form show."""
    found: dict[str, FieldFacts] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            inner, _ = _unwrap_optional(info.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{prefix}{name}.")
            else:
                found[prefix + name] = _field_facts(prefix + name, info)

    walk(JobSpec, "")
    return found


@cache
def _adapter(path: str) -> TypeAdapter:
    model: type[BaseModel] = JobSpec
    *sections, name = path.split(".")
    for section in sections:
        model, _ = _unwrap_optional(model.model_fields[section].annotation)
    info = model.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def check_field(path: str, value: Any) -> Any:
    """``value`` checked (and converted) by the spec's own field at ``path``: its type, choices and
    range; raises pydantic's ``ValidationError``. The rules that join fields are the model's."""
    return _adapter(path).validate_python(value)
