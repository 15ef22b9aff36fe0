"""Downstream tasks (``evaluation.tasks``) through EleutherAI's lm-evaluation-harness: the
card's and the report's numbers are what lm-eval alone reports for the saved folders in a fresh
process, on both execution paths; a task lm-eval does not know, and tasks asked of a classifier,
are refused before any work. The tasks are local, in lm-eval's own format (YAML + JSONL): no Hub."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from slimformer.errors import DatasetError, InvalidSpec
from slimformer.evaluation.downstream import BOOTSTRAP_ITERS, TASK_PATHS_ENV
from slimformer.spec import JobSpec
from slimformer.spec.evaluation import DEFAULT_TASK_LIMIT, DEFAULT_TASKS, DEFAULT_TASKS_ENV
from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

LIMIT = 8
MULTIPLE_CHOICE = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/choice.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
LOGLIKELIHOOD = """task: tiny_continuation
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder}/continuation.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: " {{{{continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
TASKS = ["tiny_choice", "tiny_continuation"]

# lm-eval alone (nothing of slimformer imported): its HF wrapper loads each folder by path
MEASURE = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
tasks_folder, limit, iters, tasks, folders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4].split(","), sys.argv[5:]
manager = TaskManager(include_path=tasks_folder)
measured = []
for folder in folders:
    lm = HFLM(pretrained=folder, trust_remote_code=True, batch_size=8, device="cpu")
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                          bootstrap_iters=iters, log_samples=False)
    measured.append({t: out["results"][t] for t in tasks})
assert "slimformer" not in sys.modules
print("RESULTS " + json.dumps(measured))
"""


@pytest.fixture(scope="module")
def tasks_folder(tmp_path_factory):
    """One multiple-choice and one loglikelihood task, 12 items each, in lm-eval's format."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    with open(folder / "choice.jsonl", "w") as f:
        for i in range(12):
            choices = [" happy", " sad", " blue"]
            row = {"question": f"The cat sat on mat {i % 7}. It was", "choices": choices}
            f.write(json.dumps(row | {"label": i % 2}) + "\n")
    with open(folder / "continuation.jsonl", "w") as f:
        for i in range(12):
            row = {"context": f"Story {i}: the cat sat on", "continuation": f"mat {i % 7}."}
            f.write(json.dumps(row) + "\n")
    (folder / "tiny_choice.yaml").write_text(MULTIPLE_CHOICE.format(folder=folder))
    (folder / "tiny_continuation.yaml").write_text(LOGLIKELIHOOD.format(folder=folder))
    # a task whose data is not there
    missing = MULTIPLE_CHOICE.replace("tiny_choice", "tiny_missing").replace(
        "choice.jsonl", "no.jsonl"
    )
    (folder / "tiny_missing.yaml").write_text(missing.format(folder=folder))
    return folder


@pytest.fixture
def local_tasks(tasks_folder, monkeypatch):
    monkeypatch.setenv(TASK_PATHS_ENV, str(tasks_folder))
    return tasks_folder


def _spec(folder, data, importance: str | None = None, **evaluation) -> JobSpec:
    prune = {"heads": 0.25, "ffn": 0.3} | ({"importance": importance} if importance else {})
    return JobSpec.model_validate(
        {
            "model": {"id": str(folder)},
            "dataset": {"path": str(data), "eval_path": str(data)},
            "prune": prune,
            "evaluation": {"latency": False, "max_samples": 4} | evaluation,
        },
        context={"local_files": True},
    )


