import json
from pathlib import Path

import jsonschema
import pytest
import torch
import transformers
from huggingface_hub import ModelCard

from slimformer.data import load_text_file, make_batches
from slimformer.errors import Cancelled
from slimformer.evaluation import task_metric
from slimformer.pipeline import SCHEMA_FILE, STAGES, run
from slimformer.report import CompressionReport
from slimformer.spec import JobSpec


def _spec(model, data, **overrides):
    body = {
        "model": {"id": model},
        "dataset": {"path": str(data)},
        "method": "prune",
        "prune": {"heads": 0.5, "ffn": 0.3},
        "evaluation": {"latency": True},
    }
    for key, value in overrides.items():
        body[key] = value
    return JobSpec.model_validate(body, context={"local_files": True})


@pytest.fixture
def pruned_run(tiny_classifier_folder, labelled_csv, tmp_path):
    stages = []
    result = run(
        _spec(tiny_classifier_folder, labelled_csv),
        tmp_path / "work",
        on_progress=lambda stage, fraction, message: stages.append(stage),
    )
    return result, stages


def test_run_writes_a_complete_folder_with_a_valid_report(pruned_run):
    result, stages = pruned_run
    folder = result.folder
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modeling_slimformer.py",
        "README.md",
        "compression_report.json",
        "head_importance.png",
    ):
        assert (folder / name).is_file(), name
    report = json.loads((folder / "compression_report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    CompressionReport.model_validate(report)
    assert report["artifacts"]["files"] == sorted(p.name for p in folder.iterdir())
    seen = [s for i, s in enumerate(stages) if s != (stages[i - 1] if i else None)]
    assert seen == ["downloading", "scoring", "pruning", "evaluating", "writing_card"]
    assert set(seen) <= set(STAGES)


def test_card_metadata_round_trips_and_equals_the_report(pruned_run):
    result, _ = pruned_run
    card = ModelCard.load(result.folder / "README.md")
    report = result.report
    assert card.data.base_model is None  # a local folder is no Hub id; the body names it
    assert f"`{report['base_model']['id']}`" in card.text
    assert {"slimformer", "pruned"} <= set(card.data.tags)
    assert (
        card.data.pipeline_tag == "text-classification" and card.data.library_name == "transformers"
    )
    from_card = {r.metric_type: r.metric_value for r in card.data.eval_results}
    from_report = {k: round(v, 6) for k, v in report["evaluation"]["compressed"]["metrics"].items()}
    assert from_card == from_report and "accuracy" in from_card
    text = card.text
    assert "| Parameters |" in text and "Latency p50" in text and "trust_remote_code=True" in text
    assert (
        "![Head importance" in text and "## What was removed" in text and "## Limitations" in text
    )


def test_reported_accuracy_equals_a_separate_evaluation_of_the_saved_model(
    pruned_run, labelled_csv
):
    result, _ = pruned_run
    folder = result.folder
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    # the held-out evaluation rows: the run shuffles with the seed and holds out the first fifth
    import random

    data = load_text_file(labelled_csv)
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    held_out = data.subset(order[: len(order) // 5])
    batches = make_batches(tokenizer, held_out, task="text-classification", config=model.config)
    _, accuracy = task_metric(model, batches)
    assert accuracy == pytest.approx(
        result.report["evaluation"]["compressed"]["metrics"]["accuracy"], abs=1e-9
    )


def test_iterative_run_plots_the_curve(tiny_classifier_folder, labelled_csv, tmp_path):
    spec = _spec(
        tiny_classifier_folder,
        labelled_csv,
        prune={"heads": 0.5, "schedule": "iterative", "step": 0.25, "metric_floor": 0.01},
        evaluation={"latency": False},
    )
    result = run(spec, tmp_path / "work")
    assert (result.folder / "pruning_curve.png").is_file()
    assert len(result.report["pruning"]["curve"]) >= 3
    assert "![Metric against the fraction" in (result.folder / "README.md").read_text()


@pytest.mark.parametrize(
    "stop_at", ["downloading", "scoring", "pruning", "evaluating", "writing_card"]
)
def test_cancellation_at_any_stage_leaves_no_folder(
    tiny_classifier_folder, labelled_csv, tmp_path, stop_at
):
    seen = []

    def progress(stage, fraction, message):
        seen.append(stage)

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        run(
            _spec(tiny_classifier_folder, labelled_csv, evaluation={"latency": False}),
            tmp_path / "work",
            out_dir=out,
            on_progress=progress,
            should_cancel=lambda: stop_at in seen,
        )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_a_failing_run_leaves_no_folder(
    tiny_classifier_folder, labelled_csv, tmp_path, monkeypatch
):
    from slimformer.recipe import writing

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writing, "build_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run(
            _spec(tiny_classifier_folder, labelled_csv, evaluation={"latency": False}),
            tmp_path / "w",
            out_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()


def test_uniform_layout_card_loads_without_remote_code(
    tiny_classifier_folder, labelled_csv, tmp_path
):
    spec = _spec(
        tiny_classifier_folder,
        labelled_csv,
        prune={"ffn": 0.5, "layout": "uniform"},
        evaluation={"latency": False},
    )
    result = run(spec, tmp_path / "w")
    text = (result.folder / "README.md").read_text()
    assert "trust_remote_code" not in text
    transformers.AutoModelForSequenceClassification.from_pretrained(result.folder)
    assert torch.is_tensor(
        next(
            iter(
                transformers.AutoModelForSequenceClassification.from_pretrained(result.folder)
                .state_dict()
                .values()
            )
        )
    )


def test_base_model_license_is_inherited(tiny_classifier_folder, labelled_csv, tmp_path):
    (Path(tiny_classifier_folder) / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# tiny\n"
    )
    try:
        result = run(
            _spec(tiny_classifier_folder, labelled_csv, evaluation={"latency": False}),
            tmp_path / "w",
        )
    finally:
        (Path(tiny_classifier_folder) / "README.md").unlink()
    assert ModelCard.load(result.folder / "README.md").data.license == "apache-2.0"


def test_distill_run_writes_a_stock_student_with_a_training_health_section(
    tiny_classifier_folder, labelled_csv, tmp_path
):
    spec = _spec(
        tiny_classifier_folder,
        labelled_csv,
        method="distill",
        prune={},
        distill={"student": {"layers": 1}, "max_steps": 6},
        evaluation={"latency": False},
    )
    result = run(spec, tmp_path / "w")
    config = json.loads((result.folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and "auto_map" not in config
    transformers.AutoModelForSequenceClassification.from_pretrained(result.folder)
    report = result.report
    assert report["distillation"]["steps"] == 6 and report["distillation"]["student"]["layers"] == 1
    assert report["pruning"] is None
    text = (result.folder / "README.md").read_text()
    assert "### Distillation" in text and "### Training health" in text
    assert {"slimformer", "distilled"} <= set(ModelCard.load(result.folder / "README.md").data.tags)
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    CompressionReport.model_validate(report)


def test_prune_then_distill_trains_the_pruned_model(tiny_classifier_folder, labelled_csv, tmp_path):
    spec = _spec(
        tiny_classifier_folder,
        labelled_csv,
        method="prune_distill",
        prune={"heads": 0.5},
        distill={"max_steps": 4},
        evaluation={"latency": False},
    )
    result = run(spec, tmp_path / "w")
    report = result.report
    assert (
        report["distillation"]["student"] == {"pruned": True}
        and report["distillation"]["steps"] == 4
    )
    assert sum(report["pruning"]["heads_per_layer"]) == 4
    assert {"pruned", "distilled"} <= set(ModelCard.load(result.folder / "README.md").data.tags)
    transformers.AutoModelForSequenceClassification.from_pretrained(
        result.folder, trust_remote_code=True
    )


def test_the_recipe_runs_exactly_the_stage_table():
    """The stage table the service and the runner read is the list the recipe runs: every stage
    has a step, every step a stage, and a job's stages come in the table's order."""
    from slimformer.pipeline import STEPS
    from slimformer.spec import STAGE_TABLE, stages_for

    assert list(STEPS) == [stage.name for stage in STAGE_TABLE] == list(STAGES)
    assert stages_for({"method": "prune_distill", "publish": {"repo_id": "a/b"}}) == list(STAGES)
    assert stages_for({"method": "distill"}) == [
        "downloading",
        "distilling",
        "evaluating",
        "writing_card",
    ]
