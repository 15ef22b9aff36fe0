"""Decoder LLMs: plain text, packed windows, the streamed loss, the importance methods for LLMs
(activations, FLAP with bias compensation, depth) and what their pruned models reload as."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from slimformer.architectures import ModelAdapter
from slimformer.artifacts import save_model_folder
from slimformer.data import load_hub_dataset, load_text_file
from slimformer.errors import DatasetError, InvalidSpec
from slimformer.evaluation import score_next_tokens
from slimformer.importance import (
    METHODS,
    Importance,
    score_depth,
    score_importance,
)
from slimformer.models import count_parameters
from slimformer.pruning import (
    PruningTarget,
    drop_layers,
    plan_depth,
    plan_pruning,
    predicted_parameters,
    prune_model,
)
from slimformer.spec import CAUSAL_LM_DEFAULTS, UPLOAD_FORMATS, JobSpec
from slimformer.text import (
    next_token_loss,
    next_token_stats,
    pack_texts,
    read_documents,
    split_documents,
)
from testkit.tiny_models import (
    VOCAB,
    char_tokenizer,
    save_tiny_causal_lm,
    tiny_batch,
    tiny_model,
    write_story_txt,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _lm(family: str = "llama", **overrides):
    return tiny_model(family, "causal-lm", **overrides)


def _windows(n: int = 3, length: int = 16, seed: int = 1) -> list[dict]:
    """Packed-text batches: full windows, no padding, labels = inputs."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=gen)
    return [
        {
            "input_ids": ids[i : i + 1],
            "attention_mask": torch.ones_like(ids[i : i + 1]),
            "labels": ids[i : i + 1].clone(),
        }
        for i in range(n)
    ]


def _logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in batches
            ]
        )


# -- plain text and packing ------------------------------------------------------------------------


def test_txt_files_hold_one_document_per_blank_line_separated_block(tmp_path):
    assert UPLOAD_FORMATS[".txt"] == "text"
    path = tmp_path / "d.txt"
    path.write_text(" = Title = \n \n First line\nsecond line.\n\n\n\t\nLast one.\r\n")
    assert read_documents(path) == ["= Title =", "First line\nsecond line.", "Last one."]
    data = load_text_file(path)
    assert data.texts == ["= Title =", "First line\nsecond line.", "Last one."]
    assert data.labels is None and data.text_column == "text"
    assert load_text_file(path, max_samples=2).texts == data.texts[:2]
    assert split_documents("a\n\nb") == ["a", "b"]


