import pytest
import torch

from slimformer.architectures import ModelAdapter
from slimformer.errors import Cancelled, InvalidSpec
from slimformer.importance import Gates, compute_loss, gated, score_importance
from slimformer.models import mean_pool, model_task
from testkit.tiny_models import tiny_batch, tiny_model

# central differences: O(EPS^2) error; Llama's RMSNorm computes in float32 even in a float64 model
EPS = 1e-3


def _original_embeddings(model, batch):
    if (
        model_task(model) == "feature-extraction"
    ):  # the label-free loss compares with the original embeddings
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
            return torch.nn.functional.normalize(mean_pool(out, batch["attention_mask"]), dim=-1)
    return None


def _loss_with_gate(model, batch, kind, group, layer, unit, value):
    reference = _original_embeddings(model, batch)
    gates = Gates(ModelAdapter(model), requires_grad=False)
    with torch.no_grad():
        getattr(gates, group)[layer][unit] = value
        with gates:
            return float(compute_loss(model, batch, kind, reference))


def _finite_difference(model, batch, kind, group, layer, unit):
    plus = _loss_with_gate(model, batch, kind, group, layer, unit, 1 + EPS)
    minus = _loss_with_gate(model, batch, kind, group, layer, unit, 1 - EPS)
    return (plus - minus) / (2 * EPS)


@pytest.mark.parametrize(
    ("family", "head", "kind", "rtol"),
    [
        ("bert", "classification", "task", 1e-3),
        ("bert", "classification", "label_free", 1e-3),
        ("gpt2", "causal-lm", "task", 1e-3),
        ("gpt2", "causal-lm", "label_free", 1e-3),
        ("distilbert", "base", "label_free", 1e-3),
        # Llama's RMSNorm computes in float32 even in a float64 model, which limits the difference
        # quotient
        ("llama", "causal-lm", "task", 1e-2),
    ],
)
def test_gate_gradients_match_finite_differences(family, head, kind, rtol):
    model = tiny_model(family, head).double()
    batch = tiny_batch(family, head=head, labels=kind == "task")
    scores = score_importance(model, [batch], loss=kind, normalize=False, per_example=False)
    checked = 0
    for layer in range(len(scores.heads)):
        for unit in range(len(scores.heads[layer])):
            fd = abs(_finite_difference(model, batch, kind, "heads", layer, unit))
            assert abs(float(scores.heads[layer][unit]) - fd) <= rtol * max(fd, 1e-8), (layer, unit)
            checked += 1
        for unit in (0, 17, 36):
            fd = abs(_finite_difference(model, batch, kind, "neurons", layer, unit))
            assert abs(float(scores.neurons[layer][unit]) - fd) <= rtol * max(fd, 1e-8), (
                layer,
                unit,
            )
        fd = abs(_finite_difference(model, batch, kind, "mlps", layer, 0))
        assert abs(float(scores.mlps[layer]) - fd) <= rtol * max(fd, 1e-8), layer
    assert checked >= 8
    assert all(float(h.sum()) > 0 for h in scores.heads), "label-free scores must not vanish"


def test_per_example_scores_are_the_mean_of_each_examples_own_gradient():
    model = tiny_model("bert").double()
    batch = tiny_batch("bert", batch_size=3)
    batch["attention_mask"][:] = (
        1  # no padding, so a one-row batch sees what the row saw in the batch
    )
    scores = score_importance(model, [batch], normalize=False, per_example=True)
    expected = torch.zeros_like(scores.heads[1])
    for row in range(3):
        single = {k: v[row : row + 1] for k, v in batch.items()}
        for unit in range(4):
            expected[unit] += abs(_finite_difference(model, single, "task", "heads", 1, unit)) / 3
    torch.testing.assert_close(scores.heads[1], expected, rtol=1e-3, atol=1e-9)


def test_layer_normalisation_gives_unit_norm_per_layer_and_is_optional():
    model = tiny_model("bert")
    batch = tiny_batch("bert")
    normalised = score_importance(model, [batch])
    raw = score_importance(model, [batch], normalize=False)
    for layer_scores in normalised.heads:
        assert float(layer_scores.norm()) == pytest.approx(1.0, rel=1e-5)
    assert any(abs(float(r.norm()) - 1.0) > 1e-3 for r in raw.heads)
    # same order within a layer either way
    for n, r in zip(normalised.heads, raw.heads, strict=True):
        assert torch.equal(torch.argsort(n), torch.argsort(r))


def test_scoring_leaves_the_model_as_it_was():
    model = tiny_model("bert").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    score_importance(model, [tiny_batch("bert")])
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_gates_at_one_change_nothing_and_zero_gates_change_outputs():
    model = tiny_model("qwen3")
    batch = tiny_batch("qwen3", labels=False)
    with torch.no_grad():
        plain = model(**batch).logits
        with Gates(ModelAdapter(model), requires_grad=False):
            with_gates = model(**batch).logits
        with gated(model, heads={0: [0, 1]}):
            switched_off = model(**batch).logits
    assert torch.equal(plain, with_gates)
    assert not torch.allclose(plain, switched_off)


def test_task_loss_without_labels_is_a_clear_error():
    model = tiny_model("bert")
    with pytest.raises(InvalidSpec, match="needs labels"):
        score_importance(model, [tiny_batch("bert", labels=False)], loss="task")


def test_empty_calibration_data_is_a_clear_error():
    with pytest.raises(InvalidSpec, match="calibration data"):
        score_importance(tiny_model("bert"), [])


def test_cancellation_stops_between_batches():
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        score_importance(tiny_model("bert"), [tiny_batch("bert")] * 5, should_cancel=should_cancel)
    assert len(calls) == 2


def test_random_and_magnitude_are_deterministic_baselines():
    model = tiny_model("gpt2")
    a = score_importance(model, [], method="random", seed=3)
    b = score_importance(model, [], method="random", seed=3)
    c = score_importance(model, [], method="random", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.heads, b.heads, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.heads, c.heads, strict=True))
    mag = score_importance(model, [], method="magnitude")
    assert all(len(h) == 4 and bool((h > 0).all()) for h in mag.heads)


def test_magnitude_ranks_a_shrunken_head_last():
    model = tiny_model("bert")
    attn = model.bert.encoder.layer[1].attention
    with torch.no_grad():
        for proj in (attn.self.query, attn.self.key, attn.self.value):
            proj.weight[16:24] *= 0.01  # head 2
        attn.output.dense.weight[:, 16:24] *= 0.01
    mag = score_importance(model, [], method="magnitude")
    assert int(torch.argmin(mag.heads[1])) == 2


@pytest.mark.gpu
def test_scoring_on_cuda_with_bf16_autocast_is_finite_and_agrees_in_order():
    model = tiny_model("llama", "causal-lm")
    batch = tiny_batch("llama", head="causal-lm")
    cpu = score_importance(model, [batch])
    gpu = score_importance(model.cuda(), [batch])
    for c, g in zip(cpu.heads, gpu.heads, strict=True):
        assert torch.isfinite(g).all()
        assert torch.corrcoef(torch.stack([c, g]))[0, 1] > 0.8
