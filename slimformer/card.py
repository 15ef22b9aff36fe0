"""The evaluation card: a Hugging Face model card that puts the original and the compressed model
side by side.

Built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` / ``EvalResult`` (metadata the Hub
reads: ``base_model``, tags, ``pipeline_tag``, ``license``, ``model-index``) and a Jinja template
for the body. Plots are PNGs next to ``README.md``: the head-importance heatmap and the
metric-vs-fraction-pruned curve.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from slimformer.models import AUTO_CLASS_FOR_TASK

logger = logging.getLogger(__name__)

HEATMAP = "head_importance.png"
CURVE = "pruning_curve.png"

PIPELINE_TAG = {
    "text-classification": "text-classification",
    "text-generation": "text-generation",
    "feature-extraction": "feature-extraction",
    "sentence-similarity": "sentence-similarity",
}
# metrics that are fractions (shown as percent, changes in percentage points) and metrics where
# lower is better and a change is a factor (perplexity 12 -> 24 is "x2.00", not "+12.0000")
PERCENT_METRICS = ("accuracy", "macro_f1", "next_token_accuracy")
RATIO_METRICS = ("perplexity",)
HUB_URL = "https://huggingface.co"
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "macro_f1": "Macro F1",
    "pearson": "Pearson",
    "spearman": "Spearman",
    "perplexity": "Perplexity",
    "next_token_accuracy": "Next-token accuracy",
    "cosine_to_original": "Cosine to original",
}

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}
{% if new_head %}
> **Warning: the {{ new_head }} is new and untrained.** The checkpoint had no head for this task,
> so it was initialised at random when loaded (`{{ new_head_weights }}`) and nothing here trained
> it: its predictions, and every task score below, are those of a random head.
{% endif %}

## Original and compressed, side by side

Measured in the same run, on the same data ({{ rows }} rows of {{ eval_source }}), the same hardware
({{ device }}, {{ threads }} threads) and the same sequence length ({{ seq_len }} tokens).
{% if protocol %}Perplexity: {{ protocol.windows }} windows of {{ protocol.seq_len }} tokens (stride
{{ protocol.stride }}; documents joined with EOS), {{ protocol.predicted_tokens }} tokens \
predicted.{% endif %}

| | original | compressed | change |
|---|---:|---:|---:|
{% for row in table %}| {{ row[0] }} | {{ row[1] }} | {{ row[2] }} | {{ row[3] }} |
{% endfor %}
{% if agreement is not none %}
Agreement with the original model: **{{ agreement }}**.
{% endif %}
{% if removed %}
## What was removed

| layer | heads kept | heads removed (original numbering) | FFN neurons kept | MLP |
|---:|---:|---|---:|---|
{% for r in removed %}| {{ r.layer }} | {{ r.heads_kept }} / {{ r.heads_total }} | \
{{ r.heads_removed }} | {{ r.neurons_kept }} / {{ r.neurons_total }} | {{ r.mlp }} |
{% endfor %}
{% endif %}
{% if heatmap %}
![Head importance: layers x heads, removed heads crossed out]({{ heatmap }})
{% endif %}
{% if curve %}
![Metric against the fraction of heads removed]({{ curve }})
{% endif %}

## How it was made

{{ method_text }}
{% if distill_text %}
{{ distill_text }}
{% endif %}
{% if health %}
### Training health

{% for h in health %}- **{{ h.level }}** ({{ h.check }}): {{ h.message }}
{% endfor %}
{% endif %}

## How to load it

```python
{{ load_code }}
```
{% if per_layer %}
The layers of this model differ in shape, so the folder ships its modelling code
(`modeling_slimformer.py`, named in `config.json`'s `auto_map`): load model and tokenizer with
`trust_remote_code=True` after reading that file. It imports only torch and transformers.
slimformer itself recognises that file and loads this model with its installed code, so the model
can be the input of another slimformer job without remote code.{% if onnx %} `model.onnx` runs the
same model without any Python modelling code (onnxruntime).{% endif %}
{% elif onnx %}
`model.onnx` runs the same model with onnxruntime.
{% endif %}{% if onnx_int8 %}
`model.int8.onnx` is onnxruntime's dynamic int8 quantization of `model.onnx` ({{ onnx_int8.size }};
largest output difference from the float graph {{ onnx_int8.diff }}, same top-1 prediction at
{{ onnx_int8.agreement }} of the evaluated positions on the first evaluation batch):
`onnxruntime.InferenceSession("model.int8.onnx", providers=["CPUExecutionProvider"])`.
{% endif %}{% if serving %}
### Files to serve

| model | file | engine | size | perplexity | next-token accuracy | tokens/s |
|---|---|---|---:|---:|---:|---:|
{% for line in serving %}{{ line }}
{% endfor %}
Perplexities are measured on the same evaluation windows as the table above, each file in its own
engine; tokens/s is greedy generation of one stream ({{ generation }}) on this job's machine.
{% if nemotron %}The config is in NVIDIA's Nemotron-NAS format (`DeciLMForCausalLM`, per-layer
shapes in `block_configs`), which vLLM and llama.cpp serve natively; transformers loads it through
`modeling_slimformer.py` as above.{% endif %}
{% for line in serve_commands %}
- {{ line }}{% endfor %}
{% endif %}

## Reproducibility

- base model: {{ origin }}
- seed: {{ seed }}
- versions: {{ versions }}
- the full job spec and every number are in `compression_report.json`

<details><summary>Job spec</summary>

```json
{{ spec_json }}
```

</details>

## Limitations

- Numbers come from {{ rows }} evaluation rows on {{ device }}; other data, sequence lengths and \
hardware
  give other latencies and scores.
- Pruning removes what mattered least for the calibration data ({{ calibration }}); inputs unlike \
that data
  may lose more quality than measured here.
- The base model's own limitations and biases carry over to this model.
{% if new_head %}- The {{ new_head }} was never trained: fine-tune it before using the predictions.
{% endif %}"""


