"""Downstream tasks (``evaluation.tasks``): lm-eval's tasks on the original and the compressed
causal LM, the same items for both, in the job's process.

Task names are checked before any work. In memory, both models are already loaded; layer by layer
neither is ever whole, so the written folder and then the original are loaded one at a time, after
the folder is written (their peak is one whole model, beside the stream's).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from slimformer.errors import DatasetError, InvalidSpec
from slimformer.evaluation.downstream import (
    compare_tasks,
    run_tasks,
    unknown_tasks,
    unloadable_tasks,
)
from slimformer.loading import load_model
from slimformer.recipe.job import Job
from slimformer.spec import JobSpec


def check(job: Job) -> None:
    """Refuse, before any work, a task lm-eval does not know or cannot load (its definition or
    its data), naming it."""
    spec = job.spec
    if not spec.evaluation.tasks:
        return
    if spec.model.task not in (None, "text-generation"):
        check_task(spec, spec.model.task)
    unknown = unknown_tasks(spec.evaluation.tasks)
    if unknown:
        raise InvalidSpec(
            f"lm-eval knows no task {', '.join(unknown)} (evaluation.tasks); see "
            "`lm-eval ls tasks` for the names",
            details={"field": "evaluation.tasks", "unknown": unknown},
        )
    failed = unloadable_tasks(spec.evaluation.tasks)
    if failed:
        raise DatasetError(
            "lm-eval could not load task "
            + "; ".join(f"{name} ({why})" for name, why in failed.items()),
            details={"field": "evaluation.tasks", "tasks": sorted(failed)},
        )


def check_task(spec: JobSpec, task: str) -> None:
    """Downstream tasks are for causal LMs: refuse them for another model, before its weights
    load."""
    if spec.evaluation.tasks and task != "text-generation":
        raise InvalidSpec(
            f"evaluation.tasks runs lm-eval's tasks on causal LMs; {spec.model.id} is a {task} "
            "model (its task metric is on the card)",
            details={"field": "evaluation.tasks"},
        )


def _from_disk(job: Job, folder: Path, tasks: list[str], limit: int | None) -> dict:
    loaded = load_model(str(folder), task="text-generation")
    try:
        return run_tasks(loaded.model, loaded.tokenizer, tasks, limit)
    finally:
        del loaded
        gc.collect()


def measure(job: Job, folder: Path) -> dict | None:
    """The report's ``evaluation.downstream`` for the folder just written; None without tasks."""
    spec = job.inputs.spec.evaluation
    tasks, limit = spec.tasks, spec.task_limit
    if not tasks:
        return None
    t0 = time.perf_counter()
    inputs = job.inputs
    job.stage("writing_card", 0.1, f"lm-eval tasks ({', '.join(tasks)}) on both models")
    if inputs.streamed is None:
        original = run_tasks(inputs.original, inputs.tokenizer, tasks, limit)
        job.stage("writing_card", 0.15, "lm-eval tasks on the compressed model")
        compressed = run_tasks(job.compressed, inputs.tokenizer, tasks, limit)
    else:  # one whole model at a time: the written folder, then the original's
        compressed = _from_disk(job, folder, tasks, limit)
        job.stage("writing_card", 0.15, "lm-eval tasks on the original")
        original = _from_disk(job, Path(inputs.loaded.path), tasks, limit)
    seconds = time.perf_counter() - t0
    return {
        "harness": "lm-eval",
        "harness_version": _lm_eval_version(),
        "tasks": list(tasks),
        "limit": limit,
        "rows": compare_tasks(original, compressed),
        "seconds": round(seconds, 2),
    }


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None
