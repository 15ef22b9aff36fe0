"""What is measured of the original and the result (``evaluation``)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from slimformer.spec.base import _Strict

EVAL_ROWS = 2000  # rows a classifier or embedding model is evaluated on by default
# windows a causal LM is evaluated on by default: 32k predicted tokens, a stable perplexity (all of
# WikiText-2 test is over 500 windows: most of an hour for two 135M models on 2 cores)
EVAL_WINDOWS = 64
# generations side by side (causal LMs): prompts taken from the evaluation text by default
DEFAULT_PROMPTS, PROMPT_TOKENS, MAX_PROMPTS, MAX_PROMPT_CHARS = 3, 24, 8, 2000
DEFAULT_NEW_TOKENS, MAX_NEW_TOKENS = 40, 256
# the downstream tasks a causal LM gets when evaluation.tasks is null, and the items of each: four
# zero-shot multiple-choice tasks of the LLM-compression papers at a limit whose cost stays near
# the prune job's own on 2 CPU cores (measured in docs/pruning.md). An operator names another set
# (or none: an empty value) in SLIMFORMER_DEFAULT_TASKS.
DEFAULT_TASKS = ("arc_easy", "hellaswag", "piqa", "winogrande")
DEFAULT_TASK_LIMIT = 100
DEFAULT_TASKS_ENV = "SLIMFORMER_DEFAULT_TASKS"
NO_TASKS = "none"  # evaluation.tasks ["none"], --tasks none: no downstream task, not the defaults


def default_tasks() -> list[str]:
    """The default downstream tasks: ``SLIMFORMER_DEFAULT_TASKS`` (comma-separated; empty: none)
    where it is set, else :data:`DEFAULT_TASKS`."""
    given = os.environ.get(DEFAULT_TASKS_ENV)
    if given is None:
        return list(DEFAULT_TASKS)
    return [name.strip() for name in given.split(",") if name.strip()]


class EvaluationSpec(_Strict):
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Evaluate on at most this many rows; causal LMs: windows of packed text. Null: "
        "2000 rows; causal LMs: 64 windows of 512 tokens (32k predicted tokens).",
    )

    def rows(self, task: str | None) -> int:
        """The evaluation size used for ``task`` (``max_samples`` or the task's default)."""
        if self.max_samples is not None:
            return self.max_samples
        return EVAL_WINDOWS if task == "text-generation" else EVAL_ROWS

    latency: bool = Field(True, description="Measure latency and throughput of both models.")
    onnx: bool = Field(False, description="Also export model.onnx, checked with onnxruntime.")
    onnx_int8: bool = Field(
        False,
        description="Also write model.int8.onnx: onnxruntime's dynamic int8 quantization of "
        "model.onnx (implies onnx), with its output difference and top-1 agreement on the card.",
    )
    tasks: list[str] | None = Field(
        None,
        description="Downstream tasks of EleutherAI's lm-evaluation-harness (lm-eval task names, "
        "e.g. arc_easy, hellaswag, piqa, winogrande, boolq) run on the original and the "
        "compressed model, same items, side by side on the card (causal LMs). A task named here "
        "that lm-eval does not know or cannot load (its data is downloaded first) fails the job "
        "before any work. Null: the default set for causal LMs, "
        f"{', '.join(DEFAULT_TASKS)} at {DEFAULT_TASK_LIMIT} items each (the operator's "
        f"{DEFAULT_TASKS_ENV} where set), run where their data loads and, layer by layer, where "
        "a whole model fits in the job's estimate; the card says why one did not run. "
        f'{NO_TASKS} (["{NO_TASKS}"] or [] in a spec): none. Cost: a forward per answer choice '
        "per item, for both "
        "models (docs/pruning.md).",
    )
    task_limit: int | None = Field(
        None,
        ge=1,
        description="Items per downstream task (the first ones of the task's evaluation split); "
        f"null: every item of tasks named, {DEFAULT_TASK_LIMIT} for the default set.",
    )
    prompts: list[str] = Field(
        default_factory=list,
        max_length=MAX_PROMPTS,
        description="Prompts whose greedy continuations by the original and the compressed model "
        f"the card shows side by side (causal LMs; at most {MAX_PROMPTS}, each at most "
        f"{MAX_PROMPT_CHARS} characters). Empty: the first {PROMPT_TOKENS} tokens of "
        f"{DEFAULT_PROMPTS} evaluation windows (the first, the middle and the last).",
    )
    new_tokens: int = Field(
        DEFAULT_NEW_TOKENS,
        ge=0,
        le=MAX_NEW_TOKENS,
        description="Tokens each model generates greedily after each prompt (causal LMs); 0: no "
        "generations.",
    )

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, prompts: list[str]) -> list[str]:
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}"
                )
        return prompts

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: list[str] | None) -> list[str] | None:
        if tasks is None:
            return None
        names = [name.strip() for name in tasks]
        if any(not name for name in names):
            raise ValueError("an empty task name")
        if NO_TASKS in names:
            if len(names) > 1:
                raise ValueError(f"{NO_TASKS!r} turns the tasks off: name it alone")
            return []
        return list(dict.fromkeys(names))  # each task once, in the order given

    def downstream(self, causal: bool) -> tuple[list[str], int | None, bool]:
        """The downstream tasks a model gets, the items per task, and whether they are the
        default set (null ``tasks``: :func:`default_tasks` at :data:`DEFAULT_TASK_LIMIT` items
        unless ``task_limit`` says otherwise). Only causal LMs get any."""
        if not causal:
            return [], None, False
        if self.tasks is None:
            return default_tasks(), self.task_limit or DEFAULT_TASK_LIMIT, True
        return list(self.tasks), self.task_limit, False
