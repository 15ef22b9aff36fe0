import copy
import json
import math

import pytest
import torch
import transformers
from scipy import stats
from torch.utils.flop_counter import FlopCounterMode

from slimformer.errors import Cancelled, InvalidSpec
from slimformer.evaluation import (
    count_macs,
    count_parameters,
    evaluate_side_by_side,
    macro_f1,
    measure_latency,
    next_token_accuracy,
    perplexity,
    predict,
    task_metric,
    weight_bytes,
)
from slimformer.importance import score_importance
from slimformer.models import count_embedding_parameters, mean_pool
from slimformer.pruning import PruningTarget, plan_pruning, prune_model
from testkit.tiny_models import CONFIGS, DECODERS, VOCAB, tiny_batch, tiny_config, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """torch on one thread for every test here: tiny models gain nothing from more, and on a busy
    shared machine each forward pass waited on the other cores' OpenMP threads (~300 ms instead of
    ~1 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CASES = (
    [(f, "classification") for f in CONFIGS]
    + [(f, "base") for f in CONFIGS]
    + [(f, "causal-lm") for f in DECODERS]
)


def _measured_macs(model, seq_len):
    model.set_attn_implementation("eager")  # the flop counter does not see the CPU SDPA kernel
    ids = torch.randint(3, 100, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(("family", "head"), CASES)
@pytest.mark.parametrize("pruned", [False, True])
def test_analytic_macs_match_the_flop_counter_within_5_percent(family, head, pruned):
    model = tiny_model(family, head)
    if pruned:
        batch = tiny_batch(family, head=head, labels=head != "base")
        scores = score_importance(model, [batch])
        prune_model(
            model, plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.4, whole_mlps=1))
        )
    measured = _measured_macs(model, 48)
    assert count_macs(model, 48) == pytest.approx(measured, rel=0.05)


def test_parameters_count_tied_embeddings_once():
    model = tiny_model("gpt2", "causal-lm")
    assert count_parameters(model) == sum(p.numel() for p in set(model.parameters()))


def test_embedding_parameters_are_the_vocabulary_and_position_tables_and_the_head():
    gpt2 = tiny_model("gpt2", "causal-lm")  # the head is tied to the token embeddings
    tables = gpt2.transformer.wte.weight.numel() + gpt2.transformer.wpe.weight.numel()
    assert count_embedding_parameters(gpt2) == tables
    llama = tiny_model("llama", "causal-lm")  # an untied head counts
    assert not llama.config.tie_word_embeddings
    assert count_embedding_parameters(llama) == 2 * llama.model.embed_tokens.weight.numel()
    bert = tiny_model("bert")  # words, positions and token types; the classifier is not one
    tables = sum(m.weight.numel() for m in bert.modules() if isinstance(m, torch.nn.Embedding))
    assert count_embedding_parameters(bert) == tables < count_parameters(bert)


def test_task_metric_accuracy_and_agreement():
    model = tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(3)]
    name, value = task_metric(model, batches)
    assert name == "accuracy" and 0 <= value <= 1
    from slimformer.evaluation import predict

    reference = predict(model, batches)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    assert task_metric(model, unlabeled, reference) == ("agreement", 1.0)


def test_latency_reports_percentiles_and_throughput():
    lat = measure_latency(tiny_model("bert"), batch_size=4, seq_len=16, runs=5, warmup=1)
    assert 0 < lat.p50_ms <= lat.p95_ms and lat.throughput > 0 and lat.runs == 5


# -- side-by-side evaluation -----------------------------------------------------------------------

REPORT_KEYS = {
    "task",
    "primary_metric",
    "higher_is_better",
    "rows",
    "seq_len",
    "device",
    "threads",
    "torch_version",
    "original",
    "compressed",
    "agreement",
    "ratios",
}
SIDE_KEYS = {"metrics", "parameters", "weight_bytes", "macs", "embedding_parameters", "latency"}
LATENCY_KEYS = {"batch1_p50_ms", "batch1_p95_ms", "batch32_throughput"}
RATIO_KEYS = {
    "parameters",
    "non_embedding_parameters",
    "weight_bytes",
    "macs",
    "latency_speedup",
    "throughput_speedup",
}


def _pair_batches(family: str, seeds=range(3), labels: bool = True) -> list[dict]:
    """Classification batches of sentence pairs: the second half of every row is segment 1."""
    batches = []
    for seed in seeds:
        batch = tiny_batch(family, seed=seed, labels=labels)
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        batch["token_type_ids"][:, 6:] = 1
        batches.append(batch)
    return batches


def _pruned(model, batches):
    pruned = copy.deepcopy(model)
    prune_model(
        pruned,
        plan_pruning(pruned, score_importance(pruned, batches), PruningTarget(heads=0.5, ffn=0.5)),
    )
    return pruned


def _lm_batch(rows: list[list[int]], pad_to: int, with_labels: bool = False) -> dict:
    """A right-padded causal-LM batch (pad id 0, the tiny decoders' pad token)."""
    ids = torch.zeros(len(rows), pad_to, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if with_labels:
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def test_macro_f1_equals_the_hand_computed_value():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    # F1 = 2TP / (2TP + FP + FN): class 0 -> 4/5, class 1 -> 2/4, class 2 -> 2/3
    assert macro_f1(preds, labels) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    # a class that is predicted but never the label scores 0 and counts in the mean
    assert macro_f1(torch.tensor([0, 3]), torch.tensor([0, 0])) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(labels, labels) == 1.0
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert macro_f1(preds, labels) == pytest.approx(
        sklearn_metrics.f1_score(labels, preds, average="macro")
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perplexity_is_exp_of_mean_nll_and_padding_does_not_change_it(family):
    model = tiny_model(family, "causal-lm")
    gen = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in (10, 7, 4)]
    # independently: each sequence alone, no padding, transformers' own mean loss weighted by its
    # targets
    nll = tokens = 0.0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row])
            nll += float(model(input_ids=ids, labels=ids).loss) * (len(row) - 1)
            tokens += len(row) - 1
    expected = math.exp(nll / tokens)

    together = [_lm_batch(rows, pad_to=10)]
    heavily_padded = [_lm_batch([row], pad_to=16, with_labels=True) for row in rows]
    assert perplexity(model, together) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, heavily_padded) == pytest.approx(expected, rel=1e-5)
    assert next_token_accuracy(model, together) == pytest.approx(
        next_token_accuracy(model, heavily_padded)
    )

    report = evaluate_side_by_side(model, copy.deepcopy(model), together, seq_len=16, latency=False)
    assert report["primary_metric"] == "perplexity" and report["higher_is_better"] is False
    assert report["original"]["metrics"]["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert report["original"]["metrics"]["next_token_accuracy"] == pytest.approx(
        next_token_accuracy(model, together)
    )


