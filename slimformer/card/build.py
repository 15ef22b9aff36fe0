"""Writing the card: the template (``template.md.j2`` next to this module) rendered with the
metadata, plots, tables and sentences of the other modules of ``slimformer.card``."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard

from slimformer.card.metadata import PIPELINE_TAG, card_data
from slimformer.card.plots import draw_plots
from slimformer.card.prose import (
    LOAD_PLACEHOLDER,
    _distill_text,
    _generation_text,
    _int8_facts,
    _method_text,
    _origin_text,
    _serve_commands,
    _summary,
    load_snippet,
)
from slimformer.card.tables import (
    _removed_rows,
    _serving_rows,
    _table,
    downstream_rows,
    quantized_notes,
)
from slimformer.formatting import format_agreement
from slimformer.report import CompressionReport

TEMPLATE = Path(__file__).with_name("template.md.j2")
VERSIONS = ("python", "torch", "transformers", "huggingface_hub", "slimformer")


def build_card(report: CompressionReport, folder: Path) -> ModelCard:
    """Write ``README.md`` (and the PNGs it shows) into ``folder`` from a compression report (a
    stored one: ``CompressionReport.model_validate(json.loads(text))``)."""
    folder = Path(folder)
    heatmap, curve = draw_plots(report, folder)
    data = card_data(report)
    card = ModelCard.from_template(
        data,
        template_path=TEMPLATE,
        title=f"{data.model_name}",
        summary=_summary(report),
        heatmap=heatmap,
        curve=curve,
        **_results(report),
        **_files(report),
        **_provenance(report),
    )
    card.save(folder / "README.md")
    return card


def _results(report: CompressionReport) -> dict:
    """What the template says of the measurement: the side-by-side table, the agreement, the data
    and hardware, and what was removed."""
    evaluation = report.evaluation
    agreement = evaluation.agreement
    return {
        "table": _table(evaluation, report.artifacts),
        "downstream": downstream_rows(evaluation),
        "downstream_info": evaluation.downstream,
        "agreement": None if agreement is None else format_agreement(agreement, evaluation.task),
        "rows": evaluation.rows,
        "eval_source": report.data.eval_source,
        "device": evaluation.device,
        "threads": evaluation.threads,
        "seq_len": evaluation.seq_len,
        "protocol": evaluation.protocol,
        "removed": _removed_rows(report.pruning),
        "execution": _execution_text(report),
        "generations": _generations(evaluation.generations),
    }


def _execution_text(report: CompressionReport) -> str | None:
    """How the job ran and what memory it took, beside what it said it would need."""
    execution = report.execution
    if execution is None:
        return None
    if execution.path == "layer_by_layer":
        text = (
            "Run layer by layer: one decoder layer in memory at a time, both models measured on "
            "the same windows as the layers were pruned."
        )
        if execution.states_in_files:
            text += " The hidden states were kept in files, one window in memory at a time."
        text += _whole_model_text(execution.whole_model)
    else:
        text = "Run in memory" + (
            f" ({execution.why_in_memory})." if execution.why_in_memory else "."
        )
    peaks = []
    if execution.measured_peak_bytes:
        peaks.append(f"{execution.measured_peak_bytes / 1e9:.2f} GB measured")
    if execution.estimated_peak_bytes:
        peaks.append(f"{execution.estimated_peak_bytes / 1e9:.2f} GB estimated before the download")
    while_ = " while compressing" if execution.path == "layer_by_layer" else ""
    return text + (f" Peak memory{while_}: {', '.join(peaks)}." if peaks else "")


def _generations(generations) -> dict | None:
    """The generations as the template shows them: each prompt a quoted block, each continuation
    one table cell (pipes escaped, line breaks shown as ↵: the dashboard renders no raw HTML)."""
    if generations is None or not generations.items:
        return None

    def cell(text: str) -> str:
        text = text.strip().replace("|", "\\|")
        return " ↵ ".join(text.splitlines()) or "(end of text)"

    items = [
        {
            "prompt": "\n".join("> " + line for line in (g.prompt.strip() or " ").splitlines()),
            "original": cell(g.original),
            "compressed": cell(g.compressed),
            "same_leading_tokens": g.same_leading_tokens,
            "original_tokens": g.original_tokens,
        }
        for g in generations.items
    ]
    return {"new_tokens": generations.new_tokens, "source": generations.source, "rows": items}


def _whole_model_text(whole) -> str:
    """Layer by layer: whether the whole models were loaded for latency, generations and tasks."""
    if whole is None:
        return " Latency was not measured."
    if not whole.loaded:
        return f" Not measured: {whole.why_not}."
    done = [
        what
        for what, on in (
            ("latency", whole.latency),
            ("generations", whole.generations),
            ("downstream tasks", whole.tasks),
        )
        if on
    ]
    what = (", ".join(done[:-1]) + " and " + done[-1] if len(done) > 1 else done[0]).capitalize()
    verb = "was" if what == "Latency" else "were"
    text = (
        f" {what} {verb} then measured on the written folder and on the original, each loaded "
        "whole in its checkpoint's dtype, one at a time"
    )
    if whole.peak_bytes:
        text += f" (peak memory then: {whole.peak_bytes / 1e9:.2f} GB)"
    text += "."
    if whole.why_not:
        text += f" Not measured: {whole.why_not}."
    return text


def _files(report: CompressionReport) -> dict:
    """What the template says of the folder: how to load it, its ONNX graphs, the files to serve."""
    artifacts = report.artifacts
    per_layer = artifacts.per_layer
    repo = (report.spec.get("publish") or {}).get("repo_id") or LOAD_PLACEHOLDER
    pairs = bool(report.data.text_pair_column)
    reads_without_code = artifacts.config_reads_without_code
    return {
        "load_code": load_snippet(
            report.base_model.task,
            repo,
            per_layer=per_layer,
            pairs=pairs,
            tokenizer_needs_code=None if reads_without_code is None else not reads_without_code,
        ),
        "per_layer": per_layer,
        "config_reads_without_code": reads_without_code,
        "onnx": artifacts.onnx is not None,
        "onnx_int8": _int8_facts(artifacts.onnx.int8 if artifacts.onnx else None),
        "serving": _serving_rows(report),
        "serve_commands": _serve_commands(report, repo) + quantized_notes(report),
        "generation": _generation_text(report),
        "nemotron": artifacts.layout == "nemotron_nas",
    }


def _provenance(report: CompressionReport) -> dict:
    """What the template says of how the model was made and how to reproduce it."""
    base = report.base_model
    environment = report.environment
    return {
        "method_text": _method_text(report),
        "distill_text": _distill_text(report),
        "health": report.distillation.health if report.distillation else [],
        "origin": _origin_text(base),
        "new_head": f"{PIPELINE_TAG.get(base.task, base.task)} head" if base.new_head else None,
        "new_head_weights": ", ".join(base.new_head),
        "seed": report.spec["seed"],
        "versions": ", ".join(
            f"{k} {getattr(environment, k)}" for k in VERSIONS if getattr(environment, k)
        ),
        "spec_json": json.dumps(report.spec, indent=2),
        "calibration": report.data.calibration_source or report.data.source,
    }