def _serve_commands(report: dict, repo: str) -> list[str]:
    """How to serve each artefact an engine was checked with."""
    artifacts = report.get("artifacts") or {}
    lines = []
    if artifacts.get("vllm"):
        trust = " --trust-remote-code" if artifacts.get("per_layer") else ""
        lines.append(f"vLLM: `vllm serve {repo}{trust}`")
    for entry in artifacts.get("gguf") or []:
        lines.append(
            f"llama.cpp ({entry['type']}): `llama-server -m {entry['file']}` "
            f'(Python: `llama_cpp.Llama(model_path="{entry["file"]}")`)'
        )
    return lines


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
    size = artifacts.get("size_bytes")
    original_size = artifacts.get("original_size_bytes")
    rows = [
        {
            "model": name,
            "file": "model.safetensors",
            "engine": "transformers (PyTorch, float32)",
            "size": f"{bytes_ / 1e6:,.1f} MB" if bytes_ else "—",
            "perplexity": _fmt(evaluation[side]["metrics"].get("perplexity"), "perplexity"),
            "accuracy": _fmt(
                evaluation[side]["metrics"].get("next_token_accuracy"), "next_token_accuracy"
            ),
            "speed": _speed(speeds.get(f"{side}_tokens_per_s")),
        }
        for name, side, bytes_ in (
            ("original", "original", original_size),
            ("compressed", "compressed", size),
        )
    ]
    if served:
        rows.append(
            {
                "model": "compressed",
                "file": "model.safetensors",
                "engine": "vLLM (CPU build, float32)",
                "size": rows[1]["size"],
                "perplexity": _fmt(served.get("perplexity"), "perplexity"),
                "accuracy": _fmt(served.get("next_token_accuracy"), "next_token_accuracy"),
                "speed": _speed(served.get("tokens_per_s")),
            }
        )
    for entry in gguf:
        rows.append(
            {
                "model": "compressed",
                "file": entry["file"],
                "engine": f"llama.cpp ({entry['type']})",
                "size": f"{entry['size_bytes'] / 1e6:,.1f} MB",
                "perplexity": _fmt(entry.get("perplexity"), "perplexity"),
                "accuracy": _fmt(entry.get("next_token_accuracy"), "next_token_accuracy"),
                "speed": _speed(entry.get("tokens_per_s")),
            }
        )
    keys = ("size", "perplexity", "accuracy", "speed")
    return [
        f"| {r['model']} | `{r['file']}` | {r['engine']} | " + " | ".join(r[k] for k in keys) + " |"
        for r in rows
    ]


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def _generation_text(report: dict) -> str:
    generation = report["evaluation"].get("generation")
    if not generation:
        return "not measured: latency was off"
    return (
        f"{generation['prompt_tokens']}-token prompt from the first evaluation window, "
        f"{generation['new_tokens']} new tokens"
    )