def test_txt_files_refuse_columns_and_empty_content(tmp_path):
    path = write_story_txt(tmp_path / "s.txt")
    with pytest.raises(DatasetError, match="no label column 'label'"):
        load_text_file(path, label_column="label")
    assert len(load_text_file(path, label_column="label", labels=False)) == 40
    (tmp_path / "blank.txt").write_text(" \n\n \n")
    with pytest.raises(DatasetError, match="holds no text"):
        load_text_file(tmp_path / "blank.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_text_file(tmp_path / "bad.txt")


def test_packing_joins_documents_with_eos_and_cuts_whole_windows():
    tok = char_tokenizer()
    docs = ["abc", "", "defg", "hi"]
    packed = pack_texts(tok, docs, seq_len=4)
    stream = [13, 14, 15, 2, 16, 17, 18, 19, 2, 20, 21]  # a b c </s> d e f g </s> h i
    assert len(stream) == 11
    # the last 3 tokens make no whole window
    assert packed.input_ids.tolist() == [stream[0:4], stream[4:8]]
    assert torch.equal(packed.labels, packed.input_ids)
    assert packed.documents == 3 and packed.stream_tokens == 8 and packed.predicted_tokens == 6
    protocol = packed.protocol()
    assert protocol["seq_len"] == protocol["stride"] == 4
    assert (protocol["windows"], protocol["tokens"], protocol["predicted_tokens"]) == (2, 8, 6)
    batch = packed.batches(5)[0]
    assert batch["attention_mask"].all() and batch["input_ids"].shape == (2, 4)


def test_strided_windows_predict_every_token_once():
    tok = char_tokenizer()
    text = "abcdefghijklmnopqrstuvwxyz"
    packed = pack_texts(tok, [text], seq_len=8, stride=4)
    assert [row[0] for row in packed.input_ids.tolist()] == [13 + i for i in (0, 4, 8, 12, 16)]
    predicted = []
    for ids, labels in zip(packed.input_ids.tolist(), packed.labels.tolist(), strict=True):
        predicted += [t for t, lab in zip(ids[1:], labels[1:], strict=True) if lab != -100]
    # tokens 1..23 of the stream (the first token has no context; 24, 25 make no whole window)
    assert predicted == [13 + i for i in range(1, 24)]
    assert packed.predicted_tokens == 23


def test_packing_stops_tokenising_at_max_windows_and_keeps_a_short_stream_whole():
    tok = char_tokenizer()
    calls = []

    class Counting:
        eos_token_id = tok.eos_token_id

        def __call__(self, texts, **kwargs):
            calls.append(len(texts))
            return tok(texts, **kwargs)

    docs = ["x" * 10] * 2000
    packed = pack_texts(Counting(), docs, seq_len=8, max_windows=3)
    assert len(packed) == 3 and sum(calls) <= 256
    short = pack_texts(tok, ["abc"], seq_len=16)
    assert short.input_ids.tolist() == [[13, 14, 15]] and short.seq_len == 3
    with pytest.raises(DatasetError, match="fewer than 2 tokens"):
        pack_texts(tok, ["", "  "], seq_len=8)


def test_a_hub_text_dataset_without_labels_packs(tmp_path):
    import datasets

    folder = tmp_path / "wikitext-like"
    folder.mkdir()
    rows = {"text": ["", " = A = \n", "", " first paragraph .\n", " second one .\n", ""]}
    datasets.Dataset.from_dict(rows).to_parquet(str(folder / "train.parquet"))
    data = load_hub_dataset(str(folder), split="train", labels=False)
    assert data.labels is None and data.text_column == "text"
    packed = pack_texts(char_tokenizer(), data.texts, seq_len=8)
    assert packed.documents == 3  # empty rows are no documents


# -- the streamed loss -----------------------------------------------------------------------------


def test_streamed_next_token_statistics_equal_the_full_logits():
    model = _lm()
    batch = tiny_batch("llama", head="causal-lm")  # one padded row
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    real = (batch["labels"][:, 1:] != -100) & batch["attention_mask"][:, :-1].bool()
    target = batch["labels"][:, 1:][real]
    full = F.cross_entropy(logits[real], target, reduction="sum")
    seen = []
    stats = next_token_stats(
        model, batch, chunk_size=5, keep_greedy=True, head_hook=lambda x: seen.append(x.shape[0])
    )
    assert stats.tokens == int(real.sum()) and max(seen) <= 5 and len(seen) > 2
    assert stats.nll_sum == pytest.approx(float(full), rel=1e-5)
    assert torch.equal(stats.greedy, logits[real].argmax(-1))
    scores = score_next_tokens(model, [batch], chunk_size=7)
    assert scores.perplexity == pytest.approx(math.exp(float(full) / int(real.sum())), rel=1e-5)


@pytest.mark.parametrize("greedy", [False, True])
def test_streamed_loss_and_its_gradient_equal_the_unchunked_ones(greedy):
    model = _lm("qwen2").double()
    batch = _windows(2, 12)[0] | {"input_ids": torch.cat([b["input_ids"] for b in _windows(2, 12)])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = batch["input_ids"].clone()
    weight = model.model.layers[0].mlp.down_proj.weight

    def full_loss():
        logits = model(input_ids=batch["input_ids"]).logits[:, :-1]
        target = logits.detach().argmax(-1) if greedy else batch["labels"][:, 1:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    expected = full_loss()
    (expected_grad,) = torch.autograd.grad(expected, weight)
    streamed = next_token_loss(model, batch, greedy_targets=greedy, chunk_size=5)
    (grad,) = torch.autograd.grad(streamed, weight)
    assert float(streamed.detach()) == pytest.approx(float(expected.detach()), abs=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["michel", "flap", "activations"])
def test_scoring_and_evaluation_never_hold_batch_x_sequence_x_vocabulary_logits(method):
    model = _lm()
    batches = _windows(2, 48)
    rows = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape))
    try:
        score_importance(model, batches, method=method)
        score_next_tokens(model, batches, chunk_size=16)
    finally:
        handle.remove()
    # the head only ever sees a chunk of positions (default 512 > 47 for scoring), never [B, T, V]
    assert all(len(shape) == 2 for shape in rows)
    assert all(shape[0] <= 512 for shape in rows)
    if method != "michel":  # forward-only methods never apply the head while scoring
        assert len(rows) == len(batches) * math.ceil(47 / 16)


# -- the importance methods ------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_scores_every_unit(family, method):
    model = _lm(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score_importance(model, _windows(2), method=method)
    sizes = ModelAdapter(model).all_sizes()
    assert [len(h) for h in scores.heads] == [s.heads for s in sizes]
    assert [len(n) for n in scores.neurons] == [s.intermediate for s in sizes]
    assert scores.mlps.shape == (len(sizes),) and scores.method == method
    assert all(torch.isfinite(h).all() for h in scores.heads)
    if method in ("flap", "activations"):
        d = ModelAdapter(model).head_dim
        assert [len(m) for m in scores.attention_means] == [s.heads * d for s in sizes]
        assert [len(m) for m in scores.mlp_means] == [s.intermediate for s in sizes]
        assert all(bool((h >= 0).all()) for h in scores.heads)
    if method == "activations":
        assert scores.channels.shape == (32,)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    json.dumps(scores.to_dict())


def test_flap_scores_a_constant_unit_zero_and_a_moving_one_by_variance_and_weight():
    model = _lm()
    layer = model.model.layers[0]
    with torch.no_grad():  # neuron 3 of layer 0 never moves: its up projection row is zero
        layer.mlp.up_proj.weight[3] = 0
    scores = score_importance(model, _windows(3), method="flap")
    assert float(scores.neurons[0][3]) == 0.0
    assert float(scores.neurons[0].min()) == 0.0 and int(torch.argmin(scores.neurons[0])) == 3
    down = layer.mlp.down_proj.weight
    with torch.no_grad():
        down[:, 5] *= 3  # the same activation through a column 3 times as long: 9 times the score
    tripled = score_importance(model, _windows(3), method="flap")
    assert float(tripled.neurons[0][5]) == pytest.approx(9 * float(scores.neurons[0][5]), rel=1e-4)


def test_activation_scores_follow_the_size_of_a_heads_output():
    model = _lm("qwen3")
    attn = model.model.layers[1].self_attn
    with torch.no_grad():
        attn.v_proj.weight[8:16] *= 0.01  # KV head 1: query heads 2 and 3 output almost nothing
    scores = score_importance(model, _windows(2), method="activations")
    assert set(torch.argsort(scores.heads[1])[:2].tolist()) == {2, 3}


# -- FLAP's bias compensation and what the pruned models reload as ---------------------------------


def _mean_error(model, original, batches) -> float:
    return float((_logits(model, batches) - _logits(original, batches)).pow(2).mean())


def _projection_outputs(model, batches, layer: int) -> torch.Tensor:
    """What the attention output and down projections of ``layer`` add to the residual stream."""
    adapter, outputs = ModelAdapter(model), []
    hooks = [
        adapter.output_projection(layer, part).register_forward_hook(
            lambda m, a, out: outputs.append(out.reshape(-1, out.shape[-1]))
        )
        for part in ("attention", "mlp")
    ]
    try:
        _logits(model, batches)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(outputs)


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {}),
        ("qwen3", {}),
        ("gpt2", {}),
        ("llama", {"attention_bias": True, "mlp_bias": True}),
    ],
)
def test_bias_compensation_brings_the_pruned_model_closer_to_the_original(family, overrides):
    original = _lm(family, **overrides)
    with torch.no_grad():  # activations with a mean away from 0, which compensation puts back
        for name, p in original.named_parameters():
            if p.dim() == 1 and name.endswith("bias"):
                p.add_(0.5)
    batches = _windows(4, 24)
    scores = score_importance(original, batches, method="flap")
    reference = _projection_outputs(original, batches, 1)
    errors, output_errors = {}, {}
    for compensate in (True, False):
        model = copy.deepcopy(original)
        # layer 0 keeps its shape, so layer 1 sees the original's input: its projections' outputs
        # compare exactly, and the mean is the best constant to put back for what was removed
        target = PruningTarget(
            heads=0.25, ffn=0.25, keep_first_layers=1, bias_compensation=compensate
        )
        plan = plan_pruning(model, scores, target)
        assert plan.compensates == compensate and set(plan.heads) == set(plan.neurons) == {1}
        predicted = predicted_parameters(model, plan)
        prune_model(model, plan)
        assert count_parameters(model) == predicted
        outputs = _projection_outputs(model, batches, 1)
        output_errors[compensate] = float((outputs - reference).pow(2).mean())
        errors[compensate] = _mean_error(model, original, batches)
    assert output_errors[True] < 0.99 * output_errors[False], output_errors
    assert errors[True] < errors[False], errors


