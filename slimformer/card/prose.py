"""The card's sentences: the summary, how the model was made, where the base model came from, how to
load and serve the result."""

from __future__ import annotations

from slimformer.card.metadata import HUB_URL, base_hub_id
from slimformer.formatting import METRIC_LABELS, format_megabytes, format_metric, format_speedup
from slimformer.models import AUTO_CLASS_FOR_TASK
from slimformer.report import BaseModelInfo, CompressionReport, DataInfo, OnnxInt8, Ratios

LOAD_PLACEHOLDER = "path/to/this/folder"
SOURCE_TEXT = {
    "hub": "downloaded from the Hub",
    "hub_cache": "recognised from the Hugging Face cache folder it was loaded from",
    "config": "as `_name_or_path` in the local folder's config.json names it; the commit is "
    "unknown",
    "given": "as given with `--base-model` (`model.base_model`) for a local folder; the commit is "
    "unknown",
}
RANKING_TEXT = {
    "global": "across layers on raw scores",
    "per_layer": "within each layer (every layer loses the same share)",
    "adaptive": "across layers after standardising scores within each layer (FLAP's adaptive "
    "structure)",
}
IMPORTANCE_TEXT = {
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
}


def _parameter_shares(ratios: Ratios) -> str:
    """The share of the parameters kept, of all of them and (where known) of those outside the
    embeddings: "80% of the parameters (75% of the non-embedding ones)"."""
    text = f"{ratios.parameters:.0%} of the parameters"
    if ratios.non_embedding_parameters is not None:
        text += f" ({ratios.non_embedding_parameters:.0%} of the non-embedding ones)"
    return text


def _summary(report: CompressionReport) -> str:
    """The card's first sentence: what was made from which model, its share of the parameters and
    MACs, its primary metric against the original's and its speed-up."""
    base, method = report.base_model, report.spec["method"]
    evaluation = report.evaluation
    hub_id = base_hub_id(base)
    primary = evaluation.primary_metric
    o_metric = evaluation.original.metrics.get(primary)
    c_metric = evaluation.compressed.metrics.get(primary)
    if c_metric is None and evaluation.agreement is not None:
        # no labels: agreement is the measure
        primary, o_metric, c_metric = "agreement with the original", 1.0, evaluation.agreement
    ratios = evaluation.ratios
    return (
        f"A {'pruned' if 'prune' in method else 'distilled'}"
        f"{' and distilled' if method == 'prune_distill' else ''} version of "
        + (f"[`{hub_id}`]({HUB_URL}/{hub_id})" if hub_id else f"a local model (`{base.id}`)")
        + ", made with slimformer: "
        f"{_parameter_shares(ratios)} and {ratios.macs:.0%} of the MACs, "
        f"{METRIC_LABELS.get(primary, primary)} {format_metric(c_metric, primary)} (original "
        f"{format_metric(o_metric, primary)})"
        + (
            f", {format_speedup(ratios.latency_speedup)} at batch 1"
            if ratios.latency_speedup
            else ""
        )
        + "."
    )


def _origin_text(base: BaseModelInfo) -> str:
    hub_id = base_hub_id(base)
    if hub_id is None:
        return (
            f"a local folder (`{base.id}`) whose Hub origin is unknown; name it with "
            "`--base-model` (`model.base_model`) to link it here"
        )
    source = base.source or ("hub" if base.commit else "given")
    where = f"[`{hub_id}`]({HUB_URL}/{hub_id})"
    if source == "hub" and base.revision:
        where += f" at revision `{base.revision}`"
    if base.commit:
        where += f" (commit `{base.commit}`)"
    return f"{where}, {SOURCE_TEXT.get(source, source)}"


def load_snippet(
    task: str,
    repo: str,
    *,
    per_layer: bool,
    pairs: bool = False,
    tokenizer_needs_code: bool | None = None,
) -> str:
    """Python that loads the result and uses it once, right for the task and the layout. The
    tokenizer line passes ``trust_remote_code`` where the folder's config needs the model's code
    (``tokenizer_needs_code``; unknown: as the model)."""
    auto_class = AUTO_CLASS_FOR_TASK.get(task, "AutoModel")
    trust = ", trust_remote_code=True" if per_layer else ""
    if tokenizer_needs_code is None:
        tokenizer_needs_code = per_layer
    tokenizer_trust = ", trust_remote_code=True" if tokenizer_needs_code else ""
    lines = [f"from transformers import AutoTokenizer, {auto_class}", ""]
    if task == "feature-extraction":
        lines = ["import torch", *lines]
    lines += [
        f'model = {auto_class}.from_pretrained("{repo}"{trust})',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}"{tokenizer_trust})',
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


def _method_text(report: CompressionReport) -> str:
    spec = report.spec
    if "prune" not in spec["method"]:
        return "The model was not pruned."
    p = spec["prune"]
    data = report.data
    seconds = report.importance.seconds if report.importance else 0
    schedule = (
        "in one shot"
        if p["schedule"] == "one_shot"
        else f"iteratively: {p['step']:.0%} of what remained per step, re-scoring each time, "
        f"stopping before the metric fell below {p['metric_floor']:.0%} of the original"
    )
    return (
        f"Importance was scored with {IMPORTANCE_TEXT.get(p['importance'], p['importance'])}, "
        f"using {_loss_text(report)} on {data.calibration_rows} "
        f"calibration {_calibration_unit(data)} of {data.source} "
        f"({seconds:.1f} s). The target was {_target_text(p)}, "
        f"ranked {RANKING_TEXT.get(p['ranking'], p['ranking'])}, "
        f"removed {schedule}. "
        f"Units were removed physically (weights sliced) in the `{p['layout']}` layout"
        + (
            "; each pruned layer's output projection was then refitted by least squares to "
            "reproduce the original's output on the calibration tokens."
            if report.pruning and report.pruning.reconstruction
            else "."
        )
        + _unused_labels_text(report)
    )