@pytest.mark.parametrize(
    ("family", "head"),
    [
        ("bert", "classification"),
        ("gpt2", "causal-lm"),
        ("bert", "base"),
        ("qwen2", "classification"),
    ],
)
def test_an_identical_copy_agrees_fully_with_ratios_of_one_and_equal_metrics(family, head):
    model = tiny_model(family, head)
    if head == "classification" and family == "bert":
        batches = _pair_batches(family)
    else:
        batches = [tiny_batch(family, head=head, seed=s) for s in range(2)]
    report = evaluate_side_by_side(model, copy.deepcopy(model), batches, seq_len=16, latency=False)
    assert report["agreement"] == pytest.approx(1.0)
    assert (
        report["ratios"]["parameters"]
        == report["ratios"]["weight_bytes"]
        == report["ratios"]["macs"]
        == 1.0
    )
    assert report["original"]["metrics"] == report["compressed"]["metrics"]
    assert report["original"]["metrics"], "every case here has a task metric"
    assert report["rows"] == sum(len(b["input_ids"]) for b in batches)


def test_a_pruned_model_is_smaller_and_its_metrics_are_its_own():
    model = tiny_model("bert")
    batches = _pair_batches("bert")
    pruned = _pruned(model, batches)
    report = evaluate_side_by_side(model, pruned, batches, seq_len=16, latency=False)
    ratios = report["ratios"]
    assert ratios["parameters"] < 1 and ratios["macs"] < 1 and ratios["weight_bytes"] < 1
    assert report["compressed"]["parameters"] == count_parameters(pruned)
    # pruning leaves the embeddings: the share of the rest removed is the larger one
    embedding = count_embedding_parameters(model)
    assert report["original"]["embedding_parameters"] == embedding
    assert report["compressed"]["embedding_parameters"] == embedding
    assert ratios["non_embedding_parameters"] == pytest.approx(
        (count_parameters(pruned) - embedding) / (count_parameters(model) - embedding)
    )
    assert ratios["non_embedding_parameters"] < ratios["parameters"]
    assert report["compressed"]["macs"] == count_macs(pruned, 16)
    assert report["original"]["macs"] == count_macs(model, 16)

    labels = torch.cat([b["labels"] for b in batches])
    logits_o, logits_c = predict(model, batches), predict(pruned, batches)
    assert report["primary_metric"] == "accuracy" and report["higher_is_better"] is True
    assert report["compressed"]["metrics"]["accuracy"] == pytest.approx(
        float((logits_c.argmax(-1) == labels).float().mean())
    )
    assert report["compressed"]["metrics"]["macro_f1"] == pytest.approx(
        macro_f1(logits_c.argmax(-1), labels)
    )
    assert report["original"]["metrics"]["accuracy"] == pytest.approx(
        task_metric(model, batches)[1]
    )
    assert report["agreement"] == pytest.approx(
        float((logits_o.argmax(-1) == logits_c.argmax(-1)).float().mean())
    )


