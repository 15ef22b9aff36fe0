"""The distillation recipe of each kind of student: the one place where default settings are chosen.

A job spec (or the command line) leaves ``temperature``, ``alpha``, ``hidden_loss`` and
``learning_rate`` unset to get the recipe of its student; a value it gives wins. The pipeline,
``slimformer distill`` and ``bench/distillation.py`` all resolve settings here, so the benchmark's
figures are what a user with the defaults gets. The evidence for each choice is in
``docs/distillation.md`` ("Recipes") and ``docs/benchmarks.md``.

Student kinds:

* ``layer_dropped``: a copy of the teacher with some of its layers (``student: {layers: K}``). It
  starts far from its teacher (79.2% against 87.96% on SST-2 for 3 of 6 MiniLM layers), so it takes
  a larger step size (1e-4; a 150-step probe reached 82.7% at 5e-5, 85.0% at 1e-4, 86.0% at 2e-4)
  and aligns each kept layer with the teacher layer it came from (cosine of hidden states);
* ``pruned``: the teacher after pruning (``method: prune_distill``). Its layers are the teacher's
  own, narrower, and it starts close (87.6% at 50% heads + 50% FFN): the smaller step size 5e-5
  with the same alignment;
* ``named``: a smaller model of its own (``student: {id: MODEL}``). Its layers were not cut from the
  teacher's, so there is no layer to align with (a learned projection per layer would start from
  nothing): soft targets and gold labels only, at 1e-4, the step size of a student far from its
  teacher. Not measured by the benchmark (no such student ships with the fixtures).

Causal LMs (any kind) train on batches of 8 sequences instead of 32, so that a budget of minutes
holds more than a handful of steps: a step of SmolLM2-135M and its 15-layer student over 8 x 128
tokens took about 100 s on a loaded 2-core machine. A choice of cost, not a measured optimum.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from slimformer.distill.config import DistillConfig
from slimformer.errors import InvalidSpec

StudentKind = Literal["layer_dropped", "pruned", "named"]
STUDENT_KINDS: tuple[str, ...] = StudentKind.__args__

# spec fields a recipe fills when they are left unset (None)
RECIPE_FIELDS: tuple[str, ...] = ("temperature", "alpha", "hidden_loss", "learning_rate")


@dataclass(frozen=True)
class Recipe:
    """Default settings of one kind of student. ``hidden_loss`` ``"none"`` means no alignment."""

    temperature: float
    alpha: float
    hidden_loss: Literal["cosine", "mse", "none"]
    learning_rate: float
    why: str


RECIPES: dict[str, Recipe] = {
    "layer_dropped": Recipe(
        temperature=2.0,
        alpha=0.5,
        hidden_loss="cosine",
        learning_rate=1e-4,
        why="far from its teacher: larger steps; each kept layer aligned with its teacher layer",
    ),
    "pruned": Recipe(
        temperature=2.0,
        alpha=0.5,
        hidden_loss="cosine",
        learning_rate=5e-5,
        why="the teacher's own layers, narrower, close to the teacher: smaller steps, aligned",
    ),
    "named": Recipe(
        temperature=2.0,
        alpha=0.5,
        hidden_loss="none",
        learning_rate=1e-4,
        why="layers of its own: no layer to align with; soft targets and gold labels only",
    ),
}

# settings that depend on the task rather than the student (DistillConfig fields)
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "text-generation": {"batch_size": 8},
}


@dataclass(frozen=True)
class ResolvedRecipe:
    """The settings a run uses and where each came from.

    ``values`` holds the recipe fields as used (``hidden_loss`` ``"none"`` when off);
    ``from_recipe`` names the fields the caller left unset.
    """

    student_kind: str
    values: dict[str, Any]
    from_recipe: list[str]
    config: DistillConfig

    def to_dict(self) -> dict:
        """The report's ``distillation.recipe`` entry."""
        return {
            "student_kind": self.student_kind,
            "values": dict(self.values),
            "from_recipe": list(self.from_recipe),
            "batch_size": self.config.batch_size,
            "why": RECIPES[self.student_kind].why,
        }


def resolve_recipe(
    student_kind: str,
    task: str,
    *,
    temperature: float | None = None,
    alpha: float | None = None,
    hidden_loss: str | None = None,
    learning_rate: float | None = None,
    **config: Any,
) -> ResolvedRecipe:
    """The :class:`DistillConfig` of a run: the recipe of ``student_kind``, then what was given.

    Args:
        student_kind: ``layer_dropped``, ``pruned`` or ``named``.
        task: the models' task (causal LMs get their batch size here).
        temperature, alpha, hidden_loss, learning_rate: None for the recipe's value; a value wins.
            ``hidden_loss`` is ``"cosine"``, ``"mse"`` or ``"none"`` (no alignment).
        **config: any other :class:`DistillConfig` field (``epochs``, ``max_minutes``, ``seed``...).

    Returns:
        :class:`ResolvedRecipe`.

    Raises:
        InvalidSpec: an unknown student kind or config field.

    Example:
        >>> resolve_recipe("layer_dropped", "text-classification").config.learning_rate
        0.0001
    """
    if student_kind not in RECIPES:
        raise InvalidSpec(
            f"unknown student kind {student_kind!r}; choose one of {', '.join(STUDENT_KINDS)}"
        )
    recipe = RECIPES[student_kind]
    given = {
        "temperature": temperature,
        "alpha": alpha,
        "hidden_loss": hidden_loss,
        "learning_rate": learning_rate,
    }
    values = {k: getattr(recipe, k) if v is None else v for k, v in given.items()}
    from_recipe = [k for k, v in given.items() if v is None]
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise InvalidSpec(f"unknown distillation settings: {', '.join(unknown)}")
    settings = {**TASK_SETTINGS.get(task, {}), **config}
    loss = values["hidden_loss"]
    built = DistillConfig(
        temperature=float(values["temperature"]),
        alpha=float(values["alpha"]),
        hidden_loss=None if loss == "none" else loss,
        learning_rate=float(values["learning_rate"]),
        **settings,
    )
    return ResolvedRecipe(student_kind, values, from_recipe, built)
