"""One entry point for every importance method (:func:`score_importance`)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from slimformer.errors import InvalidSpec
from slimformer.importance.activations import score_activations
from slimformer.importance.base import CancelFn, Importance, ImportanceMethod, LossKind, ProgressFn
from slimformer.importance.baselines import score_magnitude, score_random
from slimformer.importance.flap import score_flap
from slimformer.importance.michel import score_michel
from slimformer.importance.obs import score_obs

METHODS: tuple[str, ...] = ImportanceMethod.__args__


def score_importance(
    model: nn.Module,
    batches: Iterable[dict],
    *,
    method: ImportanceMethod = "michel",
    loss: LossKind = "auto",
    normalize: bool = True,
    normalize_neurons: bool = False,
    per_example: bool = True,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Importance:
    """Score every head, FFN neuron and whole MLP of ``model``.

    Args:
        model: a model of a supported family; it stays on its device and is left unchanged.
        batches: tokenised calibration batches (``labels`` present for Michel's task loss).
        method: ``michel`` (gradient of the loss w.r.t. gates, Michel et al. 2019),
            ``activations`` (Minitron: activation magnitudes, forward passes only), ``flap``
            (FLAP's fluctuation metric, forward passes only, with the means for bias
            compensation), ``obs`` (the output error left after a least-squares refit, forward
            passes only; keeps the Gram matrices for reconstruction), ``magnitude`` (weight
            norms) or ``random`` (seeded, a baseline).
        loss: Michel only: ``task`` needs labels; ``label_free`` never uses them; ``auto`` picks
            ``task`` when the first batch has labels and the model has a task head.
        normalize: Michel and magnitude: layer-wise L2 normalisation of head scores (and of the
            MLP scores across layers).
        normalize_neurons: the same normalisation for FFN neurons (off by default).
        per_example: Michel: a gate per example (the paper's E_x |dL(x)/d xi|).
        seed: ``random`` only.

    Returns:
        :class:`Importance`.

    Raises:
        InvalidSpec: the task loss without labels, an empty calibration set, an unknown method.
        Cancelled: ``should_cancel`` returned true between batches.
    """
    if method == "random":
        return score_random(model, seed=seed)
    if method == "magnitude":
        return score_magnitude(model, normalize=normalize, normalize_neurons=normalize_neurons)
    if method == "michel":
        return score_michel(
            model,
            batches,
            loss=loss,
            normalize=normalize,
            normalize_neurons=normalize_neurons,
            per_example=per_example,
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
    if method == "activations":
        return score_activations(
            model, batches, on_progress=on_progress, should_cancel=should_cancel
        )
    if method == "flap":
        return score_flap(model, batches, on_progress=on_progress, should_cancel=should_cancel)
    if method == "obs":
        return score_obs(model, batches, on_progress=on_progress, should_cancel=should_cancel)
    raise InvalidSpec(
        f"unknown importance method {method!r}; choose {', '.join(METHODS)}",
        details={"field": "importance"},
    )