def test_the_report_has_exactly_the_documented_keys_and_is_strict_json(one_thread):
    model = tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(2)]
    report = evaluate_side_by_side(
        model, _pruned(model, batches), batches, seq_len=16, latency_runs=2
    )
    assert set(report) == REPORT_KEYS
    for side in ("original", "compressed"):
        assert set(report[side]) == SIDE_KEYS
        assert set(report[side]["metrics"]) == {"accuracy", "macro_f1"}
        latency = report[side]["latency"]
        assert set(latency) == LATENCY_KEYS
        assert (
            0 < latency["batch1_p50_ms"] <= latency["batch1_p95_ms"]
            and latency["batch32_throughput"] > 0
        )
        assert isinstance(report[side]["parameters"], int) and isinstance(
            report[side]["weight_bytes"], int
        )
    assert set(report["ratios"]) == RATIO_KEYS
    o, c = report["original"]["latency"], report["compressed"]["latency"]
    assert report["ratios"]["latency_speedup"] == pytest.approx(
        o["batch1_p50_ms"] / c["batch1_p50_ms"]
    )
    assert report["ratios"]["throughput_speedup"] == pytest.approx(
        c["batch32_throughput"] / o["batch32_throughput"]
    )
    assert report["task"] == "text-classification" and report["device"] == "cpu"
    assert (
        report["threads"] == 1
        and report["seq_len"] == 16
        and report["torch_version"] == str(torch.__version__)
    )
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_regression_reports_pearson_and_spearman_against_float_labels():
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(
        tiny_config("bert", num_labels=1)
    ).eval()
    batches = [tiny_batch("bert", seed=s, labels=False) for s in range(3)]
    gen = torch.Generator().manual_seed(5)
    for batch in batches:  # gold scores that follow the model's output loosely
        batch["labels"] = predict(model, [batch])[:, 0] + 0.1 * torch.randn(
            len(batch["input_ids"]), generator=gen
        )
    pruned = _pruned(model, batches)
    report = evaluate_side_by_side(model, pruned, batches, seq_len=16, latency=False)
    gold = torch.cat([b["labels"] for b in batches]).numpy()
    out_o, out_c = predict(model, batches)[:, 0].numpy(), predict(pruned, batches)[:, 0].numpy()
    assert report["primary_metric"] == "pearson" and report["higher_is_better"] is True
    for side, out in (("original", out_o), ("compressed", out_c)):
        metrics = report[side]["metrics"]
        assert set(metrics) == {"pearson", "spearman"}
        assert metrics["pearson"] == pytest.approx(stats.pearsonr(out, gold).statistic)
        assert metrics["spearman"] == pytest.approx(stats.spearmanr(out, gold).statistic)
    # agreement of a regression model: Pearson between the two models' outputs
    assert report["agreement"] == pytest.approx(stats.pearsonr(out_o, out_c).statistic)