def _int8_facts(int8: dict | None) -> dict | None:
    if not int8:
        return None
    agreement = int8.get("top1_agreement")
    return {
        "size": f"{int8['size_bytes'] / 1e6:,.1f} MB against "
        f"{int8['float_size_bytes'] / 1e6:,.1f} MB in float32",
        "diff": f"{int8['max_abs_diff']:.3g}",
        "agreement": "—" if agreement is None else f"{agreement:.1%}",
    }


def _calibration_unit(data: dict) -> str:
    """Rows, or for packed text the windows and their length."""
    protocol = data.get("calibration_protocol")
    return f"windows of {protocol['seq_len']} tokens" if protocol else "rows"


RANKING_TEXT = {
    "global": "across layers on raw scores",
    "per_layer": "within each layer (every layer loses the same share)",
    "adaptive": "across layers after standardising scores within each layer (FLAP's adaptive "
    "structure)",
}


def format_number(value: float | int | None) -> str:
    """A measured number as people read it: thousands separators, about four significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "∞" if value > 0 else ("−∞" if value < 0 else "n/a")
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    for limit, digits in ((100, 1), (10, 2), (1, 3)):
        if magnitude >= limit:
            return f"{value:.{digits}f}"
    if value == 0:
        return "0"
    return f"{value:.4f}" if magnitude >= 1e-3 else f"{value:.2e}"


def format_metric(value: float | int | None, metric: str | None = None) -> str:
    """A metric value: fractions as percent (``87.50%``), others as :func:`format_number`."""
    if value is not None and metric in PERCENT_METRICS:
        return f"{100 * value:.2f}%"
    return format_number(value)


def format_factor(factor: float) -> str:
    """``×1.25``, ``×12.3``, ``×59,695``: a ratio with sensible digits."""
    if not math.isfinite(factor):
        return "×∞"
    if factor >= 1000:
        return f"×{factor:,.0f}"
    return f"×{factor:.1f}" if factor >= 10 else f"×{factor:.2f}"


def format_speedup(speedup: float) -> str:
    """``×1.98 faster`` or, below 1, ``×1.05 slower``: a latency ratio as a person reads it."""
    if speedup >= 1 or speedup <= 0:
        return f"{format_factor(speedup)} faster"
    return f"{format_factor(1 / speedup)} slower"


def format_change(before: float | None, after: float | None, metric: str | None = None) -> str:
    """The change of a metric: percentage points for fractions, a factor for perplexity, else the
    difference."""
    if before is None or after is None:
        return ""
    if metric in PERCENT_METRICS:
        return f"{100 * (after - before):+.2f} pt"
    if metric in RATIO_METRICS:
        return format_factor(after / before) if before > 0 else ""
    difference = after - before
    if abs(difference) >= 1000:
        return f"{difference:+,.0f}"
    if abs(difference) >= 1e-3 or difference == 0:
        return f"{difference:+.3f}"
    return f"{difference:+.1e}"


def format_relative(before: float | int | None, after: float | int | None) -> str:
    """The relative change of a size (``-37.5%``); empty when unknown."""
    if not before or after is None:
        return ""
    return f"{after / before - 1:+.1%}"


def _fmt(value, metric: str | None = None) -> str:
    return format_metric(value, metric)


def _change(before, after, *, ratio: bool = False, metric: str | None = None) -> str:
    return format_relative(before, after) if ratio else format_change(before, after, metric)


def _table(evaluation: dict, artifacts: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    original, compressed = evaluation["original"], evaluation["compressed"]
    for name, value in original["metrics"].items():
        other = compressed["metrics"].get(name)
        rows.append(
            (
                METRIC_LABELS.get(name, name),
                _fmt(value, name),
                _fmt(other, name),
                _change(value, other, metric=name),
            )
        )
    for key, label in (("parameters", "Parameters"), ("macs", "MACs per sequence")):
        rows.append(
            (
                label,
                _fmt(original[key]),
                _fmt(compressed[key]),
                _change(original[key], compressed[key], ratio=True),
            )
        )
    size_before, size_after = artifacts.get("original_size_bytes"), artifacts.get("size_bytes")
    rows.append(
        (
            "Size on disk",
            _mb(size_before),
            _mb(size_after),
            _change(size_before, size_after, ratio=True),
        )
    )
    lat_o, lat_c = original.get("latency"), compressed.get("latency")
    if lat_o and lat_c:
        ratios = evaluation["ratios"]
        rows.append(
            (
                "Latency p50, batch 1 (ms)",
                f"{lat_o['batch1_p50_ms']:.2f}",
                f"{lat_c['batch1_p50_ms']:.2f}",
                format_speedup(ratios["latency_speedup"]),
            )
        )
        rows.append(
            (
                "Latency p95, batch 1 (ms)",
                f"{lat_o['batch1_p95_ms']:.2f}",
                f"{lat_c['batch1_p95_ms']:.2f}",
                "",
            )
        )
        rows.append(
            (
                "Throughput, batch 32 (seq/s)",
                f"{lat_o['batch32_throughput']:.1f}",
                f"{lat_c['batch32_throughput']:.1f}",
                format_factor(ratios["throughput_speedup"]),
            )
        )
    return rows


def _mb(size) -> str:
    return "—" if size is None else f"{size / 1e6:.1f} MB"


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


def plot_head_heatmap(heads: list[list[float]], removed: dict[str, list[int]], path: Path) -> Path:
    """Layers x heads importance, removed heads crossed out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    width = max(len(h) for h in heads)
    grid = np.full((len(heads), width), np.nan)
    for i, row in enumerate(heads):
        grid[i, : len(row)] = row
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * width + 2), max(2.5, 0.4 * len(heads) + 1.5)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for layer, idx in removed.items():
        for head in idx:
            ax.text(
                head,
                int(layer),
                "x",
                ha="center",
                va="center",
                color="white",
                fontsize=11,
                fontweight="bold",
            )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(width))
    ax.set_yticks(range(len(heads)))
    ax.set_title("Head importance (x = removed)")
    fig.colorbar(image, ax=ax, label="importance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pruning_curve(curve: list[dict], metric: str, path: Path) -> Path:
    """Metric against the fraction of heads (and FFN neurons) removed, one point per iterative
    step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    x = [p["heads_removed"] for p in curve]
    y = [p["metric"] for p in curve]
    ax.plot(x, y, marker="o", label="heads removed")
    if any(p.get("ffn_removed") for p in curve):
        ax.plot(
            [p["ffn_removed"] for p in curve],
            y,
            marker="s",
            linestyle="--",
            label="FFN neurons removed",
        )
    rejected = [p for p in curve if not p.get("kept", True)]
    if rejected:
        ax.scatter(
            [p["heads_removed"] for p in rejected],
            [p["metric"] for p in rejected],
            color="red",
            zorder=3,
            label="below the floor (undone)",
        )
    ax.set_xlabel("fraction removed")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title("Iterative pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def eval_results(report: dict) -> list[EvalResult]:
    """``model-index`` entries: the compressed model's task metrics on the evaluation data."""
    evaluation = report["evaluation"]
    data = report["data"]
    task = report["base_model"]["task"]
    return [
        EvalResult(
            task_type=PIPELINE_TAG.get(task, task),
            dataset_type=data.get("eval_dataset_type") or "custom",
            dataset_name=data.get("eval_source") or "evaluation data",
            dataset_split=data.get("eval_split"),
            metric_type=name,
            metric_name=METRIC_LABELS.get(name, name),
            metric_value=round(float(value), 6),
        )
        for name, value in evaluation["compressed"]["metrics"].items()
    ]


def build_card(report: dict, folder: Path) -> ModelCard:
    """Write ``README.md`` (and the PNGs it shows) into ``folder`` from a compression report."""
    folder = Path(folder)
    base = report["base_model"]
    method = report["spec"]["method"]
    evaluation = report["evaluation"]
    pruning = report.get("pruning")
    heatmap = curve = None
    importance = report.get("importance")
    if importance and importance.get("heads"):
        plot_head_heatmap(
            importance["heads"], (pruning or {}).get("removed_heads", {}), folder / HEATMAP
        )
        heatmap = HEATMAP
    if pruning and len(pruning.get("curve", [])) > 1:
        plot_pruning_curve(pruning["curve"], evaluation["primary_metric"], folder / CURVE)
        curve = CURVE
    tags = (
        ["slimformer"]
        + (["pruned"] if "prune" in method else [])
        + (["distilled"] if "distill" in method else [])
    )
    # the metadata names only what the Hub can resolve: never a local folder
    hub_id = base_hub_id(base)
    card_data = ModelCardData(
        base_model=hub_id,
        base_model_revision=base.get("commit") if hub_id else None,
        tags=tags,
        pipeline_tag=PIPELINE_TAG.get(base["task"], base["task"]),
        library_name="transformers",
        license=base.get("license"),
        model_name=report.get("name") or f"{base['id'].split('/')[-1]}-slim",
        eval_results=eval_results(report),
    )
    artifacts = report.get("artifacts", {})
    per_layer = bool(artifacts.get("per_layer"))
    repo = (report["spec"].get("publish") or {}).get("repo_id") or LOAD_PLACEHOLDER
    load_code = load_snippet(
        base["task"], repo, per_layer=per_layer, pairs=bool(report["data"].get("text_pair_column"))
    )
    primary = evaluation["primary_metric"]
    o_metric = evaluation["original"]["metrics"].get(primary)
    c_metric = evaluation["compressed"]["metrics"].get(primary)
    if (
        c_metric is None and evaluation.get("agreement") is not None
    ):  # no labels: agreement is the measure
        primary, o_metric, c_metric = "agreement with the original", 1.0, evaluation["agreement"]
    ratios = evaluation["ratios"]
    summary = (
        f"A {'pruned' if 'prune' in method else 'distilled'}"
        f"{' and distilled' if method == 'prune_distill' else ''} version of "
        + (f"[`{hub_id}`]({HUB_URL}/{hub_id})" if hub_id else f"a local model (`{base['id']}`)")
        + ", made with slimformer: "
        f"{ratios['parameters']:.0%} of the parameters and {ratios['macs']:.0%} of the MACs, "
        f"{METRIC_LABELS.get(primary, primary)} {_fmt(c_metric, primary)} (original "
        f"{_fmt(o_metric, primary)})"
        + (
            f", {format_speedup(ratios['latency_speedup'])} at batch 1"
            if ratios.get("latency_speedup")
            else ""
        )
        + "."
    )
    new_head = base.get("new_head") or []
    versions = ", ".join(
        f"{k} {v}"
        for k, v in report.get("environment", {}).items()
        if k in ("python", "torch", "transformers", "huggingface_hub", "slimformer")
    )
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=f"{card_data.model_name}",
        summary=summary,
        table=_table(evaluation, artifacts),
        agreement=None
        if evaluation.get("agreement") is None
        else f"{evaluation['agreement']:.2%}"
        if evaluation["task"] != "feature-extraction"
        else f"{evaluation['agreement']:.4f} mean cosine",
        rows=evaluation["rows"],
        eval_source=report["data"].get("eval_source", "the evaluation data"),
        device=evaluation["device"],
        threads=evaluation["threads"],
        seq_len=evaluation["seq_len"],
        protocol=evaluation.get("protocol"),
        removed=_removed_rows(pruning),
        heatmap=heatmap,
        curve=curve,
        method_text=_method_text(report),
        distill_text=_distill_text(report),
        health=(report.get("distillation") or {}).get("health", []),
        load_code=load_code,
        per_layer=per_layer,
        onnx=bool(artifacts.get("onnx")),
        onnx_int8=_int8_facts((artifacts.get("onnx") or {}).get("int8")),
        serving=_serving_rows(report),
        serve_commands=_serve_commands(report, repo),
        generation=_generation_text(report),
        nemotron=artifacts.get("layout") == "nemotron_nas",
        origin=_origin_text(base),
        new_head=f"{PIPELINE_TAG.get(base['task'], base['task'])} head" if new_head else None,
        new_head_weights=", ".join(new_head),
        seed=report["spec"].get("seed", 0),
        versions=versions,
        spec_json=json.dumps(report["spec"], indent=2),
        calibration=report["data"].get("calibration_source")
        or report["data"].get("source", "the given data"),
    )
    card.save(folder / "README.md")
    return card


