"""The plan of a training run: its step budget, the learning-rate schedule fitted to the time
budget from measured costs, and the reason to stop.

The arithmetic lives in :mod:`slimformer.distill.schedule`; :class:`_Planning` applies it to the
run's state.
"""

from __future__ import annotations

import math

from slimformer.distill.checkpoint import _RunState
from slimformer.distill.run_setup import _RunSetup
from slimformer.distill.schedule import _apply_plan, _fit_steps, _step_budget


class _Planning(_RunSetup):
    """The step budget and plan of :class:`~slimformer.distill.trainer._Run`."""

    def _set_budget(self) -> None:
        """The steps per epoch and the bound on steps, the time budget, a fresh run state and the
        first plan (the optimizer's schedule reads it).
        """
        config = self.config
        self.per_epoch, self.bound_steps = _step_budget(config, len(self.train))
        self.max_seconds = config.max_minutes * 60 if config.max_minutes is not None else None
        self.state = _RunState()
        self.set_plan(self.bound_steps)

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
