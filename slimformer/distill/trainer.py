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

:class:`_Run` is composed of parts, one module each: the set-up and the data its steps read
(:mod:`~slimformer.distill.run_setup`), the plan and its budget
(:mod:`~slimformer.distill.run_plan`), evaluation and checkpoints
(:mod:`~slimformer.distill.run_evaluation`) and the outcome checks and result
(:mod:`~slimformer.distill.run_outcome`). The step loop is here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from slimformer.data import TextData
from slimformer.distill.checkpoint import _check_fingerprint
from slimformer.distill.config import CancelFn, DistillConfig, DistillResult, EvalFn, ProgressFn
from slimformer.distill.health import (
    _finding,
    _gradient_findings,
    _initial_loss_findings,
    _note_plateau,
    check_training_data,
)
from slimformer.distill.losses.batch import batch_loss
from slimformer.distill.run_evaluation import _Evaluating
from slimformer.distill.run_outcome import _Outcome
from slimformer.distill.run_plan import _Planning
from slimformer.distill.schedule import _halve_learning_rate
from slimformer.errors import Cancelled, SlimformerError
from slimformer.models import Task

logger = logging.getLogger(__name__)


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class _Run(_Outcome, _Evaluating, _Planning):
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
        self._take_inputs(
            student,
            teacher,
            tokenizer,
            train,
            eval_data,
            config,
            task=task,
            layer_map=layer_map,
            eval_fn=eval_fn,
            stage=stage,
        )
        self._place_models(checkpoint_dir)
        self._set_budget()
        self._make_trainables()  # seeds the RNG; its schedule reads the plan of _set_budget
        self._prepare_eval()
        self._start_bookkeeping()

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
                    "tokens": 0,
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
        loss_value, bad, tokens = 0.0, None, 0
        for k in range(config.grad_accum):
            if k:
                self.cancel_if_asked(should_cancel)
            batch = self.batch_at(state.micro + k)
            tokens += _tokens(batch)
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
                # the input tokens trained on so far (padding not counted)
                "tokens": state.history[-1].get("tokens", 0) + tokens,
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


def _tokens(batch: dict) -> int:
    """The input tokens of one batch, padding not counted."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    ids = batch.get("input_ids")  # embedding pairs batch their two sides under other names
    return int(ids.numel()) if ids is not None else 0
