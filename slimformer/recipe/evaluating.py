"""Stage ``evaluating``: the original and the compressed model, side by side, on the same
batches."""

from __future__ import annotations

import time

from slimformer.evaluation import evaluate_side_by_side
from slimformer.recipe.inputs import MAX_LENGTH
from slimformer.recipe.job import Job


def run(job: Job) -> dict:
    t0 = time.perf_counter()
    inputs = job.inputs
    job.stage("evaluating", 0.0, "measuring the original and the compressed model")
    job.evaluation = evaluate_side_by_side(
        inputs.original,
        job.compressed,
        inputs.eval_batches,
        seq_len=MAX_LENGTH,
        latency=inputs.spec.evaluation.latency,
        **inputs.pair_kwargs,
        on_progress=lambda s, f, m: job.on_progress("evaluating", f, m),
        should_cancel=job.should_cancel,
        protocol=inputs.protocol,
    )
    job.timed("evaluating", t0)
    return job.evaluation