def test_bias_compensation_is_flaps_by_default_and_optional_for_activations():
    model = _lm()
    batches = _windows(2)
    flap = score_importance(model, batches, method="flap")
    activations = score_importance(model, batches, method="activations")
    michel = score_importance(model, batches, method="michel")
    target = PruningTarget(ffn=0.3)
    assert plan_pruning(model, flap, target).compensates
    assert not plan_pruning(model, activations, target).compensates
    assert plan_pruning(
        model, activations, PruningTarget(ffn=0.3, bias_compensation=True)
    ).compensates
    assert not plan_pruning(
        model, flap, PruningTarget(ffn=0.3, bias_compensation=False)
    ).compensates
    assert not plan_pruning(
        model, michel, PruningTarget(ffn=0.3, bias_compensation=True)
    ).compensates


def _reload(folder: Path, trust: bool):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust).eval()


@pytest.mark.parametrize(
    ("family", "layout"),
    [
        ("llama", "uniform"),
        ("llama", "per_layer"),
        ("qwen3", "per_layer"),
        ("mistral", "per_layer"),
        ("qwen2", "per_layer"),
        ("gpt2", "per_layer"),
    ],
)
def test_flap_pruned_models_reload_with_identical_logits(tmp_path, family, layout):
    model = _lm(family, **({"n_layer": 3} if family == "gpt2" else {"num_hidden_layers": 3}))
    batches = _windows(2)
    scores = score_importance(model, batches, method="flap")
    if layout == "uniform":
        target = PruningTarget(heads=0.5, ffn=0.3, ranking="per_layer")
    else:
        target = PruningTarget(heads=0.25, ffn=0.3, ranking="adaptive", keep_first_layers=1)
    plan = plan_pruning(model, scores, target, layout=layout)
    prune_model(model, plan, layout=layout)
    assert plan.compensates
    expected = _logits(model, batches)
    save_model_folder(model, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    if layout == "uniform":
        assert config["attention_bias"] and config["mlp_bias"] and "auto_map" not in config
    elif family != "gpt2":
        assert config["projection_bias"] == ["mlp.down_proj", "self_attn.o_proj"]
    reloaded = _reload(tmp_path / "m", trust=layout == "per_layer")
    assert count_parameters(reloaded) == count_parameters(model)
    torch.testing.assert_close(_logits(reloaded, batches), expected, rtol=0, atol=1e-5)


def test_uniform_layout_refuses_compensation_the_stock_config_cannot_hold():
    model = _lm("mistral")
    scores = score_importance(model, _windows(2), method="flap")
    with pytest.raises(InvalidSpec, match="use layout 'per_layer'"):
        plan_pruning(model, scores, PruningTarget(ffn=0.3), layout="uniform")
    target = PruningTarget(ffn=0.3, bias_compensation=False)
    plan = plan_pruning(model, scores, target, layout="uniform")
    prune_model(model, plan, layout="uniform")
    assert model.config.intermediate_size == 26


# -- ranking across layers -------------------------------------------------------------------------


def _scores_with(model, heads: list[list[float]], neurons: list[torch.Tensor]) -> Importance:
    base = score_importance(model, [], method="random")
    base.heads = [torch.tensor(h) for h in heads]
    base.neurons = neurons
    return base


def test_adaptive_ranking_standardises_each_layer_and_protected_layers_keep_their_shape():
    model = tiny_model("bert", num_hidden_layers=3)
    # layer 1's scores are 100x layer 2's: global ranking takes everything from layer 2, adaptive
    # ranking (scale-free) takes from both; layer 0 is protected
    heads = [[0.0, 0.1, 0.2, 0.3], [10.0, 20.0, 30.0, 40.0], [0.1, 0.2, 0.3, 0.4]]
    neurons = [torch.arange(37.0), torch.arange(37.0) * 100, torch.arange(37.0)]
    scores = _scores_with(model, heads, neurons)
    glob = plan_pruning(model, scores, PruningTarget(heads=0.25, ffn=0.2, keep_first_layers=1))
    assert set(glob.heads) == {2} and 0 not in glob.neurons
    adaptive = plan_pruning(
        model, scores, PruningTarget(heads=0.25, ffn=0.2, ranking="adaptive", keep_first_layers=1)
    )
    assert set(adaptive.heads) == {1, 2} and 0 not in adaptive.heads and 0 not in adaptive.neurons
    assert sum(len(v) for v in adaptive.heads.values()) == 3  # 25% of all 12 heads
    assert sum(len(v) for v in adaptive.neurons.values()) == round(0.2 * 3 * 37)
    per_layer = plan_pruning(
        model, scores, PruningTarget(heads=0.25, ranking="per_layer", keep_last_layers=1)
    )
    assert set(per_layer.heads) == {0, 1}  # the share of the protected layer goes to the others
    with pytest.raises(InvalidSpec, match="same shape"):
        plan_pruning(model, scores, PruningTarget(ffn=0.2, keep_first_layers=1), layout="uniform")


def test_global_ranking_keeps_a_neuron_in_every_mlp():
    model = tiny_model("bert", num_hidden_layers=3)
    neurons = [torch.zeros(37), torch.ones(37), torch.ones(37)]
    scores = _scores_with(model, [[1.0] * 4] * 3, neurons)
    plan = plan_pruning(model, scores, PruningTarget(ffn=0.4))
    assert len(plan.neurons[0]) == 36
    assert sum(len(v) for v in plan.neurons.values()) == round(0.4 * 111)


# -- depth -----------------------------------------------------------------------------------------


def _near_identity(model, layer: int):
    adapter = ModelAdapter(model)
    with torch.no_grad():  # the layer adds almost nothing to the residual stream
        adapter.output_projection(layer, "attention").weight.mul_(1e-3)
        adapter.output_projection(layer, "mlp").weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("method", ["block_influence", "metric_drop"])
def test_depth_scores_rank_a_near_identity_layer_last(method):
    model = _near_identity(_lm("llama", num_hidden_layers=4), 2)
    batches = _windows(3)
    for batch in batches:  # text the model predicts well: skipping a real layer costs loss
        with torch.no_grad():
            greedy = model(input_ids=batch["input_ids"]).logits.argmax(-1)
        batch["labels"] = torch.cat([batch["input_ids"][:, :1], greedy[:, :-1]], dim=1)
    scores = score_depth(model, batches, method=method)
    assert scores.shape == (4,) and int(torch.argmin(scores)) == 2
    assert plan_depth(scores, 1) == [2] and plan_depth(scores, 0.5)[0] == 2
    assert 2 not in plan_depth(scores, 1, keep_first_layers=3)
    with pytest.raises(InvalidSpec, match="leaves none"):
        plan_depth(scores, 4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_depth_pruning_drops_the_least_influential_layers_and_reloads_with_stock_transformers(
    tmp_path, family
):
    model = _near_identity(
        _lm(family, **({"n_layer": 4} if family == "gpt2" else {"num_hidden_layers": 4})), 1
    )
    batches = _windows(2)
    scores = score_depth(model, batches)
    dropped = plan_depth(scores, 0.25)
    assert dropped == [1]
    kept = drop_layers(model, dropped)
    assert kept == [0, 2, 3] and ModelAdapter(model).num_layers == 3
    expected = _logits(model, batches)
    save_model_folder(model, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config.get("num_hidden_layers", config.get("n_layer")) == 3 and "auto_map" not in config
    torch.testing.assert_close(
        _logits(_reload(tmp_path / "m", trust=False), batches), expected, rtol=0, atol=1e-5
    )


# -- the pipeline: a .txt file, packed windows, the protocol on the card ---------------------------


def _spec(folder: str, data: Path, prune: dict, **evaluation) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"id": folder},
            "dataset": {"path": str(data), "eval_path": str(data)},
            "prune": prune,
            "evaluation": {"latency": False, **evaluation},
        },
        context={"local_files": True},
    )


