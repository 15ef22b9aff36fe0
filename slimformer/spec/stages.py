"""The recipe's stages: the one table of them (what each does, its share of the progress bar,
which jobs run it) and a job's overall progress from the stage it is in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Method = Literal["prune", "distill", "prune_distill"]
PRUNES: tuple[str, ...] = ("prune", "prune_distill")
DISTILS: tuple[str, ...] = ("distill", "prune_distill")


class StageInfo(BaseModel):
    """One stage of the recipe: its name (a job's ``stage``), its share of the progress bar
    (relative; only the stages a job runs count), what it does, and which jobs run it."""

    model_config = ConfigDict(frozen=True)

    name: str
    weight: float
    does: str
    methods: tuple[str, ...] = ("prune", "distill", "prune_distill")
    when_publishing: bool = False  # run only when the job publishes

    def runs(self, method: str, publishes: bool) -> bool:
        return method in self.methods and (publishes or not self.when_publishing)


# The recipe's stages in order: slimformer.pipeline runs exactly these, the runner and the service
# read them from here (the one table of stages).
STAGE_TABLE: tuple[StageInfo, ...] = (
    StageInfo(name="downloading", weight=0.1, does="pull the model and the data"),
    StageInfo(
        name="scoring", weight=0.2, does="score layers, heads, neurons and MLPs", methods=PRUNES
    ),
    StageInfo(name="pruning", weight=0.1, does="remove the least important units", methods=PRUNES),
    StageInfo(
        name="distilling", weight=0.6, does="distil the original into the student", methods=DISTILS
    ),
    StageInfo(name="evaluating", weight=0.2, does="measure the original and the result"),
    StageInfo(name="writing_card", weight=0.05, does="write the model, served files and card"),
    StageInfo(
        name="publishing", weight=0.05, does="upload the folder to the Hub", when_publishing=True
    ),
)
STAGE_WEIGHTS: dict[str, float] = {stage.name: stage.weight for stage in STAGE_TABLE}
STAGES: tuple[str, ...] = tuple(STAGE_WEIGHTS)


def overall_progress(stages: list[str], stage: str, fraction: float) -> float:
    """A job's progress 0..1 from the stage it is in and that stage's own fraction."""
    total = sum(STAGE_WEIGHTS[s] for s in stages)
    done = 0.0
    for name in stages:
        if name == stage:
            return min(1.0, (done + STAGE_WEIGHTS[name] * max(0.0, min(1.0, fraction))) / total)
        done += STAGE_WEIGHTS[name]
    return min(1.0, done / total)
