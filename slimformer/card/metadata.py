"""The card's YAML header: what the Hub reads (``base_model``, tags, ``pipeline_tag``, ``license``,
``model-index``), built with huggingface_hub's ``ModelCardData`` and ``EvalResult``."""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCardData

from slimformer.formatting import METRIC_LABELS
from slimformer.report import BaseModelInfo, CompressionReport

PIPELINE_TAG = {
    "text-classification": "text-classification",
    "text-generation": "text-generation",
    "feature-extraction": "feature-extraction",
    "sentence-similarity": "sentence-similarity",
}
HUB_URL = "https://huggingface.co"


def base_hub_id(base: BaseModelInfo) -> str | None:
    """The base model's Hub id when it is known, else None (reports before ``hub_id`` existed: a Hub
    model had a commit)."""
    if "hub_id" in base.model_fields_set:
        return base.hub_id
    return base.id if base.commit else None


def eval_results(report: CompressionReport) -> list[EvalResult]:
    """``model-index`` entries: the compressed model's task metrics on the evaluation data."""
    data = report.data
    task = report.base_model.task
    return [
        EvalResult(
            task_type=PIPELINE_TAG.get(task, task),
            dataset_type=data.eval_dataset_type or "custom",
            dataset_name=data.eval_source or "evaluation data",
            dataset_split=data.eval_split,
            metric_type=name,
            metric_name=METRIC_LABELS.get(name, name),
            metric_value=round(float(value), 6),
        )
        for name, value in report.evaluation.compressed.metrics.items()
    ] + _downstream_results(report)


def _downstream_results(report: CompressionReport) -> list[EvalResult]:
    """``model-index`` entries of the lm-eval tasks: the compressed model's value per task and
    metric, the task named as lm-eval names it."""
    downstream = report.evaluation.downstream
    if downstream is None:
        return []
    # a run on the first N items says so: its value is not the task's full-split figure
    limit = f", first {downstream.limit} items" if downstream.limit else ""
    return [
        EvalResult(
            task_type="text-generation",
            dataset_type=row.task,
            dataset_name=row.task,
            metric_type=row.metric,
            metric_name=f"{row.metric} (lm-eval{limit})",
            metric_value=round(float(row.compressed), 6),
        )
        for row in downstream.rows
    ]


def card_data(report: CompressionReport) -> ModelCardData:
    """The card's metadata for a compression report."""
    base = report.base_model
    method = report.spec["method"]
    tags = (
        ["slimformer"]
        + (["pruned"] if "prune" in method else [])
        + (["distilled"] if "distill" in method else [])
    )
    # the metadata names only what the Hub can resolve: never a local folder
    hub_id = base_hub_id(base)
    return ModelCardData(
        base_model=hub_id,
        base_model_revision=base.commit if hub_id else None,
        tags=tags,
        pipeline_tag=PIPELINE_TAG.get(base.task, base.task),
        library_name="transformers",
        license=base.license,
        model_name=(report.model_extra or {}).get("name") or f"{base.id.split('/')[-1]}-slim",
        eval_results=eval_results(report),
    )
