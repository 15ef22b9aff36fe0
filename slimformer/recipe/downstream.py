"""Downstream tasks (``evaluation.tasks``): lm-eval's tasks on the original and the compressed
causal LM, the same items for both, in the job's process.

Task names are checked before any work; the tasks run with the other whole-model measurements
(:mod:`slimformer.recipe.whole_models`: layer by layer, the written folder and then the original
are loaded one at a time, after the folder is written).
"""

from __future__ import annotations

from slimformer.errors import DatasetError, InvalidSpec
from slimformer.evaluation.downstream import (
    compare_tasks,
    hub_access,
    unknown_tasks,
    unloadable_tasks,
)
from slimformer.recipe.job import Job
from slimformer.spec import JobSpec

TASK_DATA = "lm-eval-data"  # the job's own datasets cache for task data, in its work folder


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
    with data_access(job):
        failed = unloadable_tasks(spec.evaluation.tasks)
    if failed:
        raise DatasetError(
            "lm-eval could not load task "
            + "; ".join(f"{name} ({why})" for name, why in failed.items()),
            details={"field": "evaluation.tasks", "tasks": sorted(failed)},
        )


def unavailable_defaults(job: Job, tasks: list[str]) -> dict[str, str]:
    """``{task: why}`` for the default tasks (asked for by no one) that lm-eval does not know or
    cannot load: they are left out, and the card says why, instead of failing the job."""
    if not tasks:
        return {}
    unknown = {name: "lm-eval knows no such task" for name in unknown_tasks(tasks)}
    with data_access(job):
        failed = unloadable_tasks([name for name in tasks if name not in unknown])
    return unknown | failed


def data_access(job: Job):
    """The context lm-eval reads its task data in: the job's token (on a worker that has no login
    of its own for jobs, none without it) and a datasets cache of the job's own
    (:func:`~slimformer.evaluation.downstream.hub_access`)."""
    policy = job.hub_policy
    token = policy.request_token(job.token) if policy is not None else job.token
    return hub_access(token, job.workdir / TASK_DATA)


def check_task(spec: JobSpec, task: str) -> None:
    """Downstream tasks are for causal LMs: refuse them for another model, before its weights
    load."""
    if spec.evaluation.tasks and task != "text-generation":
        raise InvalidSpec(
            f"evaluation.tasks runs lm-eval's tasks on causal LMs; {spec.model.id} is a {task} "
            "model (its task metric is on the card)",
            details={"field": "evaluation.tasks"},
        )


def record(
    tasks: list[str],
    limit: int | None,
    original: dict,
    compressed: dict,
    seconds: float,
    *,
    default: bool = False,
    not_run: dict[str, str] | None = None,
) -> dict:
    """The report's ``evaluation.downstream`` from both models' lm-eval results (run by
    :mod:`slimformer.recipe.whole_models`, which loads each model once for all it measures);
    ``default``: the tasks are the default set; ``not_run``: default tasks left out, and why."""
    return {
        "harness": "lm-eval",
        "harness_version": _lm_eval_version(),
        "tasks": list(tasks),
        "limit": limit,
        "default": default,
        "not_run": dict(not_run or {}),
        "rows": compare_tasks(original, compressed),
        "seconds": round(seconds, 2),
    }


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None
