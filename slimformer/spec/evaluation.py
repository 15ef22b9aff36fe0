"""What is measured of the original and the result (``evaluation``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from slimformer.spec.base import _Strict

EVAL_ROWS = 2000  # rows a classifier or embedding model is evaluated on by default
# windows a causal LM is evaluated on by default: 32k predicted tokens, a stable perplexity (all of
# WikiText-2 test is over 500 windows: most of an hour for two 135M models on 2 cores)
EVAL_WINDOWS = 64
# generations side by side (causal LMs): prompts taken from the evaluation text by default
DEFAULT_PROMPTS, PROMPT_TOKENS, MAX_PROMPTS, MAX_PROMPT_CHARS = 3, 24, 8, 2000
DEFAULT_NEW_TOKENS, MAX_NEW_TOKENS = 40, 256


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
    tasks: list[str] = Field(
        default_factory=list,
        description="Downstream tasks of EleutherAI's lm-evaluation-harness (lm-eval task names, "
        "e.g. arc_easy, hellaswag, piqa, winogrande, boolq) run on the original and the "
        "compressed model, same items, side by side on the card (causal LMs). A task lm-eval does "
        "not know or cannot load (its data is downloaded first) fails the job before any work. "
        "Cost: a forward per answer choice per item, for both models (docs/pruning.md).",
    )
    task_limit: int | None = Field(
        None,
        ge=1,
        description="Items per downstream task (the first ones of the task's evaluation split); "
        "null: every item.",
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
    def _task_names(cls, tasks: list[str]) -> list[str]:
        names = [name.strip() for name in tasks]
        if any(not name for name in names):
            raise ValueError("an empty task name")
        return list(dict.fromkeys(names))  # each task once, in the order given
