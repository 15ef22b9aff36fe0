"""The job spec itself (:class:`JobSpec`: the field groups and the rules that join them) and what
a spec implies: the files it writes, the layout an unset ``prune.layout`` means, the stages it
runs, its JSON schema."""

from __future__ import annotations

from pydantic import Field, model_validator

from slimformer.families import FAMILIES
from slimformer.spec.base import _Strict
from slimformer.spec.distill import DistillSpec
from slimformer.spec.evaluation import EvaluationSpec
from slimformer.spec.export import SERVING_TARGETS, ExportSpec, PublishSpec
from slimformer.spec.inputs import DatasetSpec, ModelSpec
from slimformer.spec.prune import PruneSpec
from slimformer.spec.stages import STAGE_TABLE, Method


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


def job_spec_schema() -> dict:
    """The JSON schema of :class:`JobSpec` (published as docs/job-spec.schema.json)."""
    return JobSpec.model_json_schema()
