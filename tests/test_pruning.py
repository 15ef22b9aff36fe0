import pytest
import torch

from slimformer.architectures import ModelAdapter
from slimformer.errors import InvalidSpec
from slimformer.importance import gated, score_importance
from slimformer.models import count_macs, count_parameters
from slimformer.pruning import (
    PruningPlan,
    PruningTarget,
    iterative_prune,
    plan_pruning,
    predicted_parameters,
    prune_model,
)
from testkit.tiny_models import CONFIGS, DECODERS, tiny_batch, tiny_model

CASES = (
    [(f, "classification") for f in CONFIGS]
    + [(f, "base") for f in CONFIGS]
    + [(f, "causal-lm") for f in DECODERS]
)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def _real(out, batch):
    """Outputs at real (unpadded) positions: padded positions carry no meaning."""
    return out[batch["attention_mask"].bool()] if out.dim() == 3 else out


@pytest.mark.parametrize(("family", "head"), CASES)
def test_physical_pruning_equals_gating_and_params_drop_as_planned(family, head):
    model = tiny_model(family, head)
    batch = tiny_batch(family, head=head, labels=head != "base")
    scores = score_importance(model, [batch])
    plan = plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1))
    assert plan.heads and plan.neurons and plan.mlps
    with torch.no_grad():
        original = model(**_inputs(batch))[0]
        with gated(model, heads=plan.heads, neurons=plan.neurons, mlps=plan.mlps):
            reference = model(**_inputs(batch))[0]
    before = count_parameters(model)
    predicted = predicted_parameters(model, plan)
    prune_model(model, plan, layout="per_layer")
    with torch.no_grad():
        pruned = model(**_inputs(batch))[0]
    assert pruned.shape == original.shape
    assert not torch.allclose(_real(original, batch), _real(reference, batch), atol=1e-3), (
        "the plan changed nothing"
    )
    assert (_real(pruned, batch) - _real(reference, batch)).abs().max() <= 1e-4
    assert count_parameters(model) == predicted < before
    sizes = ModelAdapter(model).all_sizes()
    assert sum(s.heads for s in sizes) == sum(len(s) for s in scores.heads) - sum(
        len(v) for v in plan.heads.values()
    )
    assert [s.mlp_removed for s in sizes].count(True) == 1


def test_config_is_rewritten_with_the_weights():
    model = tiny_model("bert")
    plan = PruningPlan(heads={0: [1, 2], 2: [0]}, neurons={1: list(range(10))}, mlps=[2])
    prune_model(model, plan, layout="per_layer")
    config = model.config.to_dict()
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith(
        "modeling_slimformer."
    )
    layers = config["per_layer_config"]
    assert layers["0"]["num_attention_heads"] == 2
    assert layers["1"]["intermediate_size"] == 27
    assert layers["2"]["skip"] == ["mlp"] and layers["2"]["num_attention_heads"] == 3
    assert config["head_dim"] == 8


def test_global_ranking_follows_scores_across_layers():
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random", seed=0)
    scores.heads = [
        torch.tensor([0.9, 0.8, 0.7, 0.6]),
        torch.tensor([0.1, 0.2, 0.95, 0.3]),
        torch.tensor([0.5] * 4),
    ]
    plan = plan_pruning(model, scores, PruningTarget(heads=0.25))  # 3 of 12 heads
    assert plan.heads == {1: [0, 1, 3]}
    per_layer = plan_pruning(model, scores, PruningTarget(heads=0.25, ranking="per_layer"))
    assert per_layer.heads == {0: [3], 1: [0], 2: [0]}


def test_global_ranking_never_empties_a_layer():
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random", seed=0)
    scores.heads = [
        torch.tensor([0.01, 0.02, 0.03, 0.04]),
        torch.tensor([0.5] * 4),
        torch.tensor([0.6] * 4),
    ]
    plan = plan_pruning(model, scores, PruningTarget(heads=0.5))  # 6 heads: layer 0 may lose only 3
    assert len(plan.heads[0]) == 3
    assert sum(len(v) for v in plan.heads.values()) == 6


def test_a_target_that_would_remove_every_head_is_refused():
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random")
    with pytest.raises(InvalidSpec, match="empty a layer's attention"):
        plan_pruning(model, scores, PruningTarget(heads=0.9))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_fractions_outside_zero_one_are_refused(bad):
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random")
    with pytest.raises(InvalidSpec, match=r"fraction in \[0, 1\)"):
        plan_pruning(model, scores, PruningTarget(heads=bad))
    with pytest.raises(InvalidSpec, match=r"fraction in \[0, 1\)"):
        plan_pruning(model, scores, PruningTarget(ffn=bad))


def test_uniform_layout_explains_what_a_family_cannot_express():
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random")
    with pytest.raises(InvalidSpec, match="uniform layout cannot express head pruning for bert"):
        plan_pruning(model, scores, PruningTarget(heads=0.5), layout="uniform")
    with pytest.raises(InvalidSpec, match="cannot remove whole MLPs"):
        plan_pruning(model, scores, PruningTarget(whole_mlps=1), layout="uniform")