LOAD_PLACEHOLDER = "path/to/this/folder"
SOURCE_TEXT = {
    "hub": "downloaded from the Hub",
    "hub_cache": "recognised from the Hugging Face cache folder it was loaded from",
    "config": "as `_name_or_path` in the local folder's config.json names it; the commit is "
    "unknown",
    "given": "as given with `--base-model` (`model.base_model`) for a local folder; the commit is "
    "unknown",
}


def base_hub_id(base: dict) -> str | None:
    """The base model's Hub id when it is known, else None (reports before ``hub_id`` existed: a Hub
    model had a commit)."""
    if "hub_id" in base:
        return base["hub_id"]
    return base["id"] if base.get("commit") else None


def _origin_text(base: dict) -> str:
    hub_id = base_hub_id(base)
    if hub_id is None:
        return (
            f"a local folder (`{base['id']}`) whose Hub origin is unknown; name it with "
            "`--base-model` (`model.base_model`) to link it here"
        )
    source = base.get("source") or ("hub" if base.get("commit") else "given")
    where = f"[`{hub_id}`]({HUB_URL}/{hub_id})"
    if source == "hub" and base.get("revision"):
        where += f" at revision `{base['revision']}`"
    if base.get("commit"):
        where += f" (commit `{base['commit']}`)"
    return f"{where}, {SOURCE_TEXT.get(source, source)}"


