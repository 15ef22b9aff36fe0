"""The card's tables, as the template's rows: original and compressed side by side, what was removed
layer by layer, and the files to serve with what each engine measured."""

from __future__ import annotations

from slimformer.formatting import (
    METRIC_LABELS,
    format_change,
    format_factor,
    format_megabytes,
    format_metric,
    format_ms,
    format_number,
    format_rate,
    format_relative,
    format_speedup,
)
from slimformer.report import ArtifactsInfo, CompressionReport, Evaluation, PruningInfo

Row = tuple[str, str, str, str]  # label, original, compressed, change


def _table(evaluation: Evaluation, artifacts: ArtifactsInfo) -> list[Row]:
    """The side-by-side table: task metrics, sizes, and latency when it was measured."""
    return _metric_rows(evaluation) + _size_rows(evaluation, artifacts) + _latency_rows(evaluation)


def side_by_side(report: CompressionReport) -> list[dict]:
    """The card's side-by-side table as records, ``{name, original, compressed, change, primary}``:
    what a finished job keeps for the API and the dashboard, so they show what the card shows."""
    evaluation = report.evaluation
    primary = METRIC_LABELS.get(evaluation.primary_metric, evaluation.primary_metric)
    return [
        {"name": name, "original": a, "compressed": b, "change": c, "primary": name == primary}
        for name, a, b, c in _table(evaluation, report.artifacts)
    ]


def _metric_rows(evaluation: Evaluation) -> list[Row]:
    compressed = evaluation.compressed.metrics
    return [
        (
            METRIC_LABELS.get(name, name),
            format_metric(value, name),
            format_metric(compressed.get(name), name),
            format_change(value, compressed.get(name), name),
        )
        for name, value in evaluation.original.metrics.items()
    ]


def _size_rows(evaluation: Evaluation, artifacts: ArtifactsInfo) -> list[Row]:
    """Parameters (all, and without the embeddings where the report counts them: the share the LLM
    pruning papers give), MACs and the size on disk."""
    original, compressed = evaluation.original, evaluation.compressed
    sizes = [("Parameters", original.parameters, compressed.parameters)]
    if original.embedding_parameters is not None and compressed.embedding_parameters is not None:
        sizes.append(
            (
                "Non-embedding parameters",
                original.parameters - original.embedding_parameters,
                compressed.parameters - compressed.embedding_parameters,
            )
        )
    sizes.append(("MACs per sequence", original.macs, compressed.macs))
    rows = [
        (label, format_number(before), format_number(after), format_relative(before, after))
        for label, before, after in sizes
    ]
    size_before, size_after = artifacts.original_size_bytes, artifacts.size_bytes
    rows.append(
        (
            "Size on disk",
            format_megabytes(size_before, thousands=False),
            format_megabytes(size_after, thousands=False),
            format_relative(size_before, size_after),
        )
    )
    return rows


def _latency_rows(evaluation: Evaluation) -> list[Row]:
    lat_o, lat_c = evaluation.original.latency, evaluation.compressed.latency
    if lat_o is None or lat_c is None:
        return []
    ratios = evaluation.ratios
    return [
        (
            "Latency p50, batch 1 (ms)",
            format_ms(lat_o.batch1_p50_ms),
            format_ms(lat_c.batch1_p50_ms),
            format_speedup(ratios.latency_speedup),
        ),
        (
            "Latency p95, batch 1 (ms)",
            format_ms(lat_o.batch1_p95_ms),
            format_ms(lat_c.batch1_p95_ms),
            "",
        ),
        (
            "Throughput, batch 32 (seq/s)",
            f"{lat_o.batch32_throughput:.1f}",
            f"{lat_c.batch32_throughput:.1f}",
            format_factor(ratios.throughput_speedup),
        ),
    ]


def _removed_rows(pruning: PruningInfo | None) -> list[dict]:
    if pruning is None:
        return []
    rows = []
    removed_mlps = set(pruning.removed_mlps)
    whole = set(pruning.removed_attention)
    for layer, total in enumerate(pruning.original_heads_per_layer):
        removed = pruning.removed_heads.get(str(layer), [])
        listed = ", ".join(map(str, removed)) or "none"
        rows.append(
            {
                "layer": layer,
                "heads_kept": pruning.heads_per_layer[layer],
                "heads_total": total,
                "heads_removed": "attention removed whole" if layer in whole else listed,
                "neurons_kept": pruning.neurons_per_layer[layer],
                "neurons_total": pruning.original_neurons_per_layer[layer],
                "mlp": "removed" if layer in removed_mlps else "kept",
            }
        )
    return rows


