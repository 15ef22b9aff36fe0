"""Stage ``pruning``: plan which units go, measure what the refit needs, remove them."""

from __future__ import annotations

import time

from slimformer.evaluation import task_metric
from slimformer.importance import input_grams
from slimformer.importance.depth import attention_influence
from slimformer.pruning import (
    STOCK_LAYOUT,
    PruneResult,
    PruningPlan,
    PruningRecord,
    apply_layout,
    iterative_prune,
    layout_for,
    one_shot_prune,
    plan_pruning,
    refit_keys,
)
from slimformer.recipe import scoring
from slimformer.recipe.inputs import MAX_LENGTH
from slimformer.recipe.job import Job
from slimformer.recipe.results import Pruned
from slimformer.streaming.model import footprint
from slimformer.streaming.prune import SideBySide, prune_layers

STAGING = "staged-layers"  # the work folder's pruned layers, one file each, until written


def _one_shot(job: Job) -> PruneResult:
    inputs, scores = job.inputs, job.scores
    p, model, batches = inputs.spec.prune, inputs.model, inputs.calibration_batches()
    job.stage("pruning", 0.0, "removing units")
    attention_scores = None
    if layout_for(p.layout).removes_attention_blocks and (p.heads or p.macs_budget):
        job.stage("pruning", 0.0, "measuring each attention block's influence")
        attention_scores = attention_influence(model, batches, should_cancel=job.should_cancel)
    plan = plan_pruning(
        model,
        scores.importance,
        scores.target,
        layout=p.layout,
        seq_len=MAX_LENGTH,
        attention_scores=attention_scores,
    )
    wants_refit = scores.target.wants_reconstruction(scores.importance.method)
    if wants_refit and plan.grams is None and not plan.is_empty():
        job.stage("pruning", 0.0, "measuring the pruned layers' inputs for reconstruction")
        plan.grams = input_grams(model, batches, refit_keys(plan), should_cancel=job.should_cancel)
    return one_shot_prune(model, scores.importance, plan, layout=p.layout)


def _iterative(job: Job) -> PruneResult:
    inputs = job.inputs
    p = inputs.spec.prune
    return iterative_prune(
        inputs.model,
        lambda m: scoring.score(job, m),
        lambda m: task_metric(m, inputs.eval_batches, inputs.reference)[1],
        job.scores.target,
        step=p.step,
        metric_floor=p.metric_floor,
        layout=p.layout,
        on_step=lambda point: job.stage(
            "pruning",
            min(1.0, point["heads_removed"] / max(p.heads, 1e-9)),
            f"metric {point['metric']:.4f} at {point['heads_removed']:.0%} heads",
        ),
    )


def _importance_report(job: Job, result: PruneResult) -> dict | None:
    depth, p = job.scores.depth, job.inputs.spec.prune
    report = result.importance[0].to_dict() if result.importance else None
    if depth is None:
        return report
    empty = {
        "method": p.importance,
        "loss": "",
        "batches": 0,
        "seconds": 0.0,
        "heads": [],
        "mlps": [],
    }
    return (report or empty) | depth["report"]


def _layer_by_layer(job: Job) -> tuple[PruneResult, SideBySide]:
    """Plan from every layer's scores, then prune, refit, measure and stage one layer at a time
    (the folder is written from the staged layers by the writing stage)."""
    inputs, scores = job.inputs, job.scores
    p, sm = inputs.spec.prune, inputs.streamed
    job.stage("pruning", 0.0, "removing units, one layer at a time")
    plan = plan_pruning(sm.model, scores.importance, scores.target, layout=p.layout)
    record = PruningRecord.start(sm.adapter)
    before = footprint(sm.model, MAX_LENGTH)
    side = prune_layers(
        sm,
        plan,
        inputs.calibration_batches(),
        inputs.eval_batches,
        job.workdir / STAGING,
        reconstruct=scores.target.wants_reconstruction(scores.importance.method),
        on_progress=job.progress_of("pruning"),
        should_cancel=job.should_cancel,
        spill=job.states_folder("pruning"),
    )
    record.apply(plan, sm.adapter)
    apply_layout(sm.model, p.layout)
    side.original_footprint, side.compressed_footprint = before, footprint(sm.model, MAX_LENGTH)
    if scores.target.wants_reconstruction(scores.importance.method):
        plan.grams = {}  # measured layer by layer, then dropped: the record says it refitted
    result = PruneResult(model=sm.model, record=record, importance=[scores.importance], plan=plan)
    return result, side


def run(job: Job) -> Pruned:
    inputs, scores = job.inputs, job.scores
    p = inputs.spec.prune
    side = None
    if inputs.streamed is not None:
        result, side = _layer_by_layer(job)
    elif scores.depth is not None and scoring.removes_only_layers(p):
        result = one_shot_prune(inputs.model, None, PruningPlan(), layout=STOCK_LAYOUT)
    elif p.schedule == "iterative":
        result = _iterative(job)
    else:
        result = _one_shot(job)
    if scores.depth is not None:
        result.record.removed_layers = scores.depth["removed"]
        result.record.original_layers = scores.depth["of"]
    record = result.record.to_dict()
    record["reconstruction"] = (
        result.plan.grams is not None
        if result.plan is not None
        else p.schedule == "iterative" and scores.target.wants_reconstruction(p.importance)
    )
    for held in (result.plan, *result.importance):  # the Gram matrices are not needed now
        if held is not None:
            held.grams = None
    job.pruned = Pruned(result.model, record, _importance_report(job, result), side)
    job.timings["pruning"] = time.perf_counter() - scores.started - job.timings.get("scoring", 0.0)
    job.stage("pruning", 1.0, "pruned")
    return job.pruned
