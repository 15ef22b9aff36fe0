"""Downstream tasks of EleutherAI's lm-evaluation-harness (``lm-eval``), run on a causal LM that is
already in memory: lm-eval's own HF model wrapper (``HFLM``) around the model, lm-eval's own task
definitions and metrics (no harness of ours).

Task names are those of lm-eval's registry, plus the task folders (lm-eval's YAML task format) named
in ``SLIMFORMER_TASK_PATHS`` (folders separated by ``os.pathsep``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

TASK_PATHS_ENV = "SLIMFORMER_TASK_PATHS"
BATCH_SIZE = 8  # lm-eval requests per forward
# lm-eval's default is 100000 resamples for the stderr of metrics without a closed form
# (perplexity, F1): seconds each; 1000 give the stderr to two digits
BOOTSTRAP_ITERS = 1000

logger = logging.getLogger(__name__)


_HUB_ACCESS = threading.Lock()  # the settings hub_access changes are the process's own


@contextmanager
def hub_access(token: str | bool | None, cache_dir: str | os.PathLike) -> Iterator[None]:
    """While lm-eval reads its tasks' data: the Hub sees ``token`` (a string: the job's; False:
    none, not even the machine's own login; None: the machine's login), and ``datasets`` caches
    into ``cache_dir`` (the job's own, so no job reads what another's token fetched).

    lm-eval calls ``datasets.load_dataset`` with neither a token nor a cache of ours, and
    ``datasets`` asks huggingface_hub for the token (``HF_TOKEN``, then the token file) and its
    own settings for the cache at call time: those are what is set here, one job at a time.
    """
    import datasets
    from huggingface_hub import constants

    cache = Path(cache_dir)
    names = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    with _HUB_ACCESS:
        saved_env = {name: os.environ.get(name) for name in names}
        saved_path = constants.HF_TOKEN_PATH
        config = datasets.config
        caches = ("HF_DATASETS_CACHE", "DOWNLOADED_DATASETS_PATH", "EXTRACTED_DATASETS_PATH")
        saved_caches = {name: getattr(config, name) for name in caches}
        try:
            if token is not None:
                for name in names:
                    os.environ.pop(name, None)
                constants.HF_TOKEN_PATH = str(cache / "no-token-file")
                if isinstance(token, str):
                    os.environ["HF_TOKEN"] = token
            config.HF_DATASETS_CACHE = cache
            config.DOWNLOADED_DATASETS_PATH = cache / config.DOWNLOADED_DATASETS_DIR
            config.EXTRACTED_DATASETS_PATH = (
                config.DOWNLOADED_DATASETS_PATH / config.EXTRACTED_DATASETS_DIR
            )
            yield
        finally:
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            constants.HF_TOKEN_PATH = saved_path
            for name, value in saved_caches.items():
                setattr(config, name, value)


def task_paths() -> tuple[str, ...]:
    """The local task folders named in ``SLIMFORMER_TASK_PATHS``."""
    return tuple(p for p in os.environ.get(TASK_PATHS_ENV, "").split(os.pathsep) if p)


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    # indexing lm-eval's registry reads every task's YAML: seconds, once per process
    return TaskManager(include_path=list(paths) or None)


def task_manager():
    """lm-eval's task index with the local task folders included (built once per process)."""
    return _task_manager(task_paths())


def unknown_tasks(names: list[str]) -> list[str]:
    """The names lm-eval's task index (with the local folders) does not know."""
    known = task_manager().all_tasks
    return [name for name in names if name not in known]


def unloadable_tasks(names: list[str]) -> dict[str, str]:
    """``{task: why}`` for the tasks whose definition or data lm-eval cannot load (their data is
    downloaded into the datasets cache here, so the runs that follow read it from there)."""
    from lm_eval.tasks import get_task_dict

    failed = {}
    for name in names:
        try:
            get_task_dict([name], task_manager())
        except Exception as err:  # lm-eval and datasets raise many kinds: each is the task's
            failed[name] = (
                f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            )
    return failed


def run_tasks(
    model: nn.Module, tokenizer: Any, tasks: list[str], limit: int | None = None
) -> dict[str, dict]:
    """lm-eval's results for ``tasks`` on ``model`` (the first ``limit`` items of each): per task,
    lm-eval's result entry (``"acc,none"``, ``"acc_stderr,none"``, ...) and ``items``, the number
    of items scored."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH_SIZE)
        out = simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=task_manager(),
            limit=limit,
            bootstrap_iters=BOOTSTRAP_ITERS,
            log_samples=False,
        )
    finally:
        model.train(was_training)
    samples = out.get("n-samples", {})
    results = {}
    for name in tasks:
        entry = dict(out["results"].get(name, {}))
        entry["items"] = (samples.get(name) or {}).get("effective")
        entry["higher_is_better"] = out.get("higher_is_better", {}).get(name, {})
        results[name] = entry
    return results


def _metrics(entry: dict) -> dict[str, tuple[float, float | None]]:
    """``{metric: (value, stderr)}`` of one lm-eval result entry (the default filter's)."""
    metrics = {}
    for key, value in entry.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, int | float):
            continue
        stderr = entry.get(f"{metric}_stderr,{filt}")
        metrics[metric if filt == "none" else f"{metric},{filt}"] = (
            float(value),
            float(stderr) if isinstance(stderr, int | float) else None,
        )
    return metrics


def _is_fraction(metric: str, *values: float) -> bool:
    """Metrics that are shares (accuracies, exact match, F1): changes are given in points."""
    return "perplexity" not in metric and all(0.0 <= v <= 1.0 for v in values)


def compare_tasks(original: dict[str, dict], compressed: dict[str, dict]) -> list[dict]:
    """One row per task and metric: both values, the change (in points for shares), both
    stderrs, as the report's ``evaluation.downstream.rows`` holds them."""
    rows = []
    for task, entry in original.items():
        mine = _metrics(compressed.get(task, {}))
        better = entry.get("higher_is_better") or {}
        for metric, (value, stderr) in _metrics(entry).items():
            if metric not in mine:
                continue
            new, new_stderr = mine[metric]
            change = new - value
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "items": entry.get("items"),
                    "original": value,
                    "compressed": new,
                    "change": change,
                    "change_points": 100 * change if _is_fraction(metric, value, new) else None,
                    "original_stderr": stderr,
                    "compressed_stderr": new_stderr,
                    "higher_is_better": better.get(metric.split(",")[0]),
                }
            )
    return rows
