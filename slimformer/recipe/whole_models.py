"""What needs a whole model, after the folder is written: greedy generations to read (causal
LMs), lm-eval's downstream tasks (``evaluation.tasks``) and, layer by layer, latency.

In memory both models are loaded already (their latency was measured by the evaluating stage).
Layer by layer neither ever was: the written folder, then the original, are loaded whole, one at
a time, in the checkpoint's dtype. Downstream tasks were asked for by name, so the job's memory
estimate counts that load and the job was refused before work if it could not hold it. Latency
and generations are measured by default, so they run only where one whole model fits in the room
left at that moment; otherwise the report's ``execution.whole_model`` says what it would have
needed, and the card says they were not measured.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from slimformer.evaluation.downstream import run_tasks
from slimformer.evaluation.lm import greedy_continuations
from slimformer.evaluation.side_by_side import model_latency, with_latency
from slimformer.loading import load_model
from slimformer.memory import room_now, whole_model_bytes
from slimformer.recipe import downstream
from slimformer.recipe.inputs import MAX_LENGTH
from slimformer.recipe.job import Job
from slimformer.spec.evaluation import DEFAULT_PROMPTS, PROMPT_TOKENS

LATENCY_BATCH = 32  # the throughput's batch (slimformer.evaluation.side_by_side.model_latency)


@dataclass
class _Plan:
    """What each model is asked, in the order it is asked."""

    latency: bool
    prompts: list[list[int]]
    new_tokens: int
    tasks: list[str]
    task_limit: int | None
    task_data: Callable  # the context lm-eval reads task data in (downstream.data_access)
    results: dict = field(default_factory=lambda: {"original": {}, "compressed": {}})

    def __bool__(self) -> bool:
        return self.latency or bool(self.prompts and self.new_tokens) or bool(self.tasks)


def prompt_ids(job: Job) -> list[list[int]]:
    """The generation prompts as token ids: ``evaluation.prompts``, else the first
    :data:`PROMPT_TOKENS` tokens of the first, the middle and the last evaluation window."""
    inputs = job.inputs
    given = inputs.spec.evaluation.prompts
    if given:
        return [inputs.tokenizer(p, add_special_tokens=False)["input_ids"] for p in given]
    windows = inputs.lm_windows or []
    if not windows:
        return []
    picks = sorted({0, len(windows) // 2, len(windows) - 1})[:DEFAULT_PROMPTS]
    return [windows[i][:PROMPT_TOKENS] for i in picks]


def _plan(job: Job) -> _Plan:
    inputs, spec = job.inputs, job.inputs.spec.evaluation
    causal = inputs.task == "text-generation"
    return _Plan(
        latency=spec.latency and inputs.streamed is not None,
        prompts=prompt_ids(job) if causal and spec.new_tokens else [],
        new_tokens=spec.new_tokens,
        tasks=list(spec.tasks) if causal else [],
        task_limit=spec.task_limit,
        task_data=lambda: downstream.data_access(job),
    )


def _ask(plan: _Plan, name: str, model: nn.Module, tokenizer, on_step: Callable) -> None:
    """Everything ``plan`` asks of one model, into ``plan.results[name]``."""
    out = plan.results[name]
    if plan.prompts and plan.new_tokens:
        on_step(f"greedy generations of the {name} model")
        out["generations"] = greedy_continuations(model, plan.prompts, plan.new_tokens)
    if plan.latency:
        on_step(f"latency of the {name} model")
        out["latency"] = model_latency(model, MAX_LENGTH)
    if plan.tasks:
        on_step(f"lm-eval tasks ({', '.join(plan.tasks)}) on the {name} model")
        with plan.task_data():
            out["tasks"] = run_tasks(model, tokenizer, plan.tasks, plan.task_limit)


def _room_for_whole_models(job: Job, plan: _Plan) -> dict:
    """Layer by layer: what one whole model needs for latency (a batch of 32 sequences) and for
    generations alone (one sequence); which of them run, and why the others do not.

    One runs where its estimated peak, the runtime and one whole model, stays within the job's own
    estimate (the layer's work and the resident embeddings it replaces are given back by then),
    so the whole-model measurements never take a job past what it announced, whatever the process
    held before the job (a worker runs many), and where the memory left now holds it.
    """
    estimate = job.execution.estimate if job.execution else None
    room, latency_need, generation_need = room_now(), None, None
    if estimate is not None:
        shape, dtype_bytes = estimate.shape, estimate.job["dtype_bytes"]
        latency_need = whole_model_bytes(shape, dtype_bytes, LATENCY_BATCH * MAX_LENGTH)
        generation_need = whole_model_bytes(shape, dtype_bytes, MAX_LENGTH)
        budget = estimate.total_bytes - estimate.breakdown["runtime"]
        room = budget if room is None else min(room, budget)

    def fits(need: int | None) -> bool:
        return need is None or room is None or need <= room

    latency = plan.latency and fits(latency_need)
    generations = bool(plan.prompts) and fits(generation_need)
    skipped = [
        (what, need)
        for what, asked, done, need in (
            ("latency", plan.latency, latency, latency_need),
            ("generations", bool(plan.prompts), generations, generation_need),
        )
        if asked and not done
    ]
    why = "; ".join(
        f"{what} would need about {need / 2**30:.2f} GiB for one whole model and "
        f"{max(0, room) / 2**30:.2f} GiB are left of the job's estimate and the memory available"
        for what, need in skipped
    )
    return {
        "loaded": latency or generations,
        "latency": latency,
        "generations": generations,
        "needed_bytes": latency_need,
        "generation_needed_bytes": generation_need,
        "room_bytes": None if room is None else max(0, room),
        "why_not": why or None,
        "peak_before_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _from_disk(plan: _Plan, name: str, folder: Path, on_step: Callable) -> None:
    loaded = load_model(str(folder), task="text-generation")
    try:
        _ask(plan, name, loaded.model, loaded.tokenizer, on_step)
    finally:
        del loaded
        gc.collect()


def measure(job: Job, folder: Path) -> None:
    """Generations, downstream tasks and (layer by layer) latency of both models, into
    ``job.evaluation`` (and ``job.execution.extra["whole_model"]`` layer by layer)."""
    plan = _plan(job)
    if not plan:
        return
    inputs = job.inputs
    t0 = time.perf_counter()

    def on_step(message: str) -> None:
        job.check()
        job.stage("writing_card", 0.1, message)

    if inputs.streamed is None:
        _ask(plan, "original", inputs.original, inputs.tokenizer, on_step)
        _ask(plan, "compressed", job.compressed, inputs.tokenizer, on_step)
    else:
        inputs.streamed.free_resident()  # the folder is written: the stream is over
        gc.collect()
        room = _room_for_whole_models(job, plan)
        job.execution.extra["whole_model"] = room
        # tasks were asked by name: the estimate made room for them
        plan.latency = room["latency"]
        plan.prompts = plan.prompts if room["generations"] else []
        if plan:
            _from_disk(plan, "compressed", folder, on_step)
            _from_disk(plan, "original", Path(inputs.loaded.path), on_step)
    _report(job, plan, time.perf_counter() - t0)


def _report(job: Job, plan: _Plan, seconds: float) -> None:
    original, compressed = plan.results["original"], plan.results["compressed"]
    evaluation, tokenizer = job.evaluation, job.inputs.tokenizer
    if "latency" in original:
        with_latency(evaluation, original["latency"], compressed["latency"])
    if "generations" in original:
        texts = job.inputs.spec.evaluation.prompts or None  # given: shown as written
        evaluation["generations"] = generations_record(
            tokenizer, plan.prompts, original["generations"], compressed["generations"], texts
        ) | {"new_tokens": plan.new_tokens}
    if "tasks" in original:
        evaluation["downstream"] = downstream.record(
            plan.tasks, plan.task_limit, original["tasks"], compressed["tasks"], seconds
        )


def generations_record(
    tokenizer, prompts: list[list[int]], original: list, compressed: list, texts: list | None
) -> dict:
    """The report's ``evaluation.generations``: each prompt (as given in ``texts``, else decoded)
    and both continuations as text, and how many leading tokens the compressed model's
    continuation shares with the original's."""
    items, source = [], "given" if texts else "evaluation_text"
    texts = texts or [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    for text, ids_o, ids_c in zip(texts, original, compressed, strict=True):
        shared = 0
        for a, b in zip(ids_o, ids_c, strict=False):
            if a != b:
                break
            shared += 1
        items.append(
            {
                "prompt": text,
                "original": tokenizer.decode(ids_o, skip_special_tokens=True),
                "compressed": tokenizer.decode(ids_c, skip_special_tokens=True),
                "same_leading_tokens": shared,
                "original_tokens": len(ids_o),
            }
        )
    return {"source": source, "decoding": "greedy", "items": items}
