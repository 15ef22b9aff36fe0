"""A tenant names models and data by Hub id; the service never resolves such a name on its own disk.

Two independent guards: the API refuses path-like ids with a 422 naming the field, and the library's
loaders, told that local files are not allowed (as the worker tells them), never look on the local
disk, so even a Hub-shaped id that happens to be a folder on the server is answered exactly like a
missing Hub repo.
"""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from slimformer.errors import DatasetError, RepoNotFound
from slimformer.hub.policy import HubPolicy
from slimformer.loading import load_model
from slimformer.spec import JobSpec

BASE = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "acme/reviews"},
    "prune": {"heads": 0.5},
}
PATH_LIKE = [
    "data/..",
    "../etc",
    "/root",
    "/etc/passwd",
    "~/secrets",
    "~",
    ".",
    "..",
    "data/.",
    "./data",
    "data/artifacts/uploads",
    "a\\b",
    "acme/.hidden",
    "acme/x..y",
    "acme/tiny/../../etc",
]


def _put(spec: dict, field: str, value: str) -> dict:
    spec = copy.deepcopy(spec)
    if field == "distill.student.id":
        spec.update(method="distill", distill={"student": {"id": value}})
    elif field == "publish.repo_id":
        spec["publish"] = {"repo_id": value}
    else:
        section, name = field.split(".")
        spec[section][name] = value
    return spec


FIELDS = ["model.id", "dataset.hub_id", "distill.student.id", "publish.repo_id"]


@pytest.fixture
def client(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "data"), run_reaper=False)
    app.state.store.create_schema()
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", PATH_LIKE)
def test_the_api_refuses_path_like_ids_naming_the_field(client, field, value):
    r = client.post("/v1/jobs", json=_put(BASE, field, value))
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert field in {f["field"] for f in body["details"]["fields"]}, body


@pytest.mark.parametrize("revision", ["../../etc", "/abs", "a//b", "refs/../x", "a b", "x" * 256])
def test_the_api_refuses_revisions_that_read_as_paths(client, revision):
    r = client.post("/v1/jobs", json=_put(BASE, "model.revision", revision))
    assert r.status_code == 422 and "model.revision" in r.text


def test_hub_ids_and_revisions_that_look_like_the_hubs_are_accepted(client):
    spec = _put(_put(BASE, "model.revision", "refs/pr/1"), "dataset.hub_id", "stanfordnlp/sst2")
    assert client.post("/v1/jobs", json=spec).status_code == 202


@pytest.mark.parametrize("seed", [2**32, 2**40, -1])
def test_seed_out_of_range_is_refused_at_post(client, seed):
    r = client.post("/v1/jobs", json=BASE | {"seed": seed})
    assert r.status_code == 422 and "seed" in r.text


def test_the_command_line_still_takes_local_paths():
    local = _put(_put(BASE, "model.id", "./models/mine"), "dataset.hub_id", "/data/reviews")
    assert JobSpec.model_validate(local, context={"local_files": True}).model.id == "./models/mine"


def test_a_hub_shaped_id_that_is_a_local_folder_is_never_loaded_from_disk(
    hub, policy, tmp_path, monkeypatch, tiny_classifier_folder
):
    # a folder on the server whose relative path looks like a Hub id, and the worker's working
    # directory above it
    import shutil

    shutil.copytree(tiny_classifier_folder, tmp_path / "data" / "artifacts")
    monkeypatch.chdir(tmp_path)
    closed = HubPolicy(cache_dir=policy.cache_dir, backoff_seconds=0.01, allow_local_files=False)
    with pytest.raises(RepoNotFound) as existing:
        load_model("data/artifacts", policy=closed)
    with pytest.raises(RepoNotFound) as missing:
        load_model("data/nothing-here", policy=closed)
    # no existence oracle: the same answer, less the name, for a folder that exists and one that
    # does not
    assert str(existing.value).replace("artifacts", "X") == str(missing.value).replace(
        "nothing-here", "X"
    )
    assert str(tmp_path) not in str(existing.value)
    # the command line (local files allowed) does load the folder
    assert load_model("data/artifacts", policy=policy).task == "text-classification"


def test_a_dataset_id_that_is_a_local_folder_is_answered_as_missing(tmp_path, monkeypatch):
    import datasets

    from slimformer.data import load_hub_dataset

    folder = tmp_path / "data" / "uploads"
    folder.mkdir(parents=True)
    (folder / "train.csv").write_text("text,label\nsecret row of another tenant,1\n")
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    messages = []
    for name in ("data/uploads", "/etc", "../x"):
        with pytest.raises(DatasetError) as err:
            load_hub_dataset(name, split="train", local_files=False, streaming=False)
        messages.append(str(err.value).replace(name, "X"))
        assert "secret row" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert not calls, "datasets was asked to read a local path"
    assert len(set(messages)) == 1 and "not found on the Hub" in messages[0]