def test_pipeline_prunes_a_causal_lm_on_plain_text_with_the_llm_defaults(tmp_path):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt")
    result = run(_spec(folder, data, {"heads": 0.25, "ffn": 0.3}, max_samples=5), tmp_path / "work")
    report = result.report
    prune = report["spec"]["prune"]
    assert (prune["importance"], prune["ranking"]) == (CAUSAL_LM_DEFAULTS["importance"], "adaptive")
    assert prune["keep_first_layers"] == prune["keep_last_layers"] == 1
    protocol = report["evaluation"]["protocol"]
    assert protocol["seq_len"] == 64 and protocol["stride"] == 64 and protocol["windows"] == 5
    assert protocol["predicted_tokens"] == 5 * 63 and report["evaluation"]["rows"] == 5
    assert report["data"]["calibration_protocol"]["seq_len"] == 64
    assert report["importance"]["method"] == CAUSAL_LM_DEFAULTS["importance"]
    pruning = report["pruning"]  # the first and last layers keep their shape
    assert pruning["heads_per_layer"][0] == pruning["original_heads_per_layer"][0]
    assert pruning["neurons_per_layer"][-1] == 37
    card = (result.folder / "README.md").read_text()
    assert "5 windows of 64 tokens" in card and "315 tokens predicted" in card
    reloaded = _reload(result.folder, trust=True)
    assert count_parameters(reloaded) == report["evaluation"]["compressed"]["parameters"]


