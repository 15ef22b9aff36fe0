"""What needs a whole model, after the folder is written: greedy generations to read (causal
LMs), lm-eval's downstream tasks (``evaluation.tasks``) and, layer by layer, latency.

In memory both models are loaded already (their latency was measured by the evaluating stage).
Layer by layer neither ever was: the written folder, then the original, are loaded whole, one at
a time, in the checkpoint's dtype. Downstream tasks named in the spec were asked for, so the
job's memory estimate counts that load and the job was refused before work if it could not hold
it. Latency, generations and the default downstream tasks are measured by default, so they run
only where one whole model fits in the room left at that moment; otherwise the report's
``execution.whole_model`` says what it would have needed, and the card says they were not
measured. A default task whose data cannot be loaded is left out the same way, saying why.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from slimformer.errors import Cancelled
from slimformer.evaluation.downstream import BATCH_SIZE as TASK_BATCH
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
# tokens of one lm-eval request held for room: a multiple-choice item's context and answer (the
# default tasks' longest, HellaSwag's, are under 200 tokens)
TASK_REQUEST_TOKENS = 256
TASK_TOKENS = TASK_BATCH * TASK_REQUEST_TOKENS  # one batch of lm-eval requests


def _task_logits_bytes(vocab: int) -> int:
    """lm-eval's float32 log-probabilities at every position of one batch of requests."""
    return 4 * vocab * TASK_TOKENS


