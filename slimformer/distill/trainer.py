"""The training loop shared by distillation and fine-tuning: one :class:`_Run` per call.

Gradient accumulation, a budget in epochs, steps or minutes, bf16 autocast on CUDA, evaluation with
the best weights kept, early stopping, and checkpoints that make a resumed run end with the same
weights as an uninterrupted one: the data order of each epoch is a seeded permutation, and a
checkpoint holds the position in it along with every RNG state. A loss or gradient that is not
finite rolls the run back to its last checkpoint with half the learning rate, once.

``max_minutes`` bounds the wall-clock time of the whole call, evaluations and checkpoints
included: the run measures what a step, an evaluation and a checkpoint cost, re-plans its
learning-rate schedule to the steps that fit (:func:`~slimformer.distill.schedule._fit_steps`)
and stops before the next step and the evaluation after it would overrun. A run that trained no
step, or a causal LM that never beat its own starting point on the held-out data, raises
:class:`~slimformer.errors.DistillationFailed` instead of returning a broken student; so does a
causal LM still worse than a uniform guess (held-out perplexity above its vocabulary size).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData
from slimformer.distill.batches import _epoch_order, _make_batch
from slimformer.distill.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    _check_fingerprint,
    _cpu_copy,
    _fingerprint,
    _load_best,
    _read_checkpoint,
    _rng_state,
    _RunState,
    _save_best,
    _set_rng_state,
    _write_checkpoint,
)
from slimformer.distill.config import CancelFn, DistillConfig, DistillResult, EvalFn, ProgressFn
from slimformer.distill.health import (
    _finding,
    _gradient_findings,
    _initial_loss_findings,
    _note_plateau,
    check_training_data,
)
from slimformer.distill.losses.batch import batch_loss
from slimformer.distill.metric import _measure, _prepare_evaluation
from slimformer.distill.schedule import (
    _apply_plan,
    _fit_steps,
    _halve_learning_rate,
    _make_optimizer,
    _step_budget,
)
from slimformer.distill.students import _check_run_fit, _hidden_width
from slimformer.errors import (
    Cancelled,
    DatasetError,
    DistillationFailed,
    InvalidSpec,
    SlimformerError,
)
from slimformer.models import Task, autocast_for, model_task, pick_device, set_seed

logger = logging.getLogger(__name__)


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _resolve_task(task: str | None, model: nn.Module) -> Task:
    task = task or model_task(model)
    if task == "sentence-similarity":
        task = "feature-extraction"
    if task not in ("text-classification", "text-generation", "feature-extraction"):
        raise InvalidSpec(
            f"unknown task {task!r}; distillation covers text-classification, text-generation "
            "and feature-extraction"
        )
    if task != model_task(model):
        raise InvalidSpec(f"task {task!r} does not match the model's head ({type(model).__name__})")
    return task


class _Run:
    """One training run: the optimizer and schedule, the data order, evaluation, checkpoints and
    health.

    Used by :func:`distill` (with a teacher) and :func:`finetune` (``teacher=None``).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        tokenizer: PreTrainedTokenizerBase,
        train: TextData,
        eval_data: TextData | None,
        config: DistillConfig,
        *,
        task: Task | None,
        layer_map: Sequence[int] | None,
        checkpoint_dir: str | Path | None,
        eval_fn: EvalFn | None,
        stage: str,
    ) -> None:
        self.started = time.perf_counter()  # the wall-clock budget counts the set-up too
        config.validate()
        self.task = task = _resolve_task(task, student)
        if len(train) == 0:
            raise DatasetError(f"{train.source or 'the training data'} has no rows")
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.train, self.config, self.eval_fn, self.stage = train, config, eval_fn, stage
        self.label_config = (teacher or student).config
        labelled = task == "text-classification" and train.labels is not None
        self.use_labels = task == "text-generation" or labelled
        if teacher is not None and config.alpha == 0:
            self.use_labels = False
        if teacher is None and not self.use_labels:
            raise InvalidSpec("fine-tuning without a teacher needs training data with gold labels")
        self.layer_map = _check_run_fit(student, teacher, config, layer_map)
        self.eval_data = eval_data if eval_data is not None and len(eval_data) else None

        self.device = pick_device(config.device)
        student.to(self.device)
        if teacher is not None:
            teacher.to(self.device).eval()
        self.ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if self.ckdir is not None:
            self.ckdir.mkdir(parents=True, exist_ok=True)
        self.per_epoch, self.bound_steps = _step_budget(config, len(train))
        self.max_seconds = config.max_minutes * 60 if config.max_minutes is not None else None
        self.state = _RunState()
        self.set_plan(self.bound_steps)

        set_seed(config.seed)  # before the projection is initialised
        self.projection = None
        if teacher is not None and config.hidden_loss is not None and config.hidden_weight > 0:
            if _hidden_width(student) != _hidden_width(teacher):
                widths = (_hidden_width(student), _hidden_width(teacher))
                self.projection = nn.Linear(*widths, bias=False)
                self.projection.to(self.device)
        named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
        if self.projection is not None:
            named += [(f"projection.{n}", p) for n, p in self.projection.named_parameters()]
        self.trained = [p for _, p in named]
        self.optimizer, self.scheduler = _make_optimizer(
            named, config, lambda: (self.state.plan_warmup, self.state.plan_total)
        )
        self.fingerprint = _fingerprint(student, teacher, train, config, task)

        self.eval_batches = self.reference = None
        self.metric_name = "custom" if eval_fn is not None else None
        # a causal LM's built-in metric is its perplexity; a custom eval_fn is higher-is-better
        self.higher_is_better = not (task == "text-generation" and eval_fn is None)
        self.teacher_metric = None
        if self.eval_data is not None and eval_fn is None:
            prepared = _prepare_evaluation(
                self.eval_data,
                tokenizer,
                teacher,
                task=task,
                label_config=self.label_config,
                config=config,
            )
            self.eval_batches, self.reference, self.metric_name, self.teacher_metric = prepared
        self.has_evaluation = eval_fn is not None or self.eval_batches is not None
        self.step_estimate = 0.0  # seconds per step guessed before the first step is timed

        # the last checkpoint, when there is no checkpoint folder
        self.memory_checkpoint: dict | None = None
        # step -> CPU weights of an evaluated best; pruned at every checkpoint to the best that
        # checkpoint names, so a roll-back or a resumption finds the best weights of the state it
        # returns to
        self.best_store: dict[int, dict] = {}
        self.resumed_from: int | None = None
        self.seconds_before = 0.0
        self.steps_at_start = 0

    # -------------------------------------------------------- data

    def batch_at(self, micro: int) -> dict:
        """Micro-batch number ``micro`` of the run: epoch ``micro // per_epoch``, in that epoch's
        seeded order.
        """
        epoch, position = divmod(micro, self.per_epoch)
        size = self.config.batch_size
        order = _epoch_order(len(self.train), self.config.seed, epoch, self.config.shuffle)
        rows = self.train.subset(list(order[position * size : (position + 1) * size]))
        batch = _make_batch(
            self.tokenizer,
            rows,
            task=self.task,
            label_config=self.label_config,
            max_length=self.config.max_length,
            with_labels=self.use_labels,
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def autocast(self) -> AbstractContextManager:
        return autocast_for(self.device)

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    # -------------------------------------------------------- the plan

    def set_plan(self, total: int, evaluations: int | None = None) -> None:
        """Plan ``total`` steps: warm-up over ``warmup_ratio`` of them, ``evaluations`` spread.

        Once the plan has been fitted to measured times, the warm-up only ever shortens: a plan
        that grows later (the machine got faster) does not start warming up again, so the
        warm-up stays within ``warmup_ratio`` of the first fitted plan.
        """
        state, config = self.state, self.config
        state.plan_total = max(1, total)
        warmup = round(config.warmup_ratio * state.plan_total)
        state.plan_warmup = min(state.plan_warmup, warmup) if state.replanned else warmup
        state.plan_fitted = state.plan_total < self.bound_steps
        if config.eval_every is not None:
            state.plan_eval_every = config.eval_every
        else:
            wanted = evaluations or config.evaluations
            state.plan_eval_every = max(1, math.ceil(state.plan_total / wanted))

    def seconds_per_step(self) -> float:
        """Measured seconds of an optimizer step (the first step only until there are others)."""
        state = self.state
        if state.timed_steps:
            return state.step_seconds / state.timed_steps
        return state.first_step_seconds or self.step_estimate

    def evaluation_budget(self) -> int:
        """Evaluations the run may make after the initial one: ``evaluations``, fewer when they
        would take more than ``max_eval_share`` of the time budget.
        """
        config, per_eval = self.config, self.state.eval_seconds
        if self.max_seconds is None or per_eval <= 0:
            return config.evaluations
        affordable = math.floor(config.max_eval_share * self.max_seconds / per_eval)
        return max(1, min(config.evaluations, affordable))

    def replan(self, force: bool = False) -> None:
        """Fit the schedule to the time budget from the measured costs.

        Runs after steps 1, 2, 3, 5 and 8 and then every twentieth of the plan. The plan may
        shrink at any time; a plan of 20 steps or more grows only before 90% of it is done, so the
        learning rate never climbs back once a long decay is nearly over.
        """
        state = self.state
        if self.max_seconds is None:
            return
        step = state.step
        if not force and step not in (1, 2, 3, 5, 8) and step % max(1, state.plan_total // 20):
            return
        per_step = self.seconds_per_step()
        if per_step <= 0:
            return
        budget = self.evaluation_budget()
        evals_left = max(1, budget - state.evals_done) if self.has_evaluation else 0
        total = _fit_steps(
            step=step,
            bound=self.bound_steps,
            seconds_left=self.max_seconds - self.elapsed(),
            per_step=per_step,
            per_evaluation=state.eval_seconds if self.has_evaluation else 0.0,
            evaluations_left=evals_left,
            per_checkpoint=state.checkpoint_seconds if self.ckdir is not None else 0.0,
            checkpoint_every=self.config.checkpoint_every,
        )
        late = step >= 0.9 * state.plan_total and state.plan_total >= 20
        if total > state.plan_total and late:
            total = state.plan_total
        if total != state.plan_total or budget != self.config.evaluations or not state.replanned:
            self.set_plan(total, budget)
            state.replanned = True
            _apply_plan(self.optimizer, self.scheduler)

    # -------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "run": dataclasses.asdict(self.state),
            "student": self.student.state_dict(),
            "projection": self.projection.state_dict() if self.projection is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
        }
        started = time.perf_counter()
        if self.ckdir is not None:
            _write_checkpoint(payload, self.ckdir, self.state.best_step)
        else:
            self.memory_checkpoint = _cpu_copy(payload)
        self.state.checkpoint_seconds = time.perf_counter() - started
        for step in [s for s in self.best_store if s != self.state.best_step]:
            del self.best_store[step]

    def load_checkpoint(self) -> dict | None:
        if self.ckdir is None:
            return self.memory_checkpoint
        return _read_checkpoint(self.ckdir / CHECKPOINT_FILE)

    def restore(self, payload: dict) -> _RunState:
        """Load the tensors and RNG states of ``payload``; return its run state (not yet
        applied).
        """
        self.student.load_state_dict(payload["student"])
        if self.projection is not None:
            self.projection.load_state_dict(payload["projection"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        _set_rng_state(payload["rng"])
        return _RunState(**payload["run"])

    # -------------------------------------------------------- evaluation

    def evaluate(self) -> None:
        """Evaluate (when there is something to evaluate on), record the metric, keep the best
        weights.
        """
        if not self.has_evaluation:
            return
        started = time.perf_counter()
        if self.eval_fn is not None:
            value = float(self.eval_fn(self.student))
        else:
            self.metric_name, value = _measure(
                self.student,
                self.eval_batches,
                self.reference,
                task=self.task,
                config=self.config,
            )
        self.student.train()
        state = self.state
        state.eval_seconds = time.perf_counter() - started
        if state.step > 0:
            state.evals_done += 1
        state.history[-1]["metric"] = value
        if not self.improves(value):
            state.stale_evals += 1
            return
        state.best_metric, state.best_step, state.stale_evals = value, state.step, 0
        self.best_store[state.step] = _cpu_copy(self.student.state_dict())
        if self.ckdir is not None:
            _save_best(self.ckdir, state.step, value, self.best_store[state.step])

    def improves(self, value: float) -> bool:
        """``value`` is finite and better than the best so far (anything finite beats none)."""
        best = self.state.best_metric
        if not math.isfinite(value):
            return False
        if best is None or not math.isfinite(best):
            return True
        return value > best if self.higher_is_better else value < best

    # -------------------------------------------------------- the loop

    def start(self, on_progress: ProgressFn | None) -> bool:
        """Resume from a checkpoint, or check the data and the first batch and evaluate the initial
        student.

        Returns:
            True when the checkpoint is of a finished run (nothing left to train).
        """
        payload = self.load_checkpoint()
        if payload is not None:
            _check_fingerprint(payload, self.fingerprint, self.ckdir)
            self.state = self.restore(payload)
            self.resumed_from = step = self.state.step
            logger.info("resuming from the checkpoint in %s at step %d", self.ckdir, step)
            if on_progress is not None and not self.state.finished:
                fraction = step / self.state.plan_total
                on_progress(self.stage, fraction, f"resuming at step {step}")
        else:
            if on_progress is not None:
                on_progress(self.stage, 0.0, "checking the data and the first batch")
            state = self.state
            model_config = self.label_config if self.task == "text-classification" else None
            state.health.extend(
                check_training_data(
                    self.train,
                    self.tokenizer,
                    self.config,
                    task=self.task,
                    eval_data=self.eval_data,
                    model_config=model_config,
                )
            )
            self.student.eval()
            checked = time.perf_counter()
            with self.autocast():
                state.health.extend(
                    _initial_loss_findings(
                        self.student,
                        self.teacher,
                        self.batch_at(0),
                        task=self.task,
                        config=self.config,
                    )
                )
            # the check ran the student and the teacher forward on the first batch; a training
            # step adds the student's backward pass: a first guess until steps are timed
            self.step_estimate = 2.0 * (time.perf_counter() - checked)
            state.history.append(
                {
                    "step": 0,
                    "loss": None,
                    "grad_norm": None,
                    "lr": 0.0,
                    "metric": None,
                    "seconds": self.elapsed(),
                }
            )
            self.evaluate()
            self.replan(force=True)
            state.seconds = self.elapsed()  # the checks count against the time budget too
            self.save_checkpoint()
        self.seconds_before = self.state.seconds
        self.started = time.perf_counter()
        self.steps_at_start = self.state.step
        return self.state.finished

    def stop_reason(self) -> str | None:
        state, config = self.state, self.config
        if state.step >= state.plan_total:
            if state.plan_fitted:
                return "max_minutes"
            if config.max_steps is not None and state.plan_total == config.max_steps:
                return "max_steps"
            return "epochs"
        if self.max_seconds is not None:
            # the next step, the evaluation that may follow it and the last checkpoint must fit
            need = self.seconds_per_step()
            need += state.eval_seconds if self.has_evaluation else 0.0
            need += state.checkpoint_seconds if self.ckdir is not None else 0.0
            if self.elapsed() + need > self.max_seconds:
                return "max_minutes"
        if config.patience is not None and state.stale_evals >= config.patience:
            return "early_stopping"
        return None

    def cancel_if_asked(self, should_cancel: CancelFn | None) -> None:
        if should_cancel is None or not should_cancel():
            return
        self.state.seconds = self.elapsed()
        if self.ckdir is not None:
            # the step in progress is dropped: the run resumes after the last whole step
            self.save_checkpoint()
        step = self.state.step
        raise Cancelled(f"{self.stage} was cancelled at step {step}", details={"step": step})

    def train_step(self, should_cancel: CancelFn | None) -> None:
        """One optimizer step over ``grad_accum`` micro-batches, or a roll-back when something is
        not finite.
        """
        state, config = self.state, self.config
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, bad = 0.0, None
        for k in range(config.grad_accum):
            if k:
                self.cancel_if_asked(should_cancel)
            batch = self.batch_at(state.micro + k)
            with self.autocast():
                loss, _ = batch_loss(
                    self.student,
                    self.teacher,
                    batch,
                    task=self.task,
                    config=config,
                    layer_map=self.layer_map,
                    projection=self.projection,
                )
            if not torch.isfinite(loss):
                bad = "loss"
                break
            (loss / config.grad_accum).backward()
            loss_value += loss.detach().item() / config.grad_accum
        grad_norm = None
        if bad is None:
            if not state.gradients_checked:
                state.gradients_checked = True
                state.health.extend(_gradient_findings(self.student, self.task))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trained, config.max_grad_norm))
            if not math.isfinite(grad_norm):
                bad = "gradients"
        if bad is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.roll_back(bad)
            return
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        state.micro += config.grad_accum
        state.history.append(
            {
                "step": state.step,
                "loss": loss_value,
                "grad_norm": grad_norm,
                "lr": lr,
                "metric": None,
                "seconds": self.elapsed(),
            }
        )
        took = time.perf_counter() - started
        if state.step == 1 or (self.resumed_from is not None and not state.first_step_seconds):
            state.first_step_seconds = took
        else:
            state.step_seconds += took
            state.timed_steps += 1
        self.replan()
        if state.step % state.plan_eval_every == 0 or state.step >= state.plan_total:
            self.evaluate()
        _note_plateau(state, max(10, min(100, state.plan_total // 10)))
        state.seconds = self.elapsed()
        if state.step % config.checkpoint_every == 0:
            self.save_checkpoint()

    def roll_back(self, what: str) -> None:
        """Return to the last checkpoint with half the learning rate, once; a second time is an
        error.
        """
        state = self.state
        if state.rolled_back:
            message = (
                f"the {what} became NaN or infinite again at step {state.step + 1}, after a "
                "roll-back with the learning rate halved; stopping. Lower learning_rate, check the "
                "data, or train in float32"
            )
            state.health.append(_finding("error", "non_finite", message))
            details = {"step": state.step + 1, "check": "non_finite"}
            raise SlimformerError(message, details=details)
        bad_step = state.step + 1
        restored = self.restore(self.load_checkpoint())
        # findings and the first-step gradient check are about the whole run, not the state
        # returned to
        restored.health = state.health
        restored.gradients_checked = state.gradients_checked
        restored.rolled_back = True
        self.state = restored
        _halve_learning_rate(self.optimizer, self.scheduler)
        restored.health.append(
            _finding(
                "warning",
                "non_finite",
                f"the {what} became NaN or infinite at step {bad_step}; rolled back to step "
                f"{restored.step} and halved the learning rate",
            )
        )
        self.save_checkpoint()

    def progress(self) -> tuple[float, str]:
        state, elapsed = self.state, self.elapsed()
        fraction = state.step / state.plan_total
        remaining = (state.plan_total - state.step) * elapsed / max(1, state.step)
        if self.max_seconds is not None:
            fraction = max(fraction, min(1.0, elapsed / self.max_seconds))
            remaining = min(remaining, max(0.0, self.max_seconds - elapsed))
        message = f"step {state.step}/{state.plan_total} loss {state.history[-1]['loss']:.4f}"
        metrics = [h["metric"] for h in state.history if h["metric"] is not None]
        if metrics:
            message += f" {self.metric_name or 'metric'} {metrics[-1]:.4f}"
        message += f" ETA {_fmt_seconds(remaining)}"
        return min(1.0, fraction), message

    def run(self, on_progress: ProgressFn | None, should_cancel: CancelFn | None) -> DistillResult:
        if not self.start(on_progress):
            self.student.train()
            while (stop := self.stop_reason()) is None:
                self.cancel_if_asked(should_cancel)
                self.train_step(should_cancel)
                if on_progress is not None and self.state.history[-1]["loss"] is not None:
                    on_progress(self.stage, *self.progress())
            self.state.stopped_because = stop
            if self.state.history[-1]["metric"] is None and self.state.step > 0:
                self.evaluate()  # stopped by time or patience between evaluations
            self.state.seconds = self.elapsed()
            self.state.finished = True
            if self.ckdir is not None:
                self.save_checkpoint()
            logger.info(
                "%s stopped after %d steps (%s) in %.1fs",
                self.stage,
                self.state.step,
                stop,
                self.state.seconds,
            )
        return self.finish()

    def check_outcome(self) -> None:
        """Refuse a run that trained no step, or a causal LM that never beat its starting point.

        Raises:
            DistillationFailed: with the figures in ``details`` and an error finding in the
                health list.
        """
        state = self.state
        minutes = state.seconds / 60
        if state.step == 0 and state.stopped_because == "max_minutes":
            message = (
                f"{self.stage} trained no step: the data checks and the evaluations before "
                f"training took {state.seconds:.0f} s of the {self.max_seconds:.0f} s budget "
                f"(max_minutes {self.config.max_minutes:g}), leaving no time for a step and the "
                "evaluation after it; give more time or less evaluation data"
            )
            self.fail(message, "no_training", {"seconds": round(state.seconds, 1)})
        if self.task != "text-generation" or not self.has_evaluation or not state.history:
            return
        start = state.history[0].get("metric")
        if start is None:
            return
        if state.best_step not in (None, 0):
            self.check_better_than_chance()
            return
        later = [h["metric"] for h in state.history[1:] if h.get("metric") is not None]
        best_later = None
        if later:
            finite = [v for v in later if math.isfinite(v)]
            if finite:
                best_later = max(finite) if self.higher_is_better else min(finite)
        losses = [h["loss"] for h in state.history if h.get("loss") is not None]
        if state.step < 20:
            hint = (
                f"only {state.step} steps were trained (stopped by {state.stopped_because}): "
                "give more time or steps"
            )
        elif losses and sum(losses[-5:]) / len(losses[-5:]) >= sum(losses[:5]) / len(losses[:5]):
            hint = (
                f"the training loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f}): lower "
                f"the learning rate ({self.config.learning_rate:g}) or check the data"
            )
        else:
            hint = (
                f"the training loss fell ({losses[0]:.3f} -> {losses[-1]:.3f}) but the held-out "
                "metric did not: train longer, on more data, or keep more layers"
            )
        name = self.metric_name or "metric"
        best_text = f"{best_later:.4g}" if best_later is not None else "no finite value"
        message = (
            f"the distilled student never beat its starting point on the held-out data: {name} "
            f"{start:.4g} before training, best {best_text} after {state.step} steps "
            f"({minutes:.1f} min); {hint}. No model was written"
        )
        details = {
            "metric": name,
            "start": start,
            "best_after_start": best_later,
            "steps": state.step,
            "seconds": round(state.seconds, 1),
        }
        self.fail(message, "no_improvement", details)

    def check_better_than_chance(self) -> None:
        """Refuse an LM whose best held-out perplexity is still above its vocabulary size: it
        predicts worse than a uniform guess over the tokens, whatever it improved from.
        """
        state = self.state
        vocab = int(self.student.get_output_embeddings().weight.shape[0])
        if self.eval_fn is not None or state.best_metric is None or state.best_metric <= vocab:
            return
        start = state.history[0]["metric"]
        message = (
            f"the distilled student is still worse than a uniform guess: held-out perplexity "
            f"{state.best_metric:,.0f} after {state.step} steps ({state.seconds / 60:.1f} min, "
            f"from {start:,.0f} before training), above the random-guess level of {vocab:,} "
            f"(the vocabulary size). It has not recovered from losing its layers yet: give it more "
            f"time or steps (max_minutes), or keep more layers. No model was written"
        )
        details = {
            "metric": self.metric_name,
            "start": start,
            "best": state.best_metric,
            "random_guess": vocab,
            "steps": state.step,
            "seconds": round(state.seconds, 1),
        }
        self.fail(message, "worse_than_chance", details)

    def fail(self, message: str, check: str, details: dict) -> None:
        """Record an error finding and raise :class:`DistillationFailed`."""
        self.state.health.append(_finding("error", check, message))
        raise DistillationFailed(message, details={"check": check, **details})

    def finish(self) -> DistillResult:
        """Load the best evaluated weights into the student and describe the run.

        Raises:
            DistillationFailed: see :meth:`check_outcome`.
        """
        state = self.state
        self.check_outcome()
        if state.best_step is not None:
            weights = self.best_store.get(state.best_step)
            if weights is None:
                weights = _load_best(self.ckdir, state.best_step)
            self.student.load_state_dict(weights)
            logger.info(
                "restored the best student (step %d, %s %.4f)",
                state.best_step,
                self.metric_name,
                state.best_metric,
            )
        self.student.eval()
        return DistillResult(
            student=self.student,
            history=state.history,
            best_metric=state.best_metric,
            best_step=state.best_step,
            metric_name=self.metric_name,
            teacher_metric=self.teacher_metric,
            steps=state.step,
            seconds=state.seconds,
            health=state.health,
            resumed_from_step=self.resumed_from,
            stopped_because=state.stopped_because,
            higher_is_better=self.higher_is_better,
            plan={
                "total_steps": state.plan_total,
                "warmup_steps": state.plan_warmup,
                "eval_every": state.plan_eval_every,
                "fitted": state.plan_fitted,
                "seconds_per_step": round(self.seconds_per_step(), 4),
                "seconds_per_evaluation": round(state.eval_seconds, 4),
            },
        )
