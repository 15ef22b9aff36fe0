"""Stage ``distilling``: build the student (the pruned model, a layer-dropped copy of the teacher
or a named model) and distil the original into it.

``held_out_split``, ``student_kind`` and ``distill_recipe`` are shared with the benchmarks.
"""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn

from slimformer.data import TextData, make_batches
from slimformer.loading import load_model
from slimformer.recipe.job import Job
from slimformer.recipe.job_data import calibration_sample
from slimformer.recipe.results import Distilled
from slimformer.spec import DistillSpec, JobSpec

HELD_OUT_ROWS = 500  # at most this many training rows choose the best distillation checkpoint
REPORT_CURVE_POINTS = 200  # keep the report readable: at most ~200 points of the loss curve


def held_out_split(train: TextData) -> tuple[TextData, TextData]:
    """``(training rows, held-out rows)`` of a distillation: the first ``min(500, a tenth)`` rows of
    ``train`` (in the job's seeded order) choose the best checkpoint and are never trained on.

    The evaluation data the card reports is never used for that.
    """
    rows = min(HELD_OUT_ROWS, max(1, len(train) // 10))
    return train.subset(list(range(rows, len(train)))), train.subset(list(range(rows)))


def student_kind(spec: JobSpec) -> str:
    """``pruned`` (prune_distill), ``layer_dropped`` (``{layers}``) or ``named`` (``{id}``)."""
    if spec.method == "prune_distill":
        return "pruned"
    student = spec.distill.student
    return "layer_dropped" if student is not None and student.layers is not None else "named"


def distill_recipe(spec: JobSpec, task: str):
    """The :class:`~slimformer.distill.recipes.ResolvedRecipe` of a job: its student's recipe, then
    the settings the spec gives.
    """
    from slimformer.distill.recipes import resolve_recipe

    d = spec.distill
    return resolve_recipe(
        student_kind(spec),
        task,
        temperature=d.temperature,
        alpha=d.alpha,
        hidden_loss=d.hidden_loss,
        learning_rate=d.learning_rate,
        epochs=d.epochs,
        max_steps=d.max_steps,
        max_minutes=d.max_minutes,
        seed=spec.seed,
    )


def settings_used(d: DistillSpec, recipe: dict) -> DistillSpec:
    """``d`` with the recipe's values filled in, as the report and card record them.

    A hidden-state loss the recipe leaves off stays null (re-running the spec gives the same); one
    the user turned off stays ``"none"``.
    """
    values = dict(recipe["values"])
    if values["hidden_loss"] == "none" and "hidden_loss" in recipe["from_recipe"]:
        values["hidden_loss"] = None
    return d.model_copy(update=values)


def _student(job: Job) -> tuple[nn.Module, list[int] | None]:
    """The student and, for a layer-dropped one, the teacher layers it kept."""
    from slimformer import distill as distillation

    inputs = job.inputs
    spec, teacher, d = inputs.spec, inputs.original, inputs.spec.distill
    if spec.method == "prune_distill":
        return job.pruned.model, None
    if d.student.layers is not None:
        strategy, calibration = d.student.selection_for(inputs.task), None
        if strategy != "even" and inputs.cal_batches is not None:  # causal LMs: packed windows
            calibration = inputs.cal_batches
        elif strategy != "even":
            rows = calibration_sample(inputs.data.train, spec.prune.calibration_samples)
            calibration = make_batches(
                inputs.tokenizer, rows, task=inputs.task, config=teacher.config
            )
        return distillation.make_layer_dropped_student(
            teacher,
            d.student.layers,
            strategy=strategy,
            calibration_batches=calibration,
            should_cancel=job.should_cancel,
        )
    named = load_model(d.student.id, task=inputs.task, token=job.token, policy=job.hub_policy)
    distillation.check_student_compatible(teacher, named.model, inputs.tokenizer, named.tokenizer)
    return named.model, None


def _report(spec: JobSpec, task: str, result, recipe, layer_map) -> dict:
    d = spec.distill
    if d.student and d.student.layers:
        student = {
            "layers": d.student.layers,
            "kept_layers": layer_map,
            "layer_selection": d.student.selection_for(task),
        }
    else:
        student = {"id": d.student.id} if d.student else {"pruned": True}
    history = result.history
    stride = max(1, len(history) // REPORT_CURVE_POINTS)
    return {
        "student": student,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "stopped_because": result.stopped_because,
        "metric": result.metric_name,
        "best_metric": result.best_metric,
        "best_step": result.best_step,
        "teacher_metric": result.teacher_metric,
        "resumed_from_step": result.resumed_from_step,
        "metric_higher_is_better": result.higher_is_better,
        "recipe": recipe.to_dict(),
        "plan": result.plan,
        "evaluations": result.evaluations(),
        "history": history[::stride],
        "health": result.health,
    }


def run(job: Job) -> Distilled:
    from slimformer import distill as distillation

    t0 = time.perf_counter()
    inputs = job.inputs
    spec = inputs.spec
    job.on_progress("distilling", 0.0, "preparing the student")
    student, layer_map = _student(job)
    recipe = distill_recipe(spec, inputs.task)
    train, dev = held_out_split(inputs.data.train)
    result = distillation.distill(
        inputs.original,
        student,
        inputs.tokenizer,
        train,
        dev,
        recipe.config,
        task=inputs.task,
        layer_map=layer_map,
        checkpoint_dir=Path(job.workdir) / "checkpoints",
        on_progress=job.on_progress,
        should_cancel=job.should_cancel,
    )
    report = _report(spec, inputs.task, result, recipe, layer_map)
    job.distilled = Distilled(result.student, report, settings_used(spec.distill, report["recipe"]))
    job.timed("distilling", t0)
    return job.distilled
