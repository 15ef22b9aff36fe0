"""lm-eval's task data is read with the job's Hub token, never with the worker's own login, and
into the job's own cache: a tenant without access to a private dataset cannot evaluate on it,
even after another tenant's job has read it on the same worker.

The task is in lm-eval's own YAML format and reads a private dataset of the Hub (the fake Hub
of testkit, speaking the Hub's protocol); the worker process is logged in as the dataset's owner
(``HF_TOKEN``), as a careless deployment would be.
"""

from __future__ import annotations

import json
import os

import pytest

from slimformer.errors import DatasetError
from slimformer.evaluation.downstream import TASK_PATHS_ENV, _task_manager
from slimformer.hub.policy import HubPolicy
from slimformer.spec import JobSpec
from testkit.hub_server import ALICE_TOKEN, BOB_TOKEN
from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

TASK = """task: acme_private_choice
dataset_path: acme/private-choice
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
README = b"""---
configs:
- config_name: default
  data_files:
  - split: test
    path: data/test.jsonl
---
"""


def _rows() -> bytes:
    rows = [
        {
            "question": f"secret question {i} of acme. It was",
            "choices": [" yes", " no"],
            "label": i % 2,
        }
        for i in range(8)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def private_task(hub, tmp_path, monkeypatch):
    hub.add_dataset(
        "acme/private-choice", {"README.md": README, "data/test.jsonl": _rows()}, private=True
    )
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "acme_private_choice.yaml").write_text(TASK)
    monkeypatch.setenv(TASK_PATHS_ENV, str(folder))
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)  # the worker's own login: alice's
    _task_manager.cache_clear()
    yield "acme_private_choice"
    _task_manager.cache_clear()


@pytest.fixture
def job_inputs(tmp_path):
    model = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4)
    data = write_story_txt(tmp_path / "stories.txt")
    return model, data


def _run(job_inputs, tmp_path, name: str, task: str, token: str | None):
    from slimformer.pipeline import run

    model, data = job_inputs
    spec = JobSpec.model_validate(
        {
            "model": {"id": str(model)},
            "dataset": {"path": str(data)},
            "prune": {"heads": 0.25},
            "evaluation": {"latency": False, "max_samples": 4, "tasks": [task], "new_tokens": 0},
        },
        context={"local_files": True},
    )
    policy = HubPolicy(
        cache_dir=tmp_path / "shared-cache", backoff_seconds=0.01, ambient_token=False
    )
    return run(spec, tmp_path / name, token=token, hub_policy=policy)


def test_task_data_needs_the_jobs_own_token(private_task, job_inputs, tmp_path):
    # no token: the worker's login must not stand in for the tenant
    with pytest.raises(DatasetError, match=private_task) as refused:
        _run(job_inputs, tmp_path, "anonymous", private_task, None)
    assert "secret question" not in refused.value.message
    # alice, whose dataset it is: the task runs on both models
    report = _run(job_inputs, tmp_path, "alice", private_task, ALICE_TOKEN).report
    rows = report["evaluation"]["downstream"]["rows"]
    assert {row["task"] for row in rows} == {private_task} and rows[0]["items"] == 8
    # bob, after alice's job read it on this worker: refused, nothing of hers shown
    with pytest.raises(DatasetError, match=private_task) as refused:
        _run(job_inputs, tmp_path, "bob", private_task, BOB_TOKEN)
    assert "secret question" not in refused.value.message
    # the worker's own settings are as they were
    assert os.environ["HF_TOKEN"] == ALICE_TOKEN
