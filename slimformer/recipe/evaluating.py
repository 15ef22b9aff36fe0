"""Stage ``evaluating``: the original and the compressed model, side by side, on the same
batches. Layer by layer, both were measured while the layers were pruned (two sets of hidden
states, never two models); this stage puts those numbers in the same report."""

from __future__ import annotations

import math
import time

import torch

from slimformer.evaluation import evaluate_side_by_side
from slimformer.evaluation.side_by_side import side_by_side_report
from slimformer.models import count_embedding_parameters
from slimformer.recipe.inputs import MAX_LENGTH
from slimformer.recipe.job import Job
from slimformer.streaming.model import HeadStats


def _metrics(stats: HeadStats) -> dict:
    tokens = max(1, stats.tokens)
    perplexity = math.exp(stats.nll_sum / tokens)
    return {
        "perplexity": perplexity if math.isfinite(perplexity) else None,
        "next_token_accuracy": stats.hits / tokens,
    }


def _measured_layer_by_layer(job: Job) -> dict:
    """The report :func:`evaluate_side_by_side` gives a causal LM, from the streamed measurement
    (latency is not measured: neither model is ever whole in memory)."""
    inputs, side = job.inputs, job.pruned.side_by_side
    sides = {
        "original": {"metrics": _metrics(side.original), **side.original_footprint},
        "compressed": {"metrics": _metrics(side.compressed), **side.compressed_footprint},
    }
    # pruning leaves the embeddings and the head (resident in the skeleton) as they were
    embedding = count_embedding_parameters(inputs.streamed.model)
    for column in sides.values():
        column["embedding_parameters"] = embedding
        column["latency"] = None
    rows = sum(len(b["input_ids"]) for b in inputs.eval_batches)
    return side_by_side_report(
        inputs.task,
        "perplexity",
        sides,
        side.agreement,
        rows,
        MAX_LENGTH,
        torch.device("cpu"),
        torch.get_num_threads(),
        inputs.protocol,
    )


def run(job: Job) -> dict:
    t0 = time.perf_counter()
    inputs = job.inputs
    job.stage("evaluating", 0.0, "measuring the original and the compressed model")
    if inputs.streamed is not None:
        job.evaluation = _measured_layer_by_layer(job)
        job.on_progress("evaluating", 1.0, "evaluation done")
    else:
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
