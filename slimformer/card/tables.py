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

Row = tuple[str, str, str, str]  # label, original, compressed, change


def _table(evaluation: dict, artifacts: dict) -> list[Row]:
    """The side-by-side table: task metrics, sizes, and latency when it was measured."""
    return _metric_rows(evaluation) + _size_rows(evaluation, artifacts) + _latency_rows(evaluation)


def _metric_rows(evaluation: dict) -> list[Row]:
    compressed = evaluation["compressed"]["metrics"]
    return [
        (
            METRIC_LABELS.get(name, name),
            format_metric(value, name),
            format_metric(compressed.get(name), name),
            format_change(value, compressed.get(name), name),
        )
        for name, value in evaluation["original"]["metrics"].items()
    ]


def _size_rows(evaluation: dict, artifacts: dict) -> list[Row]:
    original, compressed = evaluation["original"], evaluation["compressed"]
    rows = [
        (
            label,
            format_number(original[key]),
            format_number(compressed[key]),
            format_relative(original[key], compressed[key]),
        )
        for key, label in (("parameters", "Parameters"), ("macs", "MACs per sequence"))
    ]
    size_before, size_after = artifacts.get("original_size_bytes"), artifacts.get("size_bytes")
    rows.append(
        (
            "Size on disk",
            format_megabytes(size_before, thousands=False),
            format_megabytes(size_after, thousands=False),
            format_relative(size_before, size_after),
        )
    )
    return rows


def _latency_rows(evaluation: dict) -> list[Row]:
    lat_o, lat_c = evaluation["original"].get("latency"), evaluation["compressed"].get("latency")
    if not (lat_o and lat_c):
        return []
    ratios = evaluation["ratios"]
    return [
        (
            "Latency p50, batch 1 (ms)",
            format_ms(lat_o["batch1_p50_ms"]),
            format_ms(lat_c["batch1_p50_ms"]),
            format_speedup(ratios["latency_speedup"]),
        ),
        (
            "Latency p95, batch 1 (ms)",
            format_ms(lat_o["batch1_p95_ms"]),
            format_ms(lat_c["batch1_p95_ms"]),
            "",
        ),
        (
            "Throughput, batch 32 (seq/s)",
            f"{lat_o['batch32_throughput']:.1f}",
            f"{lat_c['batch32_throughput']:.1f}",
            format_factor(ratios["throughput_speedup"]),
        ),
    ]


def _removed_rows(pruning: dict | None) -> list[dict]:
    if not pruning:
        return []
    rows = []
    removed_mlps = set(pruning.get("removed_mlps", []))
    whole = set(pruning.get("removed_attention", []))
    for layer, total in enumerate(pruning["original_heads_per_layer"]):
        removed = pruning["removed_heads"].get(str(layer), [])
        listed = ", ".join(map(str, removed)) or "none"
        rows.append(
            {
                "layer": layer,
                "heads_kept": pruning["heads_per_layer"][layer],
                "heads_total": total,
                "heads_removed": "attention removed whole" if layer in whole else listed,
                "neurons_kept": pruning["neurons_per_layer"][layer],
                "neurons_total": pruning["original_neurons_per_layer"][layer],
                "mlp": "removed" if layer in removed_mlps else "kept",
            }
        )
    return rows


def _serving_rows(report: dict) -> list[str]:
    """The files an engine other than PyTorch serves, with what was measured on each (GGUF, the
    folder in vLLM)."""
    artifacts = report.get("artifacts") or {}
    gguf = artifacts.get("gguf") or []
    served = artifacts.get("vllm")
    if not gguf and not served:
        return []
    evaluation = report["evaluation"]
    speeds = evaluation.get("generation") or {}
    sizes = {
        "original": _file_size(artifacts.get("original_size_bytes")),
        "compressed": _file_size(artifacts.get("size_bytes")),
    }
    rows = [
        _serving_row(
            side,
            "model.safetensors",
            "transformers (PyTorch, float32)",
            sizes[side],
            evaluation[side]["metrics"],
            speeds.get(f"{side}_tokens_per_s"),
        )
        for side in ("original", "compressed")
    ]
    if served:
        rows.append(
            _serving_row(
                "compressed",
                "model.safetensors",
                "vLLM (CPU build, float32)",
                sizes["compressed"],
                served,
                served.get("tokens_per_s"),
            )
        )
    rows += [
        _serving_row(
            "compressed",
            entry["file"],
            f"llama.cpp ({entry['type']})",
            format_megabytes(entry["size_bytes"]),
            entry,
            entry.get("tokens_per_s"),
        )
        for entry in gguf
    ]
    return rows


def _serving_row(
    model: str, file: str, engine: str, size: str, scores: dict, speed: float | None
) -> str:
    """One row of the files-to-serve table: ``scores`` holds the file's perplexity and next-token
    accuracy, ``speed`` its tokens per second."""
    cells = (
        size,
        format_metric(scores.get("perplexity"), "perplexity"),
        format_metric(scores.get("next_token_accuracy"), "next_token_accuracy"),
        format_rate(speed),
    )
    return f"| {model} | `{file}` | {engine} | " + " | ".join(cells) + " |"


def _file_size(size: int | None) -> str:
    return format_megabytes(size) if size else "—"