def load_snippet(task: str, repo: str, *, per_layer: bool, pairs: bool = False) -> str:
    """Python that loads the result and uses it once, right for the task and the layout."""
    auto_class = AUTO_CLASS_FOR_TASK.get(task, "AutoModel")
    trust = ", trust_remote_code=True" if per_layer else ""
    lines = [f"from transformers import AutoTokenizer, {auto_class}", ""]
    if task == "feature-extraction":
        lines = ["import torch", *lines]
    lines += [
        f'model = {auto_class}.from_pretrained("{repo}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{trust})',
        "",
    ]
    if task == "text-classification":
        second = ', ["a second sentence"]' if pairs else ""
        lines += [
            f'inputs = tokenizer(["an example sentence"]{second}, return_tensors="pt")',
            "label = model(**inputs).logits.argmax(-1).item()",
            "print(model.config.id2label[label])",
        ]
    elif task == "text-generation":
        lines += [
            'inputs = tokenizer("An example prompt", return_tensors="pt")',
            "output = model.generate(**inputs, max_new_tokens=20)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ]
    else:  # embeddings: the mean of the token states over real tokens, as slimformer measures them
        lines += [
            'inputs = tokenizer(["an example sentence"], padding=True, return_tensors="pt")',
            "with torch.no_grad():",
            "    hidden = model(**inputs).last_hidden_state",
            'mask = inputs["attention_mask"].unsqueeze(-1)',
            "embeddings = (hidden * mask).sum(1) / mask.sum(1)",
            "print(embeddings.shape)",
        ]
    return "\n".join(lines)


def _method_text(report: dict) -> str:
    spec = report["spec"]
    if "prune" not in spec["method"]:
        return "The model was not pruned."
    p = spec["prune"]
    imp = report.get("importance") or {}
    how = {
        "michel": (
            "Michel et al. (2019): the expected magnitude of the loss gradient with respect to a "
            "gate on each head's output (and on each FFN neuron), heads normalised per layer"
        ),
        "magnitude": "the L2 norm of each unit's weights",
        "random": "a random order (a baseline)",
        "activations": "Minitron's activation magnitudes (forward passes only)",
        "flap": "FLAP's fluctuation metric (An et al. 2024) with bias compensation",
        "obs": (
            "the structured OBS criterion (the output error a unit's removal leaves after a "
            "least-squares refit of its layer's output projection; ZipLM, SlimGPT)"
        ),
    }.get(p["importance"], p["importance"])
    data = report["data"]
    text = f"the text column `{data['text_column']}`" if data.get("text_column") else "the text"
    if report["base_model"]["task"] == "text-generation":
        task_loss = f"the next-token (language-modelling) loss on {text}"
    else:
        label = f" (labels from `{data['label_column']}`)" if data.get("label_column") else ""
        task_loss = f"the task loss on labelled data{label}"
    loss = {
        "task": task_loss,
        "label_free": "a label-free loss against the original model's own predictions",
    }.get(imp.get("loss", ""))
    if loss is None:  # activation-based methods (FLAP, Minitron): forward passes, no loss at all
        loss = f"forward passes over {text}"
    target = ", ".join(
        part
        for part in (
            f"{p['heads']:.0%} of the attention heads" if p["heads"] else "",
            f"{p['ffn']:.0%} of the FFN neurons" if p["ffn"] else "",
            f"{p['whole_mlps']} whole MLP(s)" if p["whole_mlps"] else "",
            f"a budget of {p['macs_budget']:.0%} of the MACs" if p.get("macs_budget") else "",
        )
        if part
    )
    schedule = (
        "in one shot"
        if p["schedule"] == "one_shot"
        else f"iteratively: {p['step']:.0%} of what remained per step, re-scoring each time, "
        f"stopping before the metric fell below {p['metric_floor']:.0%} of the original"
    )
    return (
        f"Importance was scored with {how}, using {loss} on {data.get('calibration_rows', '?')} "
        f"calibration {_calibration_unit(data)} of {data.get('source', 'the given data')} "
        f"({imp.get('seconds', 0):.1f} s). The target was {target}, "
        f"ranked {RANKING_TEXT.get(p['ranking'], p['ranking'])}, "
        f"removed {schedule}. "
        f"Units were removed physically (weights sliced) in the `{p['layout']}` layout"
        + (
            "; each pruned layer's output projection was then refitted by least squares to "
            "reproduce the original's output on the calibration tokens."
            if (report.get("pruning") or {}).get("reconstruction")
            else "."
        )
        + _unused_labels_text(report)
    )


def _unused_labels_text(report: dict) -> str:
    column = report["data"].get("unused_label_column")
    if not column:
        return ""
    if report["base_model"]["task"] == "text-generation":
        why = "a causal LM learns from the text itself, so no labels were used"
    else:
        why = (
            "an embedding model uses labels only as similarity scores of sentence pairs, and "
            "the data had no text pair column"
        )
    return f" The label column `{column}` was given but not used: {why}."


def _distill_text(report: dict) -> str:
    d = report.get("distillation")
    if not d:
        return ""
    spec = report["spec"]["distill"]
    hidden = (
        ", hidden-state " + spec["hidden_loss"] + " alignment" if spec.get("hidden_loss") else ""
    )
    return (
        f"### Distillation\n\nThe student was trained for {d.get('steps', '?')} steps "
        f"({d.get('seconds', 0) / 60:.1f} min) on soft targets of the original model at "
        f"temperature {spec['temperature']} (alpha {spec['alpha']} on gold labels where present"
        f"{hidden}); "
        f"the best checkpoint by the evaluation metric was kept"
        + (f" (best {d['best_metric']:.4f})." if d.get("best_metric") is not None else ".")
        + ("" if "prune" in report["spec"]["method"] else _unused_labels_text(report))
    )
