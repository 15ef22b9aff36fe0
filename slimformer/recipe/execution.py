"""Which path a job runs — layer by layer (:mod:`slimformer.streaming`) or in memory — and what it
needs: the peak memory estimated from the repo's ``config.json`` before any weight is downloaded,
refused there when this machine cannot hold it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import transformers

from slimformer.architectures import family_of
from slimformer.errors import SlimformerError
from slimformer.loading import infer_task
from slimformer.memory import (
    MemoryEstimate,
    available_memory_bytes,
    check_fits,
    estimate_for_repo,
    states_go_to_files,
)
from slimformer.pruning import layout_for
from slimformer.recipe.job import Job
from slimformer.recipe.results import IN_MEMORY, LAYER_BY_LAYER, Execution
from slimformer.spec import JobSpec
from slimformer.streaming.model import can_stream
from slimformer.text import window_length

logger = logging.getLogger(__name__)

CLASSIFIER_TOKENS = 128  # tokens per row of classification and embedding batches


def model_task(spec: JobSpec) -> str | None:
    """The task the model is loaded for: an embedding model serves sentence similarity."""
    task = spec.model.task
    return "feature-extraction" if task == "sentence-similarity" else task


def why_in_memory(spec: JobSpec, task: str, config) -> str | None:
    """None when the job (its defaults resolved) runs layer by layer; else the reason it holds
    the whole model."""
    p = spec.prune
    if task != "text-generation":
        return f"a {task} model (layer by layer is for causal LMs)"
    if not can_stream(config):
        return f"the {family_of(config).name} family's forward is not replayed layer by layer"
    reasons = [
        (spec.method != "prune", f"method {spec.method} trains a whole student"),
        (p.schedule != "one_shot", "the iterative schedule re-scores the whole model each step"),
        (p.importance != "obs", f"importance {p.importance} (layer by layer: obs)"),
        (layout_for(p.layout).removes_attention_blocks, f"layout {p.layout}"),
        (bool(p.layers), "depth pruning (prune.layers)"),
        (p.macs_budget is not None, "a MACs budget measures whole candidate models"),
        (bool(p.bias_compensation), "bias compensation"),
        (bool(set(spec.served_targets()) - {"transformers"}), "serving targets"),
        (spec.writes_onnx(), "ONNX export"),
    ]
    found = [reason for wanted, reason in reasons if wanted]
    return "; ".join(found) if found else None


def memory_check(job: Job, resolve: Callable) -> Callable[[dict, dict | None], None]:
    """``before_weights(config, parameters_by_dtype)`` for :func:`slimformer.loading.open_model`:
    the job's peak from the repo's config, refused (``InsufficientMemory``) before any weight
    moves when this machine cannot hold it. ``resolve(spec, task, family)`` gives the spec with
    its defaults for that model."""

    def check(raw: dict, parameters: dict | None) -> None:
        try:
            fields = {k: v for k, v in raw.items() if k != "model_type"}
            config = transformers.AutoConfig.for_model(raw.get("model_type", ""), **fields)
            task = model_task(job.spec) or infer_task(config)
            spec = resolve(job.spec, task, family_of(config).name)
            reason = why_in_memory(spec, task, config)
            estimate = _estimate(raw, parameters, spec, task, config, reason)
            available = available_memory_bytes()
            spill = states_go_to_files(estimate, available)
            if spill:
                estimate = _estimate(raw, parameters, spec, task, config, reason, spill=True)
        except SlimformerError:  # an unsupported family, a bad task: refused here, before download
            raise
        except (KeyError, TypeError, ValueError) as err:  # loading says what is wrong with it
            logger.warning("no memory estimate for %s: %s", job.spec.model.id, err)
            return
        job.execution = Execution(
            LAYER_BY_LAYER if reason is None else IN_MEMORY,
            reason,
            estimate,
            available,
            states_in_files=spill,
        )
        check_fits(estimate, job.execution.available_bytes)

    return check


def _estimate(
    raw: dict, parameters, spec: JobSpec, task: str, config, reason, *, spill: bool = False
) -> MemoryEstimate:
    lm = task == "text-generation"
    return estimate_for_repo(
        raw,
        parameters,
        calibration_windows=spec.prune.calibration_samples,
        eval_windows=spec.evaluation.rows(task),
        window_tokens=window_length(config) if lm else CLASSIFIER_TOKENS,
        path="streamed" if reason is None else "in_memory",
        method=spec.prune.importance if spec.method != "distill" else "activations",
        distill=spec.method != "prune",
        spill_states=spill,
        downstream_tasks=bool(spec.evaluation.tasks),
        quantize=tuple(spec.export.quantize),
    )
