"""``export.quantize``: quantized copies of the written folder in ``quantized/<method>/`` beside it,
made in the gptq engine (:mod:`slimformer.engines.quantize`) and measured like the folder itself.

Before work (:func:`check`, from the scoring stage once the model is loaded): the group size
gptq-int4 will use, from the model's widths and what pruning removes, which the pruning target then
keeps FFN widths multiples of; refusals for what does not quantize, naming the layer and width.
"""

from __future__ import annotations

import math
from pathlib import Path

from slimformer.architectures import ModelAdapter
from slimformer.engines import VLLM_NO_INT4, engine_python, vllm_scores, vllm_serves_int4
from slimformer.engines.quantize import block_path, group_size_for, linear_widths, quantize_folder
from slimformer.errors import InvalidSpec
from slimformer.families import GPTQ_ENCODERS
from slimformer.models import AUTO_CLASS_FOR_TASK
from slimformer.recipe.job import Job

CAUSAL = "text-generation"


def requested(job: Job) -> list[str]:
    return list(job.spec.export.quantize)


def check_engines(job: Job) -> None:
    """The gptq engine must be there before any work (EngineMissing names the fix)."""
    if requested(job):
        engine_python("gptq")


def _model(job: Job):
    inputs = job.inputs
    return inputs.streamed.model if inputs.streamed is not None else inputs.model


def check(job: Job) -> int:
    """Before work: the group size gptq-int4 will quantize at (1 when it is not asked).

    Raises:
        InvalidSpec: w8a8 for a model that is not a causal LM; gptq-int4 for an encoder family
            whose folder does not reload; a width that no group of 32 or more divides.
    """
    methods, inputs = requested(job), job.inputs
    if not methods:
        return 1
    spec, model = inputs.spec, _model(job)
    adapter = ModelAdapter(model)
    family = adapter.family.name
    if inputs.task != CAUSAL:
        if "w8a8" in methods:
            raise InvalidSpec(
                "export.quantize w8a8 is written for vLLM, which serves causal LMs; for this "
                f"{inputs.task} model use --onnx-int8 (onnxruntime's dynamic int8)",
                details={"field": "quantize"},
            )
        if family not in GPTQ_ENCODERS:
            raise InvalidSpec(
                f"export.quantize gptq-int4 is not available for {family!r} encoders (their "
                f"quantized folder is checked to reload for {', '.join(GPTQ_ENCODERS)} only); use "
                "--onnx-int8 (onnxruntime's dynamic int8) instead",
                details={"field": "quantize"},
            )
    if "gptq-int4" not in methods:
        return 1
    widths = linear_widths(model, block_path(model, adapter.layers))
    p = spec.prune
    heads_one_by_one = "prune" in spec.method and (p.heads or p.macs_budget is not None)
    # a layout that removes attention whole leaves no odd attention width; others remove heads
    # one by one, so an attention output keeps a multiple of a head's dimension only
    also = [adapter.head_dim] if heads_one_by_one and p.layout != "nemotron_nas" else []
    return group_size_for(widths, also=also)


def _calibration(job: Job) -> list[list[int]]:
    """The job's calibration windows as token ids, padding left out."""
    windows = []
    for batch in job.inputs.calibration_batches():
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        for i, row in enumerate(ids):
            kept = row if mask is None else row[mask[i].bool()]
            windows.append([int(t) for t in kept])
    return windows


def _vllm(path: Path, windows: list[list[int]], bench: dict | None) -> dict:
    scores = vllm_scores(path, windows, bench=bench, dtype="bfloat16")
    served = {
        "perplexity": math.exp(scores["nll_sum"] / max(1, scores["tokens"])),
        "next_token_accuracy": scores["hits"] / max(1, scores["tokens"]),
        "measured_by": "vLLM (CPU build, bfloat16), the evaluation windows",
    }
    if "bench" in scores:
        served["tokens_per_s"] = scores["bench"]["tokens_per_s"]
    return served


def measure(job: Job, folder: Path, bench: dict | None) -> list[dict] | None:
    """Write and measure each quantized copy of the saved ``folder``."""
    methods, inputs = requested(job), job.inputs
    if not methods:
        return None
    model = job.compressed if inputs.streamed is None else inputs.streamed.model
    blocks = block_path(model, ModelAdapter(model).layers)
    causal = inputs.task == CAUSAL
    calibration = _calibration(job)
    windows = inputs.lm_windows if causal else None
    records = []
    for i, method in enumerate(methods):
        job.check()
        job.stage("writing_card", 0.3 + 0.3 * i / len(methods), f"writing the {method} copy")
        record = quantize_folder(
            folder,
            method,
            calibration,  # gptq-int4 calibrates on it, w8a8 smooths on it
            causal=causal,
            blocks=blocks,
            windows=windows,
            auto_class=AUTO_CLASS_FOR_TASK[inputs.task],
        )
        if causal and windows and "vllm" in job.spec.export.targets:
            job.check()
            if method == "gptq-int4" and not vllm_serves_int4():
                record["vllm_not_measured"] = VLLM_NO_INT4
            else:
                record["vllm"] = _vllm(folder / record["path"], windows, bench)
        records.append(record)
    return records
