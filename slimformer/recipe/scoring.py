"""Stage ``scoring``: whole layers first (depth pruning drops them before any width is scored),
then every head, neuron and MLP of what is left."""

from __future__ import annotations

import time

from slimformer.importance import score_depth, score_importance
from slimformer.pruning import PruningTarget, drop_layers, plan_depth
from slimformer.recipe import quantizing
from slimformer.recipe.job import Job
from slimformer.recipe.results import Scores
from slimformer.spec import PruneSpec
from slimformer.streaming.prune import score_layers


def target_of(p: PruneSpec) -> PruningTarget:
    return PruningTarget(
        heads=p.heads,
        ffn=p.ffn,
        whole_mlps=p.whole_mlps,
        macs_budget=p.macs_budget,
        ranking=p.ranking,
        keep_first_layers=p.keep_first_layers,
        keep_last_layers=p.keep_last_layers,
        bias_compensation=p.bias_compensation,
        reconstruction=p.reconstruction,
    )


def removes_only_layers(p: PruneSpec) -> bool:
    return not (p.heads or p.ffn or p.whole_mlps or p.macs_budget)


def prune_depth(job: Job, model, batches: list[dict], p: PruneSpec) -> dict:
    """Score whole layers, drop the ``p.layers`` least important ones (before any width
    pruning)."""
    job.stage("scoring", 0.0, f"scoring whole layers ({p.depth_importance})")
    scores = score_depth(
        model,
        batches,
        method=p.depth_importance,
        should_cancel=job.should_cancel,
        on_progress=lambda f, msg: job.stage("scoring", f, msg),
    )
    removed = plan_depth(
        scores, p.layers, keep_first_layers=p.keep_first_layers, keep_last_layers=p.keep_last_layers
    )
    job.stage("pruning", 0.0, f"dropping layers {removed}")
    drop_layers(model, removed)
    return {
        "removed": removed,
        "of": len(scores),
        "report": {"layers": [float(v) for v in scores], "depth_importance": p.depth_importance},
    }


def score(job: Job, model):
    """Importance of every head, neuron and MLP of ``model`` on the calibration batches."""
    inputs = job.inputs
    return score_importance(
        model,
        inputs.calibration_batches(),
        method=inputs.spec.prune.importance,
        seed=inputs.spec.seed,
        should_cancel=job.should_cancel,
        on_progress=job.progress_of("scoring"),
    )


def run(job: Job) -> Scores:
    t0 = time.perf_counter()
    inputs = job.inputs
    p = inputs.spec.prune
    batches = inputs.calibration_batches()
    scores = Scores(target_of(p), started=t0)
    # a quantized target's group size, chosen (or refused) before any work: kept widths follow it
    scores.target.width_multiple = quantizing.check(job)
    if p.layers:
        scores.depth = prune_depth(job, inputs.model, batches, p)
    job.stage("scoring", 0.0, "scoring heads, neurons and MLPs")
    if inputs.streamed is not None:  # one layer in memory at a time; only the scores are kept
        scores.importance = score_layers(
            inputs.streamed,
            batches,
            on_progress=job.progress_of("scoring"),
            should_cancel=job.should_cancel,
            spill=job.states_folder("scoring"),
        )
        job.timed("scoring", t0)
        job.scores = scores
        return scores
    # the iterative schedule scores again after every step: the pruning stage does it there
    if not (scores.depth is not None and removes_only_layers(p)) and p.schedule != "iterative":
        scores.importance = score(job, inputs.model)
        job.timed("scoring", t0)
    job.scores = scores
    return scores
