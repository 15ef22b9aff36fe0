"""The report's ``evaluation``: both models side by side, their latency, generations and
downstream tasks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slimformer.report.base import Number, _Open, _optional


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
    default: bool = Field(
        False, description="The default set (evaluation.tasks null), not tasks the spec named"
    )
    not_run: dict[str, str] = Field(
        default_factory=dict,
        description="Default tasks left out, and why: lm-eval could not load them (their data "
        "is on the Hub), or no whole model fitted (layer by layer)",
    )
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
        "lm-evaluation-harness tasks on both models, same items (evaluation.tasks, or the "
        "default set for causal LMs)"
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
