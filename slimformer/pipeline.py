"""Recipes that wire the components together: load -> score -> prune -> measure -> write.

Each recipe reports progress through ``on_progress(stage, fraction, message)`` and checks
``should_cancel()`` between steps, so the command line and the workers drive it the same way.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from slimformer import __version__
from slimformer.artifacts import atomic_folder, save_model_folder
from slimformer.data import load_text_file, make_batches
from slimformer.errors import Cancelled, DatasetError, InvalidSpec
from slimformer.evaluation import count_macs, count_parameters, predict, task_metric
from slimformer.export import export_onnx
from slimformer.hub import load_model
from slimformer.importance import score_importance
from slimformer.pruning import (
    PruningTarget,
    iterative_prune,
    one_shot_prune,
    plan_pruning,
    predicted_parameters,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, str], None]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class PruneRequest:
    """A local pruning run (the ``slimformer prune`` command)."""

    model: str
    data: str
    out: str
    target: PruningTarget = field(default_factory=PruningTarget)
    eval_data: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    task: str | None = None
    layout: str = "per_layer"
    schedule: str = "one_shot"
    step: float = 0.1
    metric_floor: float = 0.9
    importance: str = "michel"
    calibration_samples: int = 512
    eval_samples: int | None = None
    batch_size: int = 32
    max_length: int = 128
    onnx: bool = False
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        self.target.validate()
        if self.layout not in ("per_layer", "uniform"):
            raise InvalidSpec(f"layout must be per_layer or uniform, got {self.layout!r}")
        if self.schedule not in ("one_shot", "iterative"):
            raise InvalidSpec(f"schedule must be one_shot or iterative, got {self.schedule!r}")
        if self.importance not in ("michel", "magnitude", "random"):
            raise InvalidSpec(f"importance must be michel, magnitude or random, got {self.importance!r}")
        if not 0 < self.metric_floor <= 1:
            raise InvalidSpec(f"metric_floor must be in (0, 1], got {self.metric_floor}")
        if self.calibration_samples < 1 or self.batch_size < 1 or self.max_length < 8:
            raise InvalidSpec("calibration_samples and batch_size must be positive and max_length at least 8")
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise InvalidSpec(f"output folder {out} already exists and is not empty; choose another or remove it")


def _noop(stage: str, fraction: float, message: str) -> None:
    pass


def prune_local(
    request: PruneRequest,
    *,
    on_progress: ProgressFn = _noop,
    should_cancel: Callable[[], bool] = lambda: False,
) -> dict:
    """Prune a local or Hub model on a local data file and write a folder that reloads.

    Returns the report that is also written as ``pruning_report.json`` in the folder.
    """
    request.validate()
    set_seed(request.seed)
    started = time.perf_counter()

    def check() -> None:
        if should_cancel():
            raise Cancelled("the run was cancelled")

    on_progress("loading", 0.0, f"loading {request.model}")
    loaded = load_model(request.model, task=request.task)
    model, tokenizer, task = loaded.model, loaded.tokenizer, loaded.task
    use_labels = task == "text-classification"
    data = load_text_file(
        request.data, text_column=request.text_column, text_pair_column=request.text_pair_column,
        label_column=request.label_column, labels=use_labels,
    )
    order = list(range(len(data)))
    random.Random(request.seed).shuffle(order)
    calibration = data.subset(order[: request.calibration_samples])
    if request.eval_data:
        evaluation = load_text_file(
            request.eval_data, text_column=request.text_column or data.text_column,
            text_pair_column=request.text_pair_column or data.text_pair_column,
            label_column=request.label_column or data.label_column, labels=use_labels,
        ).head(request.eval_samples)
    else:
        evaluation = calibration
    if request.importance == "michel" and request.target.heads + request.target.ffn == 0 and not (
        request.target.whole_mlps or request.target.macs_budget or request.target.params_budget
    ):
        raise InvalidSpec("nothing to prune: give heads, ffn, whole_mlps or a budget")
    batch_kwargs = dict(task=task, config=model.config, batch_size=request.batch_size, max_length=request.max_length)
    cal_batches = make_batches(tokenizer, calibration, **batch_kwargs)
    eval_batches = make_batches(tokenizer, evaluation, **batch_kwargs)
    check()

    on_progress("evaluating", 0.0, "measuring the original model")
    reference = predict(model, eval_batches) if task != "text-generation" else None
    metric_name, original_metric = task_metric(model, eval_batches, reference)
    original = {
        "parameters": count_parameters(model),
        "macs": count_macs(model, request.max_length),
        metric_name: original_metric,
    }
    check()

    def score(m):
        check()
        return score_importance(
            m, cal_batches, method=request.importance, seed=request.seed,
            on_progress=lambda f, msg: on_progress("scoring", f, msg), should_cancel=should_cancel,
        )

    on_progress("scoring", 0.0, "scoring heads and neurons")
    if request.schedule == "iterative":
        result = iterative_prune(
            model, score, lambda m: task_metric(m, eval_batches, reference)[1], request.target,
            step=request.step, metric_floor=request.metric_floor, layout=request.layout,
            on_step=lambda p: on_progress("pruning", p["heads_removed"], f"{metric_name} {p['metric']:.4f}"),
        )
        predicted = None
    else:
        importance = score(model)
        on_progress("pruning", 0.0, "removing units")
        plan = plan_pruning(model, importance, request.target, layout=request.layout, seq_len=request.max_length)
        predicted = predicted_parameters(model, plan)
        result = one_shot_prune(model, importance, plan, layout=request.layout)
    pruned = result.model
    check()

    on_progress("evaluating", 0.5, "measuring the pruned model")
    _, pruned_metric = task_metric(pruned, eval_batches, reference)
    after = {
        "parameters": count_parameters(pruned),
        "macs": count_macs(pruned, request.max_length),
        metric_name: pruned_metric,
    }
    if predicted is not None and predicted != after["parameters"]:
        raise RuntimeError(f"pruning left {after['parameters']} parameters, the plan predicted {predicted}")
    report = {
        "slimformer_version": __version__,
        "model": request.model,
        "task": task,
        "request": {k: v for k, v in asdict(request).items() if k not in ("out", "overwrite")},
        "data": {
            "file": data.source, "rows": len(data), "calibration_rows": len(calibration),
            "evaluation": evaluation.source, "evaluation_rows": len(evaluation),
            "text_column": data.text_column, "text_pair_column": data.text_pair_column,
            "label_column": data.label_column if use_labels else None,
        },
        "original": original,
        "pruned": after,
        "metric": metric_name,
        "pruning": result.record.to_dict(),
        "importance": [imp.to_dict() for imp in result.importance],
        "seconds": 0.0,
    }
    on_progress("writing", 0.0, f"writing {request.out}")
    with atomic_folder(request.out, overwrite=request.overwrite) as folder:
        save_model_folder(pruned, tokenizer, folder)
        if request.onnx:
            check()
            report["onnx"] = export_onnx(pruned, eval_batches[0], folder / "model.onnx")
            report["onnx"]["path"] = "model.onnx"
        report["seconds"] = round(time.perf_counter() - started, 2)
        (folder / "pruning_report.json").write_text(json.dumps(report, indent=2) + "\n")
    on_progress("done", 1.0, "done")
    if use_labels and evaluation.labels is None:
        logger.warning("the evaluation data has no labels: the metric is agreement with the original model")
    return report


__all__ = ["PruneRequest", "prune_local", "set_seed", "DatasetError"]