def test_pipeline_depth_only_run_reloads_with_stock_transformers(tmp_path):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt")
    # the default layout too: a job that only drops layers writes a stock config
    spec = _spec(folder, data, {"layers": 1}, max_samples=2)
    report = run(spec, tmp_path / "work").report
    assert report["pruning"]["removed_layers"] and report["pruning"]["original_layers"] == 4
    assert len(report["importance"]["layers"]) == 4
    assert report["spec"]["prune"]["layout"] == report["artifacts"]["layout"] == "uniform"
    config = json.loads((tmp_path / "work" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and "auto_map" not in config


def test_pipeline_drops_layers_before_pruning_width(tmp_path):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=5)
    data = write_story_txt(tmp_path / "stories.txt")
    spec = _spec(
        folder, data, {"layers": 1, "ffn": 0.3, "depth_importance": "metric_drop"}, max_samples=2
    )
    result = run(spec, tmp_path / "work")
    pruning = result.report["pruning"]
    assert len(pruning["removed_layers"]) == 1 and pruning["removed_layers"][0] not in (0, 4)
    assert len(pruning["neurons_per_layer"]) == 4 and sum(pruning["neurons_per_layer"]) < 4 * 37
    reloaded = _reload(result.folder, trust=True)
    assert reloaded.config.num_hidden_layers == 4


# -- the real model --------------------------------------------------------------------------------

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
SMOLLM2 = CACHE / "slimformer-fixtures" / "smollm2-135m"
# measured (docs/pruning.md): x1.38 with these defaults (OBS + reconstruction) on the first 64
# test windows, x1.26 / x1.62 at 20% / 30% on the first 8 (bench/llm_pruning.py); the bound keeps
# a margin (the activation default it replaced measured x2.10)
SMOLLM2_RATIO_BOUND = 1.6


@pytest.mark.slow
# a whole default job on a real 135M model plus a fresh process: about 3 minutes alone on 2 cores,
# past the suite's 600 s on a machine busy with other work
@pytest.mark.timeout(1500)
def test_smollm2_25_25_with_the_defaults_keeps_perplexity_within_the_measured_bound(tmp_path):
    data = SHARED / "data" / "wikitext2"
    if not (data / "validation.txt").is_file():
        pytest.skip(f"{data} is absent (benchmark-only data)")
    if not (SMOLLM2 / ".complete").is_file():
        pytest.skip(f"SmolLM2-135M is not built at {SMOLLM2} (../shared/models/make-smollm2)")
    code = (
        "import json, sys\nfrom slimformer.pipeline import run\n"
        "from slimformer.spec import JobSpec\n"
        "spec = JobSpec.model_validate(json.loads(sys.argv[1]), context={'local_files': True})\n"
        "report = run(spec, sys.argv[2]).report\n"
        "print(json.dumps({k: report[k] for k in ('evaluation', 'execution')}))\n"
    )
    spec = {
        "model": {"id": str(SMOLLM2)},
        "dataset": {"path": str(data / "validation.txt"), "eval_path": str(data / "test.txt")},
        "prune": {"heads": 0.25, "ffn": 0.25},
        "evaluation": {"latency": False, "max_samples": 16},
    }
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    evaluation, execution = result["evaluation"], result["execution"]
    before = evaluation["original"]["metrics"]["perplexity"]
    after = evaluation["compressed"]["metrics"]["perplexity"]
    assert after / before < SMOLLM2_RATIO_BOUND, (before, after)
    assert evaluation["ratios"]["parameters"] < 0.85
    # the job ran layer by layer, and the memory it said it would need before reading a weight is
    # within 25% of the peak it measured
    assert execution["path"] == "layer_by_layer", execution
    estimated, measured = execution["estimated_peak_bytes"], execution["measured_peak_bytes"]
    assert abs(estimated / measured - 1) <= 0.25, (estimated, measured)
