"""What flows through the recipe: a job's inputs, its progress hooks and each stage's result.

The stages (``slimformer.recipe.<stage>``) read what earlier stages left on the :class:`Job` and
put their own typed result beside it; nothing else is shared between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimformer.errors import Cancelled

if TYPE_CHECKING:
    from torch import nn

    from slimformer.hub import HubPolicy
    from slimformer.recipe.results import Distilled, Execution, Inputs, Pruned, Scores
    from slimformer.spec import JobSpec

ProgressFn = Callable[[str, float, str], None]


def _noop(stage: str, fraction: float, message: str) -> None:
    pass


@dataclass
class Job:
    """One run of a job spec: what the caller gave, and what each stage produced so far."""

    spec: JobSpec  # as given; ``inputs.spec`` is the one with the defaults resolved
    workdir: Path
    out: Path
    overwrite: bool = False
    token: str | None = None  # the user's Hub token: passed to Hub calls, never written
    resolve_upload: Callable[[str], Path] | None = None
    job_id: str | None = None
    hub_policy: HubPolicy | None = None
    on_progress: ProgressFn = _noop
    should_cancel: Callable[[], bool] = lambda: False
    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    execution: Execution | None = None  # the path and its memory, decided before the weights
    # each stage's result, in the order the stages run
    inputs: Inputs | None = None
    scores: Scores | None = None
    pruned: Pruned | None = None
    distilled: Distilled | None = None
    evaluation: dict | None = None
    report: dict | None = None
    published: dict | None = None

    def check(self) -> None:
        """Raise :class:`Cancelled` when the caller asked to stop."""
        if self.should_cancel():
            raise Cancelled("the job was cancelled")

    def stage(self, name: str, fraction: float, message: str) -> None:
        """Report progress, after checking for cancellation."""
        self.check()
        self.on_progress(name, fraction, message)

    def states_folder(self, stage: str) -> Path | None:
        """Where a layer-by-layer stage keeps its hidden states when they are spilled to files
        (None: in memory)."""
        if self.execution is None or not self.execution.states_in_files:
            return None
        return self.workdir / "hidden-states" / stage

    def progress_of(self, name: str) -> Callable[[float, str], None]:
        """``(fraction, message)`` progress of one stage, for library calls that report so."""
        return lambda fraction, message: self.on_progress(name, fraction, message)

    @property
    def compressed(self) -> nn.Module:
        """The model as the stages so far left it: distilled, else pruned, else the input."""
        if self.distilled is not None:
            return self.distilled.model
        if self.pruned is not None:
            return self.pruned.model
        assert self.inputs is not None
        return self.inputs.model

    @property
    def final_spec(self) -> JobSpec:
        """The spec as the report records it: defaults resolved, distillation settings used."""
        assert self.inputs is not None
        if self.distilled is not None:
            return self.inputs.spec.model_copy(update={"distill": self.distilled.settings})
        return self.inputs.spec

    def timed(self, name: str, since: float) -> None:
        self.timings[name] = time.perf_counter() - since


Stage = Callable[[Job], Any]