def _lm_eval_alone(tasks_folder, folders) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tasks_folder), str(LIMIT), str(BOOTSTRAP_ITERS)]
        + [",".join(TASKS)]
        + [str(f) for f in folders],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.parametrize(
    ("importance", "path"), [(None, "layer_by_layer"), ("magnitude", "in_memory")]
)
def test_card_task_numbers_equal_lm_eval_alone_on_the_saved_folders(
    tmp_path, local_tasks, importance, path
):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    spec = _spec(folder, data, importance, tasks=TASKS, task_limit=LIMIT)
    result = run(spec, tmp_path / "work")
    assert result.report["execution"]["path"] == path
    downstream = result.report["evaluation"]["downstream"]
    assert downstream["tasks"] == TASKS and downstream["limit"] == LIMIT
    rows = {(r["task"], r["metric"]): r for r in downstream["rows"]}
    assert set(rows) == {
        ("tiny_choice", "acc"),
        ("tiny_continuation", "acc"),
        ("tiny_continuation", "perplexity"),
    }

    original, compressed = _lm_eval_alone(local_tasks, [folder, result.folder])
    for (task, metric), row in rows.items():
        assert row["items"] == LIMIT
        for side, alone in (("original", original), ("compressed", compressed)):
            assert math.isclose(row[side], alone[task][f"{metric},none"], rel_tol=1e-5), (
                task,
                metric,
                side,
            )
        if metric == "acc":  # a closed-form stderr (perplexity's is a bootstrap)
            assert math.isclose(row["original_stderr"], original[task]["acc_stderr,none"])
            assert math.isclose(row["compressed_stderr"], compressed[task]["acc_stderr,none"])
            assert row["change_points"] == pytest.approx(
                100 * (row["compressed"] - row["original"])
            )
        else:
            assert row["change_points"] is None and row["higher_is_better"] is False

    card = (result.folder / "README.md").read_text()
    acc = rows[("tiny_choice", "acc")]
    shown = f"| tiny_choice | acc | {LIMIT} | {100 * acc['original']:.2f}% ± "
    assert shown in card
    header = card.split("\n---\n", 1)[0]  # model-index: the compressed model's value per task
    assert "name: tiny_continuation" in header
    assert f"name: acc (lm-eval, first {LIMIT} items)" in header  # not the full split's figure


@pytest.mark.parametrize(
    ("task", "error", "key"),
    [
        ("no_such_task", InvalidSpec, "unknown"),  # lm-eval does not know the name
        ("tiny_missing", DatasetError, "tasks"),  # it knows it but cannot load its data
    ],
)
def test_a_task_that_cannot_run_fails_the_job_before_any_work_naming_it(
    tmp_path, local_tasks, task, error, key
):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=2)
    data = write_story_txt(tmp_path / "stories.txt")
    spec = _spec(folder, data, tasks=["tiny_choice", task])
    stages = []
    with pytest.raises(error, match=task) as err:
        run(spec, tmp_path / "work", on_progress=lambda stage, f, m: stages.append(stage))
    assert stages == [] and err.value.details[key] == [task]
    assert not (tmp_path / "work" / "model").exists()


def test_tasks_are_refused_for_a_classifier_before_any_work(tmp_path, local_tasks):
    from slimformer.pipeline import run

    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=2)
    spec = JobSpec.model_validate(
        {
            "model": {"id": folder, "task": "text-classification"},
            "dataset": {"path": str(write_story_txt(tmp_path / "stories.txt"))},
            "prune": {"heads": 0.25},
            "evaluation": {"tasks": ["tiny_choice"]},
        },
        context={"local_files": True},
    )
    with pytest.raises(InvalidSpec, match="causal LMs"):
        run(spec, tmp_path / "work")


def test_task_flags_set_the_spec(tmp_path):
    from slimformer.cli.local import PRUNE_FLAGS, _spec_data, _validated
    from slimformer.cli.parser import build_parser

    model, data = tmp_path / "m", write_story_txt(tmp_path / "d.txt")
    model.mkdir()
    argv = [
        "prune",
        str(model),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--heads",
        "0.25",
    ]
    args = build_parser().parse_args(argv + ["--tasks", "a, b,a", "--task-limit", "5"])
    spec = _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)
    assert spec.evaluation.tasks == ["a", "b"] and spec.evaluation.task_limit == 5
    plain = _validated(_spec_data(build_parser().parse_args(argv), "prune", PRUNE_FLAGS))
    assert plain.evaluation.tasks is None  # the default set
    args = build_parser().parse_args(argv + ["--tasks", "none"])
    spec = _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)
    assert spec.evaluation.tasks == [] and spec.evaluation.downstream(True) == ([], None, False)
    args = build_parser().parse_args(argv + ["--tasks", "none,arc_easy"])
    with pytest.raises(InvalidSpec, match="'none' turns the tasks off: name it alone"):
        _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)


def test_the_default_set_is_what_a_causal_lm_gets_when_no_task_is_named(monkeypatch):
    from slimformer.spec.evaluation import EvaluationSpec

    monkeypatch.delenv(DEFAULT_TASKS_ENV)
    assert EvaluationSpec().downstream(True) == (list(DEFAULT_TASKS), DEFAULT_TASK_LIMIT, True)
    assert EvaluationSpec(task_limit=7).downstream(True)[1] == 7
    assert EvaluationSpec().downstream(False) == ([], None, False)  # encoders: their task metric
    monkeypatch.setenv(DEFAULT_TASKS_ENV, "piqa, boolq")  # the operator's set
    assert EvaluationSpec().downstream(True)[0] == ["piqa", "boolq"]
    monkeypatch.setenv(DEFAULT_TASKS_ENV, "")
    assert EvaluationSpec().downstream(True)[0] == []


