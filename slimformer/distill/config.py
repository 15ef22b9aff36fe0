"""What a distillation (or fine-tuning) run is asked to do and what it produced.

:class:`DistillConfig` holds every setting of a run (losses, budgets, schedule, batching,
checkpoints) and checks them; :class:`DistillResult` is what :func:`~slimformer.distill.distill`
returns. The callback types shared by the students, the trainer and the entry points live here too,
so that none of those modules has to import another just for a type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from slimformer.errors import InvalidSpec

ProgressFn = Callable[[str, float, str], None]
CancelFn = Callable[[], bool]
EvalFn = Callable[[nn.Module], float]


@dataclass
class DistillConfig:
    """How to distil (or fine-tune). Budgets combine: training stops at whichever comes first.

    The step budget is ``epochs`` of data capped by ``max_steps``. ``max_minutes`` is a wall-clock
    budget for the whole call of :func:`~slimformer.distill.distill`: data checks, the teacher's
    and the student's evaluations before, during and after training, checkpoints and the steps.
    With it, the run times its first steps and its evaluations and re-plans: the learning-rate
    schedule (linear warm-up over ``warmup_ratio`` of the planned steps, then linear decay to
    zero) spans the steps that fit, and the run stops before a step (with the evaluation that
    must follow it) would overrun the budget. The settings a user does not give come from the
    student's recipe (:mod:`slimformer.distill.recipes`).
    """

    temperature: float = 2.0
    alpha: float = 0.5  # weight of the gold-label cross-entropy; 1 - alpha goes to the soft targets
    hidden_loss: Literal["cosine", "mse"] | None = None
    hidden_weight: float = 1.0
    # embedding models: pooled student vs teacher
    embedding_loss: Literal["cosine", "mse"] = "cosine"
    epochs: float = 3.0
    max_steps: int | None = None
    max_minutes: float | None = None
    # From-pretrained students (layer-dropped or pruned copies) are already close to their teacher.
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 32
    grad_accum: int = 1
    max_length: int = 128
    # optimizer steps between evaluations (there is always one at the start and end); None: about
    # `evaluations` per planned run, fewer when they would take over `max_eval_share` of max_minutes
    eval_every: int | None = None
    evaluations: int = 10
    max_eval_share: float = 0.25
    # causal LMs: held-out tokens one evaluation reads (the first rows of the evaluation data)
    lm_eval_tokens: int = 2048
    # evaluations without improvement before stopping; None: never stop early
    patience: int | None = None
    # without a checkpoint folder, the last checkpoint is kept in memory
    checkpoint_every: int = 200
    max_grad_norm: float = 1.0
    seed: int = 0
    kl_chunk_size: int = 256  # positions per chunk of the token-level causal-LM losses
    shuffle: bool = True
    device: str | None = None  # CUDA when present, CPU otherwise

    def validate(self) -> None:
        """Raise :class:`InvalidSpec` naming the first field whose value cannot be used."""
        checks = [
            ("temperature", self.temperature > 0, "must be positive"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "must lie in [0, 1]"),
            (
                "hidden_loss",
                self.hidden_loss in (None, "cosine", "mse"),
                "must be None, 'cosine' or 'mse'",
            ),
            ("hidden_weight", self.hidden_weight >= 0, "must be 0 or more"),
            (
                "embedding_loss",
                self.embedding_loss in ("cosine", "mse"),
                "must be 'cosine' or 'mse'",
            ),
            ("epochs", self.epochs > 0, "must be positive"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be at least 1"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "must be positive"),
            ("learning_rate", self.learning_rate > 0, "must be positive"),
            ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "must lie in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be 0 or more"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("grad_accum", self.grad_accum >= 1, "must be at least 1"),
            ("max_length", self.max_length >= 2, "must be at least 2"),
            ("eval_every", self.eval_every is None or self.eval_every >= 1, "must be at least 1"),
            ("evaluations", self.evaluations >= 1, "must be at least 1"),
            ("max_eval_share", 0.0 < self.max_eval_share <= 1.0, "must lie in (0, 1]"),
            ("lm_eval_tokens", self.lm_eval_tokens >= 1, "must be at least 1"),
            (
                "patience",
                self.patience is None or self.patience >= 1,
                "must be None or at least 1",
            ),
            ("checkpoint_every", self.checkpoint_every >= 1, "must be at least 1"),
            ("max_grad_norm", self.max_grad_norm > 0, "must be positive"),
            ("kl_chunk_size", self.kl_chunk_size >= 1, "must be at least 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidSpec(
                    f"distillation {name} {rule}, got {getattr(self, name)!r}",
                    details={"field": name},
                )


@dataclass
class DistillResult:
    """What a distillation (or fine-tuning) run produced.

    ``history`` has one entry per optimizer step, ``{"step", "loss", "grad_norm", "lr", "metric",
    "seconds"}`` (``metric`` is None between evaluations; step 0 holds the evaluation before
    training; ``seconds`` is the run's wall time when the step ended, across resumptions).
    ``stopped_because`` is one of ``epochs``, ``max_steps``, ``max_minutes``, ``early_stopping``.
    ``higher_is_better`` says which way ``metric`` points: a causal LM's built-in metric is its
    held-out perplexity (lower is better); every other metric is higher-is-better. ``plan`` is the
    schedule the run ended with: ``{"total_steps", "warmup_steps", "eval_every", "fitted"}``
    (``fitted``: re-planned to the time budget), with the measured ``seconds_per_step`` and
    ``seconds_per_evaluation``.
    """

    student: nn.Module
    history: list[dict]
    best_metric: float | None
    best_step: int | None
    metric_name: str | None
    teacher_metric: float | None
    steps: int
    seconds: float
    health: list[dict]
    resumed_from_step: int | None
    stopped_because: str
    higher_is_better: bool = True
    plan: dict | None = None

    def evaluations(self) -> list[dict]:
        """The history entries that carry a metric."""
        return [h for h in self.history if h.get("metric") is not None]
