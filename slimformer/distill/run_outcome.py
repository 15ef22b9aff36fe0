"""The outcome of a training run: the checks that refuse a broken student, and the
:class:`~slimformer.distill.config.DistillResult` with the best evaluated weights loaded.

A run that trained no step, a causal LM that never beat its own starting point on the held-out
data, or one still worse than a uniform guess raises
:class:`~slimformer.errors.DistillationFailed`, with an error finding in the health list.
"""

from __future__ import annotations

import logging
import math

from slimformer.distill.checkpoint import _load_best
from slimformer.distill.config import DistillResult
from slimformer.distill.health import _finding
from slimformer.distill.run_setup import _RunSetup
from slimformer.errors import DistillationFailed

logger = logging.getLogger(__name__)


class _Outcome(_RunSetup):
    """The outcome checks and the result of :class:`~slimformer.distill.trainer._Run`."""

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
