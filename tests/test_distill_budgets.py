"""Distillation budgets, schedules and outcomes: time budgets hold evaluation, the learning-rate
schedule fits the steps that fit, an LM evaluation is bounded, a student that does not improve
fails the run, and every student kind gets its recipe."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distillation import (
    FAST,
    TOKENIZER,
    LargestAllocation,
    keyword_task,
    model_with_vocab,
    random_texts,
    word_tokenizer,
)

from slimformer.data import TextData
from slimformer.distill import DistillConfig, distill, make_layer_dropped_student
from slimformer.distill.metric import _lm_perplexity, _prepare_evaluation
from slimformer.distill.recipes import RECIPES, resolve_recipe
from slimformer.errors import DistillationFailed
from slimformer.spec import JobSpec
from testkit.tiny_models import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bert_student():
    teacher = tiny_model("bert", "classification")
    student, kept = make_layer_dropped_student(teacher, 2)
    return teacher, student, kept


# ---------------------------------------------------------------- time budgets


def test_the_time_budget_includes_slow_evaluations_and_stops_within_one_step():
    teacher, student, kept = _bert_student()
    calls = []

    def slow_metric(model) -> float:
        calls.append(time.perf_counter())
        time.sleep(0.5)
        return 0.5 + 0.01 * len(calls)  # every evaluation a little better

    budget = 4.0
    started = time.perf_counter()
    result = distill(
        teacher,
        student,
        TOKENIZER,
        keyword_task(256, 0),
        config=DistillConfig(**FAST, epochs=1000, max_minutes=budget / 60),
        layer_map=kept,
        eval_fn=slow_metric,
    )
    wall = time.perf_counter() - started
    assert result.stopped_because == "max_minutes" and result.steps > 0
    # the slow evaluations count: the call ends within the budget and one step (plus slack)
    assert wall <= budget + result.plan["seconds_per_step"] + 0.5, (wall, result.plan)
    # evaluations were capped at a quarter of the budget: 0.25 * 4 s / 0.5 s = 2 after the first
    assert 2 <= len(calls) <= 4, len(calls)
    assert result.plan["fitted"] and result.plan["seconds_per_evaluation"] >= 0.5


def test_the_schedule_is_fitted_to_the_steps_that_fit_the_budget():
    teacher, student, kept = _bert_student()
    peak_lr = FAST["learning_rate"]
    result = distill(
        teacher,
        student,
        TOKENIZER,
        keyword_task(256, 0),
        keyword_task(32, 1),
        DistillConfig(**FAST, epochs=1000, max_minutes=0.05),
        layer_map=kept,
    )
    assert result.stopped_because == "max_minutes" and result.plan["fitted"]
    lrs = [h["lr"] for h in result.history[1:]]
    assert len(lrs) == result.steps >= 10
    # warm-up is a tenth of the planned steps, not of 1000 epochs: the peak comes early (a quarter
    # of the steps run at most, when the shared machine slows down after the warm-up) ...
    assert result.plan["warmup_steps"] <= 0.1 * result.plan["total_steps"] + 1
    assert max(lrs) >= 0.9 * peak_lr
    assert lrs.index(max(lrs)) <= 0.25 * len(lrs) + 2
    # ... and the decay is nearly over when the time is
    assert lrs[-1] <= 0.25 * peak_lr, lrs[-5:]
    assert result.steps >= 0.8 * result.plan["total_steps"]


def test_without_a_time_budget_the_plan_is_the_step_budget():
    teacher, student, kept = _bert_student()
    result = distill(
        teacher,
        student,
        TOKENIZER,
        keyword_task(64, 0),
        keyword_task(16, 1),
        DistillConfig(**FAST, max_steps=20, epochs=100),
        layer_map=kept,
    )
    assert result.plan["total_steps"] == 20 and result.plan["warmup_steps"] == 2
    assert not result.plan["fitted"] and result.plan["eval_every"] == 2  # 10 evaluations
    lrs = [h["lr"] for h in result.history[1:]]
    assert lrs[0] == pytest.approx(FAST["learning_rate"] / 3)  # the first step already moves
    assert lrs[2] == pytest.approx(FAST["learning_rate"]) and lrs[-1] < 0.06 * FAST["learning_rate"]


def test_a_budget_spent_before_the_first_step_fails_with_a_clear_error():
    teacher, student, kept = _bert_student()

    def very_slow_metric(model) -> float:
        time.sleep(1.5)
        return 0.5

    with pytest.raises(DistillationFailed, match="trained no step") as err:
        distill(
            teacher,
            student,
            TOKENIZER,
            keyword_task(64, 0),
            config=DistillConfig(**FAST, max_minutes=1.0 / 60),
            layer_map=kept,
            eval_fn=very_slow_metric,
        )
    assert err.value.code == "distillation_failed" and err.value.details["check"] == "no_training"


# ---------------------------------------------------------------- causal LMs


def _lm_setup(layers: int = 2):
    teacher = tiny_model("llama", "causal-lm", num_hidden_layers=layers)
    student, kept = make_layer_dropped_student(teacher, 1)
    texts = random_texts(80, 0)
    return teacher, student, kept, TextData(texts[16:]), TextData(texts[:16])


def test_an_lm_that_cannot_improve_fails_and_says_why():
    teacher, student, kept, train, held_out = _lm_setup()
    # the weights cannot move
    config = DistillConfig(**{**FAST, "learning_rate": 1e-12}, max_steps=4)
    with pytest.raises(DistillationFailed, match="never beat its starting point") as err:
        distill(teacher, student, TOKENIZER, train, held_out, config, layer_map=kept)
    assert err.value.code == "distillation_failed"
    details = err.value.details
    assert details["check"] == "no_improvement" and details["metric"] == "perplexity"
    assert "perplexity" in str(err.value) and "4 steps" in str(err.value)


def test_an_lm_with_a_sabotaged_loss_fails(monkeypatch):
    from slimformer.distill import trainer

    real = trainer.batch_loss

    def ascent(*args, **kwargs):  # gradient ascent: every step makes the student worse
        loss, parts = real(*args, **kwargs)
        return -loss, parts

    monkeypatch.setattr(trainer, "batch_loss", ascent)
    teacher, student, kept, train, held_out = _lm_setup()
    with pytest.raises(DistillationFailed, match="never beat its starting point"):
        distill(
            teacher,
            student,
            TOKENIZER,
            train,
            held_out,
            DistillConfig(**FAST, alpha=1.0, max_steps=12, eval_every=3),
            layer_map=kept,
        )


def test_the_kept_lm_is_the_best_checkpoint_and_never_worse_than_the_start():
    teacher, student, kept, train, _ = _lm_setup()
    # rows it trains on: random text has nothing else to learn
    held_out = TextData(train.texts[:16])
    result = distill(
        teacher,
        student,
        TOKENIZER,
        train,
        held_out,
        DistillConfig(**FAST, alpha=0.5, max_steps=12, eval_every=3),
        layer_map=kept,
    )
    start = result.evaluations()[0]["metric"]
    assert result.metric_name == "perplexity" and not result.higher_is_better
    assert result.best_metric < start
    assert result.best_metric == min(e["metric"] for e in result.evaluations())
    batches, _, _, _ = _prepare_evaluation(
        held_out,
        TOKENIZER,
        None,
        task="text-generation",
        label_config=student.config,
        config=DistillConfig(**FAST),
    )
    kept_perplexity = _lm_perplexity(result.student, batches, 256)
    assert kept_perplexity == pytest.approx(result.best_metric, rel=1e-5)
    # the tokens trained on, padding not counted: what recovery is measured in
    tokens = [h["tokens"] for h in result.history]
    assert tokens[0] == 0 and all(b > a for a, b in zip(tokens, tokens[1:], strict=False))
    cap = FAST["batch_size"] * FAST["max_length"]
    assert tokens[-1] <= 12 * cap


def test_an_lm_starting_above_the_random_guess_level_is_a_warning():
    teacher, student, kept, train, held_out = _lm_setup()
    result = distill(
        teacher, student, TOKENIZER, train, None, DistillConfig(**FAST, max_steps=1), layer_map=kept
    )
    initial = [f for f in result.health if f["check"] == "initial_loss"]
    assert any(
        f["level"] == "warning" and "random-guess level ln(128)" in f["message"] for f in initial
    )


def test_lm_evaluation_reads_a_bounded_slice_in_chunks():
    vocab = 50_000
    tokenizer = word_tokenizer(vocab)
    model = model_with_vocab("llama", "causal-lm", vocab)
    data = TextData(random_texts(400, 3, words=24, vocab=vocab))
    config = DistillConfig(batch_size=8, max_length=32, lm_eval_tokens=100, kl_chunk_size=16)
    batches, reference, name, teacher_metric = _prepare_evaluation(
        data, tokenizer, model, task="text-generation", label_config=model.config, config=config
    )
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert name == "perplexity" and reference is None and teacher_metric > 1
    assert 100 <= tokens < 100 + 32  # whole rows up to lm_eval_tokens, not 400 rows
    with LargestAllocation() as peak:
        _lm_perplexity(model, batches, config.kl_chunk_size)
    largest_param = max(p.numel() * 4 for p in model.parameters())
    assert peak.bytes <= max(largest_param, 16 * vocab * 4)  # never a whole batch of logits


# ---------------------------------------------------------------- the command line


def test_the_command_fails_with_a_non_zero_exit_and_the_reason(tmp_path):
    folder = tmp_path / "tiny-llama"
    model = tiny_model("llama", "causal-lm", num_hidden_layers=2, max_position_embeddings=128)
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_texts(60, 1)))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "slimformer.cli",
        "distill",
        str(folder),
        "--data",
        str(data),
        "--student-layers",
        "1",
        "--learning-rate",
        "1e-12",
        "--max-steps",
        "3",
        "--no-latency",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: the distilled student never beat its starting point" in done.stderr
    assert not out.exists()


# ---------------------------------------------------------------- recipes


def _spec(**distill_fields):
    method = distill_fields.pop("method", "distill")
    body = {
        "model": {"id": "org/m"},
        "dataset": {"hub_id": "org/d"},
        "method": method,
        "distill": distill_fields,
    }
    if method == "prune_distill":
        body["prune"] = {"heads": 0.5}
    return JobSpec.model_validate(body)


def test_each_student_kind_gets_its_recipe_and_given_values_win():
    from slimformer.recipe.distilling import distill_recipe

    dropped = distill_recipe(_spec(student={"layers": 3}), "text-classification")
    assert dropped.student_kind == "layer_dropped"
    assert (dropped.config.learning_rate, dropped.config.hidden_loss) == (1e-4, "cosine")
    assert dropped.from_recipe == ["temperature", "alpha", "hidden_loss", "learning_rate"]
    pruned = distill_recipe(_spec(method="prune_distill"), "text-classification")
    assert (pruned.config.learning_rate, pruned.config.hidden_loss) == (5e-5, "cosine")
    named_spec = _spec(student={"id": "org/small"}, learning_rate=3e-4)
    named = distill_recipe(named_spec, "text-classification")
    assert (named.config.learning_rate, named.config.hidden_loss) == (3e-4, None)
    assert named.from_recipe == ["temperature", "alpha", "hidden_loss"]
    off = distill_recipe(_spec(student={"layers": 3}, hidden_loss="none"), "text-generation")
    assert off.config.hidden_loss is None and off.values["hidden_loss"] == "none"
    assert off.config.batch_size == 8  # causal LMs: small batches, more steps in a time budget
    assert set(RECIPES) == {"layer_dropped", "pruned", "named"}
    assert resolve_recipe("pruned", "text-classification", max_minutes=8).config.max_minutes == 8


def test_the_command_line_leaves_recipe_settings_unset():
    from slimformer.cli.local import distill_spec
    from slimformer.cli.parser import build_parser

    args = build_parser({}).parse_args(
        [
            "distill",
            "m",
            "--data",
            "d.csv",
            "--student-layers",
            "3",
            "--max-minutes",
            "10",
            "--out",
            "o",
        ]
    )
    spec = distill_spec(args)
    assert (
        spec.distill.temperature,
        spec.distill.alpha,
        spec.distill.hidden_loss,
        spec.distill.learning_rate,
    ) == (None, None, None, None)


def test_the_report_and_card_record_the_settings_used(
    tiny_classifier_folder, labelled_csv, tmp_path
):
    from slimformer.pipeline import run

    spec = JobSpec.model_validate(
        {
            "model": {"id": tiny_classifier_folder},
            "dataset": {"path": str(labelled_csv)},
            "method": "distill",
            "distill": {"student": {"layers": 1}, "max_steps": 3},
            "evaluation": {"latency": False},
        },
        context={"local_files": True},
    )
    report = run(spec, tmp_path / "w").report
    used = report["spec"]["distill"]
    assert (used["temperature"], used["alpha"], used["hidden_loss"], used["learning_rate"]) == (
        2.0,
        0.5,
        "cosine",
        1e-4,
    )
    recipe = report["distillation"]["recipe"]
    assert recipe["student_kind"] == "layer_dropped" and "learning_rate" in recipe["from_recipe"]
    assert report["distillation"]["plan"]["total_steps"] == 3
    card = (tmp_path / "w" / "model" / "README.md").read_text()
    assert "temperature 2.0" in card and "hidden-state cosine alignment" in card


def test_an_lm_that_improves_but_stays_worse_than_a_uniform_guess_fails():
    teacher, student, kept, train, _ = _lm_setup()
    held_out = TextData(train.texts[:16])
    config = DistillConfig(
        **{**FAST, "learning_rate": 2e-4, "warmup_ratio": 0.0}, max_steps=2, eval_every=1
    )
    with pytest.raises(DistillationFailed, match="worse than a uniform guess") as err:
        distill(teacher, student, TOKENIZER, train, held_out, config, layer_map=kept)
    details = err.value.details
    assert details["check"] == "worse_than_chance" and details["random_guess"] == 128
    assert details["start"] > details["best"] > 128  # it did improve, not enough
