"""Pruning for a quantized target: every kept FFN width a multiple of the group size
(``PruningTarget.width_multiple``), in each layout; no engine needed."""

from __future__ import annotations

import pytest

from slimformer.architectures import ModelAdapter
from slimformer.importance import score_importance
from slimformer.pruning import PruningTarget, plan_pruning, prune_model
from testkit.tiny_models import tiny_batch, tiny_model

# 3 layers of 160 neurons: 30% leaves 112 per layer, not a multiple of 32
WIDTHS = dict(hidden_size=64, head_dim=16, intermediate_size=160, num_hidden_layers=3)


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_kept_ffn_widths_are_multiples_of_the_group(layout):
    model = tiny_model("llama", "causal-lm", **WIDTHS)
    scores = score_importance(model, [tiny_batch("llama", head="causal-lm")])
    free = plan_pruning(model, scores, PruningTarget(ffn=0.3), layout=layout)
    kept_free = [160 - len(free.neurons.get(i, [])) for i in range(3)]
    assert any(k % 32 for k in kept_free)  # unconstrained, the plan leaves odd widths
    target = PruningTarget(ffn=0.3, width_multiple=32)
    plan = plan_pruning(model, scores, target, layout=layout)
    kept = [160 - len(plan.neurons.get(i, [])) for i in range(3)]
    assert all(k % 32 == 0 and 32 <= k <= 160 for k in kept), kept
    # close to what was asked: within half a step per layer
    assert abs(sum(kept) - sum(kept_free)) <= 16 * 3
    if layout == "uniform":
        assert len(set(kept)) == 1
    # the lowest-scored neurons go: every neuron removed scores at most what a kept one does
    for layer, removed in plan.neurons.items():
        if not removed:
            continue
        layer_scores = scores.neurons[layer]
        kept_ids = sorted(set(range(160)) - set(removed))
        assert max(float(layer_scores[i]) for i in removed) <= min(
            float(layer_scores[i]) for i in kept_ids
        )
    prune_model(model, plan, layout=layout)
    widths = [s.intermediate for s in ModelAdapter(model).all_sizes()]
    assert widths == kept
