"""OBS importance and least-squares reconstruction of pruned layers (tiny random decoders)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from test_llm_pruning import _lm, _logits, _projection_outputs, _windows

from slimformer.architectures import ModelAdapter
from slimformer.artifacts import save_model_folder
from slimformer.importance import input_grams, score_importance
from slimformer.models import count_parameters
from slimformer.pruning import (
    PruningTarget,
    plan_pruning,
    predicted_parameters,
    prune_model,
    refit_keys,
)
from slimformer.spec import CAUSAL_LM_DEFAULTS, PruneSpec


def _twin_neurons(model, layer: int, a: int, b: int) -> None:
    """Make FFN neuron ``b`` of ``layer`` compute exactly what neuron ``a`` computes."""
    mlp = ModelAdapter(model).layers[layer].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[b] = mlp.gate_proj.weight[a]
        mlp.up_proj.weight[b] = mlp.up_proj.weight[a]


def test_obs_scores_a_neuron_with_a_twin_as_nearly_free_to_remove():
    model = _lm()
    _twin_neurons(model, 1, 3, 7)
    batches = _windows(4, 24)
    obs = score_importance(model, batches, method="obs")
    activations = score_importance(model, batches, method="activations")
    scores = obs.neurons[1]
    others = torch.cat([scores[:3], scores[4:7], scores[8:]])
    # the refit moves a twin's weight onto the other twin: removing either costs almost nothing
    assert scores[3] < 0.1 * others.median() and scores[7] < 0.1 * others.median()
    # activation magnitude sees two busy neurons
    a = activations.neurons[1]
    assert a[3] > a.median() * 0.1 and a[7] > a.median() * 0.1
    assert set(obs.grams) == {(i, p) for i in range(2) for p in ("attention", "mlp")}


def _output_error(model, original, batches, layer: int) -> float:
    return float(
        (_projection_outputs(model, batches, layer) - _projection_outputs(original, batches, layer))
        .pow(2)
        .mean()
    )


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_reconstruction_reproduces_the_layers_output_better_than_bias_compensation(family):
    original = _lm(family)
    with torch.no_grad():  # inputs with a mean away from 0, which compensation puts back
        for name, p in original.named_parameters():
            if p.dim() == 1 and name.endswith("bias"):
                p.add_(0.5)
    batches = _windows(6, 24)
    flap = score_importance(original, batches, method="flap")
    errors = {}
    for name, settings in {
        "plain": {"bias_compensation": False},
        "compensation": {"bias_compensation": True},
        "reconstruction": {"bias_compensation": False, "reconstruction": True},
    }.items():
        model = copy.deepcopy(original)
        # layer 0 keeps its shape, so layer 1 sees the original's input
        target = PruningTarget(heads=0.25, ffn=0.25, keep_first_layers=1, **settings)
        plan = plan_pruning(model, flap, target)
        assert plan.grams is None  # FLAP measured none: the caller measures them
        if settings.get("reconstruction"):
            assert refit_keys(plan) == [(1, "attention"), (1, "mlp")]
            plan.grams = input_grams(original, batches, refit_keys(plan))
        predicted = predicted_parameters(model, plan)
        prune_model(model, plan)
        assert count_parameters(model) == predicted
        errors[name] = _output_error(model, original, batches, 1)
    assert errors["reconstruction"] < 0.9 * errors["compensation"] < errors["plain"], errors


def test_obs_reconstructs_by_default_and_the_switch_turns_it_off():
    model = _lm()
    batches = _windows(3)
    obs = score_importance(model, batches, method="obs")
    activations = score_importance(model, batches, method="activations")
    assert plan_pruning(model, obs, PruningTarget(ffn=0.3)).grams is obs.grams
    assert plan_pruning(model, obs, PruningTarget(ffn=0.3, reconstruction=False)).grams is None
    assert plan_pruning(model, activations, PruningTarget(ffn=0.3)).grams is None
    assert CAUSAL_LM_DEFAULTS["importance"] == "obs"
    with pytest.raises(ValueError, match="iterative schedule needs importance obs"):
        PruneSpec(heads=0.2, schedule="iterative", importance="activations", reconstruction=True)


@pytest.mark.parametrize(
    ("family", "layout", "bias_flags"),
    [
        ("llama", "per_layer", None),
        ("llama", "uniform", True),
        ("mistral", "uniform", False),  # no stock bias flag: the refit goes through the origin
        ("qwen2", "per_layer", None),
    ],
)
def test_obs_pruned_models_reload_with_identical_logits(tmp_path, family, layout, bias_flags):
    model = _lm(family, num_hidden_layers=3)
    batches = _windows(3)
    scores = score_importance(model, batches, method="obs")
    if layout == "uniform":
        target = PruningTarget(heads=0.5, ffn=0.3, ranking="per_layer")
    else:
        target = PruningTarget(heads=0.25, ffn=0.3, ranking="adaptive", keep_first_layers=1)
    plan = plan_pruning(model, scores, target, layout=layout)
    assert plan.grams is not None and plan.reconstruct_bias == (bias_flags is not False)
    predicted = predicted_parameters(model, plan)
    prune_model(model, plan, layout=layout)
    if layout == "per_layer":  # the uniform layout's stock bias flags add q/k/v biases too
        assert count_parameters(model) == predicted
    expected = _logits(model, batches)
    save_model_folder(model, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    if bias_flags is not None:
        assert bool(config.get("mlp_bias")) == bias_flags and "auto_map" not in config
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", trust_remote_code=layout == "per_layer"
    ).eval()
    assert count_parameters(reloaded) == count_parameters(model)
    torch.testing.assert_close(_logits(reloaded, batches), expected, rtol=0, atol=1e-5)


def test_budget_plans_with_reconstruction_meet_the_budget_they_measured():
    model = _lm()
    batches = _windows(3)
    scores = score_importance(model, batches, method="obs")
    full = count_parameters(model)
    plan = plan_pruning(model, scores, PruningTarget(params_budget=0.8, ranking="adaptive"))
    prune_model(model, plan)
    assert count_parameters(model) <= 0.8 * full


def test_the_iterative_schedule_refits_every_step_with_obs():
    from slimformer.pruning import iterative_prune

    model = _lm()
    batches = _windows(3)
    seen = []

    def score(m):
        importance = score_importance(m, batches, method="obs")
        seen.append(importance.grams is not None)
        return importance

    result = iterative_prune(
        model, score, lambda m: 1.0, PruningTarget(ffn=0.3), step=0.15, metric_floor=0.5
    )
    assert len(seen) >= 2 and all(seen)
    # refitted down projections carry the (non-zero) bias the refit sets
    adapter = ModelAdapter(result.model)
    biases = [adapter.mlp_down(i).bias for i in range(adapter.num_layers)]
    assert all(b is not None and bool(b.abs().max() > 0) for b in biases)