def test_an_operators_default_set_runs_when_no_task_is_named(tmp_path, local_tasks, monkeypatch):
    from slimformer.pipeline import run

    monkeypatch.setenv(DEFAULT_TASKS_ENV, "tiny_choice,tiny_missing")
    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    result = run(_spec(folder, data, "magnitude"), tmp_path / "work")
    downstream = result.report["evaluation"]["downstream"]
    assert downstream["default"] is True and downstream["tasks"] == ["tiny_choice"]
    assert downstream["limit"] == DEFAULT_TASK_LIMIT
    # all 12 items (fewer than the limit), both models
    assert [(r["task"], r["metric"], r["items"]) for r in downstream["rows"]] == [
        ("tiny_choice", "acc", 12)
    ]
    # a default task that cannot load is left out, saying why; the job goes on
    assert list(downstream["not_run"]) == ["tiny_missing"]
    card = (result.folder / "README.md").read_text()
    assert "The default tasks (none were named)." in card and "| tiny_choice | acc | 12 |" in card
    assert "Default tasks that did not run" in card and "\n- tiny_missing: " in card


def test_the_default_set_offline_is_left_out_saying_why(tmp_path, local_tasks, monkeypatch):
    """The real default tasks, their data on an unreachable Hub: the job is written, and the card
    names each task and why it did not run."""
    from slimformer.pipeline import run

    monkeypatch.delenv(DEFAULT_TASKS_ENV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    # in memory: layer by layer a tiny model's estimate leaves no room for a whole model, and the
    # tasks would be left out for that before their data is asked for (the test after this one)
    result = run(_spec(folder, data, "magnitude"), tmp_path / "work")
    downstream = result.report["evaluation"]["downstream"]
    assert downstream["default"] is True and downstream["rows"] == []
    assert list(downstream["not_run"]) == list(DEFAULT_TASKS)
    assert all("ConnectionError" in why for why in downstream["not_run"].values())
    card = (result.folder / "README.md").read_text()
    for task in DEFAULT_TASKS:
        assert f"- {task}: ConnectionError" in card


def test_default_tasks_layer_by_layer_run_only_where_a_whole_model_fits(
    tmp_path, local_tasks, monkeypatch
):
    """Named tasks are in the job's estimate; the default set is not, so layer by layer it runs
    only where one whole model fits, like latency, and the card says why it did not."""
    from slimformer.pipeline import run
    from slimformer.recipe import whole_models

    monkeypatch.setenv(DEFAULT_TASKS_ENV, "tiny_choice")
    monkeypatch.setattr(whole_models, "whole_model_bytes", lambda *a: 2**50)  # a PiB each
    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    result = run(_spec(folder, data), tmp_path / "work")
    report = result.report
    assert report["execution"]["path"] == "layer_by_layer"
    whole = report["execution"]["whole_model"]
    assert whole["tasks"] is False and whole["task_needed_bytes"] > 2**50
    downstream = report["evaluation"]["downstream"]
    assert downstream["rows"] == [] and downstream["tasks"] == []
    assert downstream["not_run"]["tiny_choice"].startswith("no room for a whole model: ")
    assert "default downstream tasks would need about" in (result.folder / "README.md").read_text()


def test_a_default_task_that_fails_while_it_runs_is_left_out_not_the_job(
    tmp_path, local_tasks, monkeypatch
):
    from slimformer.pipeline import run
    from slimformer.recipe import whole_models

    def broken(*args, **kwargs):
        raise RuntimeError("the context is longer than the model's positions")

    monkeypatch.setenv(DEFAULT_TASKS_ENV, "tiny_choice")
    monkeypatch.setattr(whole_models, "run_tasks", broken)
    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt", stories=40)
    result = run(_spec(folder, data, "magnitude"), tmp_path / "work")
    downstream = result.report["evaluation"]["downstream"]
    assert downstream["rows"] == [] and downstream["tasks"] == []
    why = downstream["not_run"]["tiny_choice"]
    assert why.startswith("lm-eval failed on the original model: RuntimeError: the context")
    # a task the spec names fails the job instead
    spec = _spec(folder, data, "magnitude", tasks=["tiny_choice"])
    with pytest.raises(RuntimeError, match="longer than the model's positions"):
        run(spec, tmp_path / "work2")