def _serving_rows(report: CompressionReport) -> list[str]:
    """The files an engine other than PyTorch serves, with what was measured on each (GGUF, the
    folder in vLLM)."""
    artifacts = report.artifacts
    gguf = artifacts.gguf or []
    served = artifacts.vllm
    quantized = artifacts.quantized or []
    if not gguf and served is None and not quantized:
        return []
    evaluation = report.evaluation
    generation = evaluation.generation
    pytorch = {
        "original": (
            _file_size(artifacts.original_size_bytes),
            evaluation.original.metrics,
            generation.original_tokens_per_s if generation else None,
        ),
        "compressed": (
            _file_size(artifacts.size_bytes),
            evaluation.compressed.metrics,
            generation.compressed_tokens_per_s if generation else None,
        ),
    }
    rows = [
        _serving_row(
            side,
            "model.safetensors",
            "transformers (PyTorch, float32)",
            size,
            metrics.get("perplexity"),
            metrics.get("next_token_accuracy"),
            speed,
        )
        for side, (size, metrics, speed) in pytorch.items()
    ]
    if served is not None:
        rows.append(
            _serving_row(
                "compressed",
                "model.safetensors",
                "vLLM (CPU build, float32)",
                pytorch["compressed"][0],
                served.perplexity,
                served.next_token_accuracy,
                served.tokens_per_s,
            )
        )
    rows += [
        _serving_row(
            "compressed",
            entry.file,
            f"llama.cpp ({entry.type})",
            format_megabytes(entry.size_bytes),
            entry.perplexity,
            entry.next_token_accuracy,
            entry.tokens_per_s,
        )
        for entry in gguf
    ]
    return rows + _quantized_rows(quantized)


_METHOD_LABELS = {"gptq-int4": "GPTQ int4", "w8a8": "int8 W8A8"}


def _quantized_rows(quantized: list) -> list[str]:
    """Each quantized folder in transformers (reloaded in a fresh process) and, where measured, in
    vLLM."""
    rows = []
    for entry in quantized:
        label = _METHOD_LABELS[entry.method]
        if entry.group_size:
            label += f", group {entry.group_size}"
        size = format_megabytes(entry.size_bytes)
        rows.append(
            _serving_row(
                "compressed",
                f"{entry.path}/",
                f"transformers ({label}, bfloat16)",
                size,
                entry.perplexity,
                entry.next_token_accuracy,
                None,
            )
        )
        if entry.vllm is not None:
            rows.append(
                _serving_row(
                    "compressed",
                    f"{entry.path}/",
                    f"vLLM ({label}, bfloat16)",
                    size,
                    entry.vllm.perplexity,
                    entry.vllm.next_token_accuracy,
                    entry.vllm.tokens_per_s,
                )
            )
    return rows


def quantized_notes(report: CompressionReport) -> list[str]:
    """How to serve each quantized folder, and what keeping widths quantizable cost the pruning:
    the FFN neurons asked to go against those that went."""
    quantized = report.artifacts.quantized or []
    lines = [
        f"{_METHOD_LABELS[q.method]}: `vllm serve {q.path}` or "
        f'`AutoModelForCausalLM.from_pretrained("{q.path}")` (reloaded in a fresh process: '
        f"{100 * q.reload_agreement:.0f}% agreement with the model as quantized)"
        for q in quantized
    ]
    lines += [
        f"{_METHOD_LABELS[q.method]} was not measured in vLLM: {q.vllm_not_measured}"
        for q in quantized
        if q.vllm_not_measured
    ]
    gptq = next((q for q in quantized if q.group_size), None)
    pruning, ffn = report.pruning, (report.spec.get("prune") or {}).get("ffn") or 0
    if gptq is not None and pruning is not None and ffn:
        total = sum(pruning.original_neurons_per_layer)
        removed = total - sum(pruning.neurons_per_layer)
        asked = round(ffn * total)
        lines.append(
            f"Widths for {_METHOD_LABELS[gptq.method]}: every FFN width kept a multiple of the "
            f"group size {gptq.group_size}; {format_number(asked)} of "
            f"{format_number(total)} neurons were asked to go ({ffn:.0%}), "
            f"{format_number(removed)} went ({removed / total:.1%})"
        )
    return lines


def _serving_row(
    model: str,
    file: str,
    engine: str,
    size: str,
    perplexity: float | None,
    accuracy: float | None,
    speed: float | None,
) -> str:
    """One row of the files-to-serve table: the file's size, perplexity, next-token accuracy and
    tokens per second."""
    cells = (
        size,
        format_metric(perplexity, "perplexity"),
        format_metric(accuracy, "next_token_accuracy"),
        format_rate(speed),
    )
    return f"| {model} | `{file}` | {engine} | " + " | ".join(cells) + " |"


def _file_size(size: int | None) -> str:
    return format_megabytes(size) if size else "—"


def _with_stderr(value: float, stderr: float | None, share: bool) -> str:
    if share:
        shown = f"{100 * value:.2f}%"
        return shown if stderr is None else f"{shown} ± {100 * stderr:.2f}"
    return (
        format_number(value)
        if stderr is None
        else f"{format_number(value)} ± {format_number(stderr)}"
    )


def downstream_rows(evaluation: Evaluation) -> list[dict]:
    """The lm-eval table: per task and metric, both models with lm-eval's stderr and the change
    (points for shares, a factor for perplexities)."""
    if evaluation.downstream is None:
        return []
    rows = []
    for row in evaluation.downstream.rows:
        share = row.change_points is not None
        if share:
            change = f"{row.change_points:+.2f} pt"
        elif "perplexity" in row.metric:
            change = format_change(row.original, row.compressed, "perplexity")
        else:
            change = format_change(row.original, row.compressed)
        rows.append(
            {
                "task": row.task,
                "metric": row.metric,
                "n_items": format_number(row.items),
                "original": _with_stderr(row.original, row.original_stderr, share),
                "compressed": _with_stderr(row.compressed, row.compressed_stderr, share),
                "change": change,
            }
        )
    return rows