def test_uniform_layout_writes_stock_config_values():
    model = tiny_model("bert")
    scores = score_importance(model, [], method="random")
    prune_model(
        model,
        plan_pruning(model, scores, PruningTarget(ffn=0.3), layout="uniform"),
        layout="uniform",
    )
    assert model.config.intermediate_size == 26
    assert (
        "per_layer_config" not in model.config.to_dict()
        or not model.config.to_dict()["per_layer_config"]
    )
    assert not getattr(model.config, "auto_map", None)

    llama = tiny_model("llama", "causal-lm")
    scores = score_importance(llama, [], method="random")
    plan = plan_pruning(llama, scores, PruningTarget(heads=0.5, ffn=0.3), layout="uniform")
    prune_model(llama, plan, layout="uniform")
    assert (
        llama.config.num_attention_heads,
        llama.config.num_key_value_heads,
        llama.config.head_dim,
    ) == (2, 1, 8)
    assert llama.config.intermediate_size == 26


def test_uniform_llama_head_count_must_divide_hidden_size():
    def six_head_llama():
        return tiny_model(
            "llama",
            "causal-lm",
            num_attention_heads=6,
            num_key_value_heads=6,
            hidden_size=30,
            head_dim=6,
        )

    model = six_head_llama()
    scores = score_importance(model, [], method="random")
    prune_model(
        model,
        plan_pruning(model, scores, PruningTarget(heads=0.5), layout="uniform"),
        layout="uniform",
    )
    assert model.config.num_attention_heads == 3  # 30 % 3 == 0
    model = six_head_llama()
    with pytest.raises(
        InvalidSpec, match="divide hidden_size"
    ):  # 4 heads: 30 % 4 != 0, refused before any change
        plan_pruning(model, scores, PruningTarget(heads=0.34), layout="uniform")


def test_gqa_query_head_mode_removes_equal_heads_per_group():
    model = tiny_model("qwen3", "causal-lm")
    scores = score_importance(model, [tiny_batch("qwen3", head="causal-lm")])
    plan = plan_pruning(model, scores, PruningTarget(heads=0.5, gqa_unit="query_heads"))
    for heads in plan.heads.values():
        assert sorted(h // 2 for h in heads) == [0, 1]  # one from each KV group
    prune_model(model, plan)
    assert all(s.kv_heads == 2 and s.heads == 2 for s in ModelAdapter(model).all_sizes())


def test_gqa_group_mode_removes_whole_kv_groups():
    model = tiny_model("mistral", "causal-lm")
    scores = score_importance(model, [tiny_batch("mistral", head="causal-lm")])
    plan = plan_pruning(model, scores, PruningTarget(heads=0.5))
    for heads in plan.heads.values():
        assert heads in ([0, 1], [2, 3])
    prune_model(model, plan)
    assert all(s.kv_heads == 1 for s in ModelAdapter(model).all_sizes())


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_macs_budget_is_met_and_not_overshot(family):
    head = "causal-lm" if family == "llama" else "classification"
    model = tiny_model(family, head)
    scores = score_importance(model, [tiny_batch(family, head=head)])
    full = count_macs(model, 32)
    plan = plan_pruning(model, scores, PruningTarget(macs_budget=0.7), seq_len=32)
    prune_model(model, plan)
    kept = count_macs(model, 32) / full
    assert 0.55 < kept <= 0.7


def test_params_budget_is_met():
    model = tiny_model("bert")
    scores = score_importance(model, [tiny_batch("bert")])
    full = count_parameters(model)
    plan = plan_pruning(model, scores, PruningTarget(params_budget=0.9))
    assert predicted_parameters(model, plan) <= 0.9 * full


def test_iterative_schedule_records_the_curve_and_reaches_the_target():
    model = tiny_model("bert")
    batch = tiny_batch("bert", batch_size=8)

    def score(m):
        return score_importance(m, [batch])

    result = iterative_prune(
        model, score, lambda m: 1.0, PruningTarget(heads=0.5, ffn=0.3), step=0.2
    )
    curve = result.record.curve
    assert curve[0]["heads_removed"] == 0.0 and len(curve) >= 3
    assert [p["heads_removed"] for p in curve] == sorted(p["heads_removed"] for p in curve)
    sizes = ModelAdapter(result.model).all_sizes()
    assert sum(s.heads for s in sizes) == 6  # 50% of 12
    assert sum(s.intermediate for s in sizes) == round(3 * 37 * 0.7)
    assert len(result.importance) == len(curve) - 1  # re-scored before every step


def test_iterative_schedule_stops_before_the_metric_floor():
    model = tiny_model("bert")
    batch = tiny_batch("bert", batch_size=8)
    metrics = iter([1.0, 0.95, 0.92, 0.5, 0.4, 0.3, 0.2])
    result = iterative_prune(
        model,
        lambda m: score_importance(m, [batch]),
        lambda m: next(metrics),
        PruningTarget(heads=0.7),
        step=0.2,
        metric_floor=0.9,
    )
    curve = result.record.curve
    assert [p["kept"] for p in curve] == [True, True, True, False]
    sizes = ModelAdapter(result.model).all_sizes()
    # the model is the one of the last kept step
    assert 1 - sum(s.heads for s in sizes) / 12 == pytest.approx(curve[2]["heads_removed"])
    removed = sum(len(v) for v in result.record.removed_heads().values())
    assert removed == 12 - sum(s.heads for s in sizes)


def test_iterative_schedule_leaves_the_callers_model_unchanged():
    model = tiny_model("bert")
    before = model.config.to_dict()
    batch = tiny_batch("bert", batch_size=8)
    metrics = iter([1.0, 0.1])  # the first step falls below the floor: nothing is kept
    result = iterative_prune(
        model,
        lambda m: score_importance(m, [batch]),
        lambda m: next(metrics),
        PruningTarget(heads=0.5),
        step=0.25,
    )
    assert model.config.to_dict() == before and not getattr(model.config, "auto_map", None)
    assert sum(s.heads for s in ModelAdapter(result.model).all_sizes()) == 12