def test_embeddings_report_spearman_of_pair_similarities_with_gold_scores():
    model = tiny_model("bert", "base")
    first = [tiny_batch("bert", seed=s, labels=False) for s in (1, 2)]
    second = [tiny_batch("bert", seed=s, labels=False) for s in (3, 4)]

    def pair_cosines(m):
        return torch.nn.functional.cosine_similarity(predict(m, first), predict(m, second), dim=-1)

    # gold scores ranked exactly as the original's similarities: the original's Spearman is 1
    scores = pair_cosines(model).tolist()
    pruned = _pruned(model, first)
    report = evaluate_side_by_side(
        model, pruned, first, seq_len=16, latency=False, pair_batches=second, pair_scores=scores
    )
    assert report["task"] == "feature-extraction" and report["primary_metric"] == "spearman"
    assert report["original"]["metrics"]["spearman"] == pytest.approx(1.0)
    assert report["compressed"]["metrics"]["spearman"] == pytest.approx(
        stats.spearmanr(pair_cosines(pruned).numpy(), scores).statistic
    )
    # agreement and cosine_to_original: mean cosine to the original's mean-pooled embeddings of
    # every text
    with torch.no_grad():
        emb_o = torch.cat(
            [mean_pool(model(**b).last_hidden_state, b["attention_mask"]) for b in first + second]
        )
        emb_c = torch.cat(
            [mean_pool(pruned(**b).last_hidden_state, b["attention_mask"]) for b in first + second]
        )
    expected = float(torch.nn.functional.cosine_similarity(emb_c, emb_o, dim=-1).mean())
    assert report["agreement"] == pytest.approx(expected)
    assert report["compressed"]["metrics"]["cosine_to_original"] == pytest.approx(expected)
    assert report["original"]["metrics"]["cosine_to_original"] == pytest.approx(1.0)

    with pytest.raises(InvalidSpec, match="as many"):
        evaluate_side_by_side(
            model,
            pruned,
            first,
            seq_len=16,
            latency=False,
            pair_batches=second,
            pair_scores=scores[:-1],
        )
    with pytest.raises(InvalidSpec, match="go together"):
        evaluate_side_by_side(model, pruned, first, seq_len=16, latency=False, pair_scores=scores)


def test_without_latency_the_latency_and_speedups_are_null():
    model = tiny_model("bert")
    batches = [tiny_batch("bert")]
    report = evaluate_side_by_side(model, copy.deepcopy(model), batches, seq_len=16, latency=False)
    assert report["original"]["latency"] is None and report["compressed"]["latency"] is None
    assert (
        report["ratios"]["latency_speedup"] is None
        and report["ratios"]["throughput_speedup"] is None
    )
    json.dumps(report, allow_nan=False)


def test_without_labels_a_classifier_is_judged_by_agreement_alone():
    model = tiny_model("bert")
    batches = _pair_batches("bert", labels=False)
    report = evaluate_side_by_side(
        model, _pruned(model, batches), batches, seq_len=16, latency=False
    )
    assert report["primary_metric"] == "agreement" and report["higher_is_better"] is True
    assert report["original"]["metrics"] == {} and report["compressed"]["metrics"] == {}
    assert 0 <= report["agreement"] <= 1


def test_progress_is_reported_and_cancellation_raises_cancelled(one_thread):
    model = tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(2)]
    seen = []
    evaluate_side_by_side(
        model,
        copy.deepcopy(model),
        batches,
        seq_len=8,
        latency_runs=1,
        on_progress=lambda *event: seen.append(event),
    )
    fractions = [f for _, f, _ in seen]
    assert {stage for stage, _, _ in seen} == {"evaluating"}
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("latency" in message for _, _, message in seen)

    with pytest.raises(Cancelled):
        evaluate_side_by_side(
            model, copy.deepcopy(model), batches, seq_len=8, should_cancel=lambda: True
        )

    # cancelled once the latency phase has begun: the batch-32 measurement never runs
    events = []
    with pytest.raises(Cancelled):
        evaluate_side_by_side(
            model,
            copy.deepcopy(model),
            batches,
            seq_len=8,
            latency_runs=1,
            on_progress=lambda *event: events.append(event),
            should_cancel=lambda: any("latency" in m for _, _, m in events),
        )
    assert not any("batch 32" in m for _, _, m in events)


def test_invalid_pairs_of_models_are_refused():
    batches = [tiny_batch("bert")]
    with pytest.raises(InvalidSpec, match="text-classification"):
        evaluate_side_by_side(
            tiny_model("bert"), tiny_model("bert", "base"), batches, seq_len=16, latency=False
        )
    with pytest.raises(InvalidSpec, match="no batch"):
        evaluate_side_by_side(tiny_model("bert"), tiny_model("bert"), [], seq_len=16, latency=False)


def test_weight_bytes_count_tied_weights_once_and_follow_the_dtype():
    model = tiny_model("gpt2", "causal-lm")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert weight_bytes(model) == 4 * count_parameters(model)
    assert weight_bytes(model.to(torch.bfloat16)) == 2 * count_parameters(model)
