"""Evaluation and checkpoints of a training run: the metric recorded after a step, the best
weights kept, and the checkpoint (on disk or in memory) that a resumption or a roll-back returns to.

The files themselves are :mod:`slimformer.distill.checkpoint`'s business; the metric,
:mod:`slimformer.distill.metric`'s.
"""

from __future__ import annotations

import dataclasses
import math
import time

from slimformer.distill.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    _cpu_copy,
    _read_checkpoint,
    _rng_state,
    _RunState,
    _save_best,
    _set_rng_state,
    _write_checkpoint,
)
from slimformer.distill.metric import _measure
from slimformer.distill.run_setup import _RunSetup


class _Evaluating(_RunSetup):
    """The evaluations and checkpoints of :class:`~slimformer.distill.trainer._Run`."""

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