def _loss_text(report: CompressionReport) -> str:
    """What the importance scores were computed from."""
    data = report.data
    text = f"the text column `{data.text_column}`" if data.text_column else "the text"
    if report.base_model.task == "text-generation":
        task_loss = f"the next-token (language-modelling) loss on {text}"
    else:
        label = f" (labels from `{data.label_column}`)" if data.label_column else ""
        task_loss = f"the task loss on labelled data{label}"
    loss = {
        "task": task_loss,
        "label_free": "a label-free loss against the original model's own predictions",
    }.get(report.importance.loss if report.importance else "")
    if loss is None:  # activation-based methods (FLAP, Minitron): forward passes, no loss at all
        loss = f"forward passes over {text}"
    return loss


def _target_text(prune: dict) -> str:
    """What pruning was asked to remove."""
    return ", ".join(
        part
        for part in (
            f"{prune['heads']:.0%} of the attention heads" if prune["heads"] else "",
            f"{prune['ffn']:.0%} of the FFN neurons" if prune["ffn"] else "",
            f"{prune['whole_mlps']} whole MLP(s)" if prune["whole_mlps"] else "",
            f"a budget of {prune['macs_budget']:.0%} of the MACs"
            if prune.get("macs_budget")
            else "",
        )
        if part
    )


def _calibration_unit(data: DataInfo) -> str:
    """Rows, or for packed text the windows and their length."""
    protocol = data.calibration_protocol
    return f"windows of {protocol['seq_len']} tokens" if protocol else "rows"


def _unused_labels_text(report: CompressionReport) -> str:
    column = report.data.unused_label_column
    if not column:
        return ""
    if report.base_model.task == "text-generation":
        why = "a causal LM learns from the text itself, so no labels were used"
    else:
        why = (
            "an embedding model uses labels only as similarity scores of sentence pairs, and "
            "the data had no text pair column"
        )
    return f" The label column `{column}` was given but not used: {why}."


def _distill_text(report: CompressionReport) -> str:
    d = report.distillation
    if d is None:
        return ""
    spec = report.spec["distill"]
    hidden = (
        ", hidden-state " + spec["hidden_loss"] + " alignment" if spec.get("hidden_loss") else ""
    )
    steps = "?" if d.steps is None else d.steps
    return (
        f"### Distillation\n\n{_student_text(report)}The student was trained for {steps} steps "
        f"({(d.seconds or 0) / 60:.1f} min) on soft targets of the original model at "
        f"temperature {spec['temperature']} (alpha {spec['alpha']} on gold labels where present"
        f"{hidden}); "
        f"the best checkpoint by the evaluation metric was kept"
        + (f" (best {d.best_metric:.4f})." if d.best_metric is not None else ".")
        + ("" if "prune" in report.spec["method"] else _unused_labels_text(report))
    )


SELECTIONS = {
    "even": "evenly spaced, ending with the last",
    "importance": "by a gate on each layer's residual update, scored like heads",
    "block_influence": "by block influence on the calibration text, as depth pruning "
    "(`prune --layers`) chooses them",
}


def _student_text(report: CompressionReport) -> str:
    """Which teacher layers a layer-dropped student kept, and its held-out metric before and
    after training."""
    d = report.distillation
    student = getattr(d, "student", None) or {}
    kept = student.get("kept_layers")
    if not kept:
        return ""
    how = SELECTIONS.get(student.get("layer_selection") or "", "")
    text = f"The student kept the teacher's layers {kept}" + (f" ({how})" if how else "") + ". "
    evaluations = getattr(d, "evaluations", None) or []
    start = next((e for e in evaluations if e.get("step") == 0), None)
    metric = getattr(d, "metric", None) or "metric"
    if start is not None and d.best_metric is not None:
        text += (
            f"Held-out {metric} before training {start['metric']:.4g}, after {d.best_metric:.4g}. "
        )
    return text


def _int8_facts(int8: OnnxInt8 | None) -> dict | None:
    """The size, largest output difference and top-1 agreement of the int8 ONNX graph."""
    if int8 is None:
        return None
    agreement = int8.top1_agreement
    return {
        "size": f"{format_megabytes(int8.size_bytes)} against "
        f"{format_megabytes(int8.float_size_bytes)} in float32",
        "diff": f"{int8.max_abs_diff:.3g}",
        "agreement": "—" if agreement is None else f"{agreement:.1%}",
    }


def _serve_commands(report: CompressionReport, repo: str) -> list[str]:
    """How to serve each artefact an engine was checked with."""
    artifacts = report.artifacts
    lines = []
    if artifacts.vllm is not None:
        trust = " --trust-remote-code" if artifacts.per_layer else ""
        lines.append(f"vLLM: `vllm serve {repo}{trust}`")
    for entry in artifacts.gguf or []:
        lines.append(
            f"llama.cpp ({entry.type}): `llama-server -m {entry.file}` "
            f'(Python: `llama_cpp.Llama(model_path="{entry.file}")`)'
        )
    return lines


def _generation_text(report: CompressionReport) -> str:
    generation = report.evaluation.generation
    if generation is None:
        return "not measured: latency was off"
    return (
        f"{generation.prompt_tokens}-token prompt from the first evaluation window, "
        f"{generation.new_tokens} new tokens"
    )