@dataclass
class _Plan:
    """What each model is asked, in the order it is asked."""

    latency: bool
    prompts: list[list[int]]
    new_tokens: int
    tasks: list[str]
    task_limit: int | None
    task_data: Callable  # the context lm-eval reads task data in (downstream.data_access)
    default_tasks: bool = False  # the default set: left out (not failed) where they cannot run
    not_run: dict = field(default_factory=dict)  # default tasks left out: {task: why}
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
    tasks, task_limit, default_tasks = spec.downstream(causal)
    return _Plan(
        latency=spec.latency and inputs.streamed is not None,
        prompts=prompt_ids(job) if causal and spec.new_tokens else [],
        new_tokens=spec.new_tokens,
        tasks=tasks,
        task_limit=task_limit,
        task_data=lambda: downstream.data_access(job),
        default_tasks=default_tasks,
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
            try:
                out["tasks"] = run_tasks(model, tokenizer, plan.tasks, plan.task_limit)
            except Exception as err:  # lm-eval raises many kinds; a default set never fails a job
                if not plan.default_tasks or isinstance(err, Cancelled):
                    raise
                why = f"lm-eval failed on the {name} model: {type(err).__name__}: {err}"[:400]
                plan.not_run |= dict.fromkeys(plan.tasks, why)
                plan.tasks = []
                for results in plan.results.values():
                    results.pop("tasks", None)


def _needs(job: Job) -> dict[str, int | None]:
    """What one whole model needs for each measurement (None: no estimate): latency a batch of
    32 sequences, generations one sequence, a downstream task one batch of lm-eval requests
    (whose log-probabilities lm-eval takes at every position, in float32)."""
    estimate = job.execution.estimate if job.execution else None
    if estimate is None:
        return {"latency": None, "generations": None, "tasks": None}
    shape, dtype_bytes = estimate.shape, estimate.job["dtype_bytes"]
    return {
        "latency": whole_model_bytes(shape, dtype_bytes, LATENCY_BATCH * MAX_LENGTH),
        "generations": whole_model_bytes(shape, dtype_bytes, MAX_LENGTH),
        "tasks": (
            whole_model_bytes(shape, dtype_bytes, TASK_TOKENS) + _task_logits_bytes(shape.vocab)
        ),
    }


def _room_for_whole_models(job: Job, plan: _Plan) -> dict:
    """Layer by layer: what one whole model needs for latency, for generations and for the
    default downstream tasks (:func:`_needs`); which of them run, and why the others do not.

    One runs where its estimated peak, the runtime and one whole model, stays within the job's own
    estimate (the layer's work and the resident embeddings it replaces are given back by then),
    so the whole-model measurements never take a job past what it announced, whatever the process
    held before the job (a worker runs many), and where the memory left now holds it. Tasks named
    in the spec always run: the estimate counted them.
    """
    estimate = job.execution.estimate if job.execution else None
    room, needs = room_now(), _needs(job)
    if estimate is not None:
        budget = estimate.total_bytes - estimate.breakdown["runtime"]
        room = budget if room is None else min(room, budget)

    def fits(need: int | None) -> bool:
        return need is None or room is None or need <= room

    asked = {
        "latency": plan.latency,
        "generations": bool(plan.prompts),
        "tasks": bool(plan.tasks) and plan.default_tasks,
    }
    runs = {what: on and fits(needs[what]) for what, on in asked.items()}
    reasons = {
        what: f"{'default downstream tasks' if what == 'tasks' else what} would need about "
        f"{needs[what] / 2**30:.2f} GiB for one whole model and {max(0, room) / 2**30:.2f} GiB "
        "are left of the job's estimate and the memory available"
        for what, on in asked.items()
        if on and not runs[what]
    }
    why = "; ".join(reasons.values())
    tasks = bool(plan.tasks) and (runs["tasks"] or not plan.default_tasks)
    return {
        "loaded": runs["latency"] or runs["generations"] or tasks,
        "latency": runs["latency"],
        "generations": runs["generations"],
        "tasks": tasks,
        "needed_bytes": needs["latency"],
        "generation_needed_bytes": needs["generations"],
        "task_needed_bytes": needs["tasks"] if plan.default_tasks else None,
        "room_bytes": None if room is None else max(0, room),
        "why_not": why or None,
        "tasks_why_not": reasons.get("tasks"),  # for the tasks' not_run; not in the report
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
    inputs = job.inputs
    t0 = time.perf_counter()

    def on_step(message: str) -> None:
        job.check()
        job.stage("writing_card", 0.1, message)

    if inputs.streamed is None:
        _in_memory_task_room(job, plan)
        _load_defaults(job, plan, on_step)
        if plan:
            _ask(plan, "original", inputs.original, inputs.tokenizer, on_step)
            _ask(plan, "compressed", job.compressed, inputs.tokenizer, on_step)
    elif plan:
        inputs.streamed.free_resident()  # the folder is written: the stream is over
        gc.collect()
        room = _room_for_whole_models(job, plan)
        job.execution.extra["whole_model"] = room
        plan.latency = room["latency"]
        plan.prompts = plan.prompts if room["generations"] else []
        if not room["tasks"]:
            why = f"no room for a whole model: {room['tasks_why_not']}"
            plan.not_run |= dict.fromkeys(plan.tasks, why)
            plan.tasks = []
        del room["tasks_why_not"]
        _load_defaults(job, plan, on_step)  # only those that will run: their data is downloaded
        if plan:
            _from_disk(plan, "compressed", folder, on_step)
            _from_disk(plan, "original", Path(inputs.loaded.path), on_step)
    _report(job, plan, time.perf_counter() - t0)


def _load_defaults(job: Job, plan: _Plan, on_step: Callable) -> None:
    """The default tasks lm-eval can load stay in ``plan``; the others go to ``plan.not_run``."""
    if plan.default_tasks and plan.tasks:
        on_step(f"loading the default lm-eval tasks ({', '.join(plan.tasks)})")
        plan.not_run |= downstream.unavailable_defaults(job, plan.tasks)
        plan.tasks = [name for name in plan.tasks if name not in plan.not_run]


def _in_memory_task_room(job: Job, plan: _Plan) -> None:
    """In memory both models are there; the default tasks need room for a batch of lm-eval
    requests' log-probabilities (float32, every position), which the job's estimate does not
    count: without it they are left out, saying why."""
    estimate = job.execution.estimate if job.execution else None
    room = room_now()
    if not (plan.default_tasks and plan.tasks) or estimate is None or room is None:
        return
    need = _task_logits_bytes(estimate.shape.vocab)
    if need > room:
        why = (
            f"no room for a batch of lm-eval requests: about {need / 2**30:.2f} GiB, "
            f"{room / 2**30:.2f} GiB available"
        )
        plan.not_run |= dict.fromkeys(plan.tasks, why)
        plan.tasks = []


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
    if "tasks" in original or plan.not_run:
        evaluation["downstream"] = downstream.record(
            plan.tasks,
            plan.task_limit,
            original.get("tasks", {}),
            compressed.get("tasks", {}),
            seconds,
            default=plan.default_tasks,
            not_run=plan.not_run,
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
