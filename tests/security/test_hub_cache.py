"""One tenant's private Hub data never reaches another through a cache the worker shares.

``datasets.load_dataset`` falls back to whatever an earlier call left in its cache when the Hub
refuses a repo ("Using the latest cached version of the dataset since ... couldn't be found"), and
huggingface_hub serves cached files of a commit without asking the Hub. So: alice's job reads her
private dataset and model into the worker's caches; bob's job, with no token or a wrong one, must be
answered exactly as for a repo that never existed, and nothing of alice's (a row, a column name, a
config name, a file name) may appear in what bob gets back.
"""

from __future__ import annotations

import json

import pytest

from slimformer.errors import DatasetError, RepoNotFound, SlimformerError, Unauthorized
from slimformer.hub.download import download_model
from slimformer.hub.policy import HubPolicy
from testkit.hub_server import ALICE_TOKEN

SECRET_ROWS = [f"secret row {i} of acme" for i in range(24)]
README = b"""---
configs:
- config_name: secret-config
  data_files:
  - split: train
    path: hidden/train.jsonl
  - split: validation
    path: hidden/validation.jsonl
---
"""
ALICE_WORDS = ["secret row", "secret-config", "confidential_text", "hidden/", "jsonl"]


def _rows() -> bytes:
    return "".join(
        json.dumps({"confidential_text": text, "label": ("negative", "positive")[i % 2]}) + "\n"
        for i, text in enumerate(SECRET_ROWS)
    ).encode()


def add_private_dataset(hub, repo_id: str = "acme/secret") -> None:
    hub.add_dataset(
        repo_id,
        {
            "README.md": README,
            "hidden/train.jsonl": _rows(),
            "hidden/validation.jsonl": _rows(),
        },
        private=True,
    )


@pytest.fixture
def service_policy(tmp_path):
    """What a worker passes: one cache for every job, Hub ids only, no login of its own."""
    return HubPolicy(
        cache_dir=tmp_path / "shared-cache",
        backoff_seconds=0.01,
        allow_local_files=False,
        ambient_token=False,
    )


@pytest.fixture
def shared_datasets_cache(tmp_path, monkeypatch):
    """The process-wide ``datasets`` cache a worker would otherwise share between jobs."""
    import datasets

    folder = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)
    return folder


def _load(dataset_id, policy, token=None, **kwargs):
    from slimformer.data import load_hub_dataset

    return load_hub_dataset(
        dataset_id,
        split=kwargs.pop("split", "train"),
        token=token,
        local_files=False,
        policy=policy,
        streaming=False,
        **kwargs,
    )


def _refusal(call) -> SlimformerError:
    with pytest.raises(SlimformerError) as err:
        call()
    return err.value


def _same_answer(refused: SlimformerError, never_seen: SlimformerError, name: str, other: str):
    """The same code, type, message and details, but for the repo name (the details echo only
    what the caller sent); nothing of alice's in the message."""
    assert type(refused) is type(never_seen) and refused.code == never_seen.code
    assert str(refused).replace(name, "X") == str(never_seen).replace(other, "X")
    assert json.dumps(refused.details).replace(name, "X") == json.dumps(never_seen.details).replace(
        other, "X"
    )
    for word in ALICE_WORDS:
        assert word not in str(refused), (word, str(refused))


def test_alice_reads_her_private_dataset_with_her_token(hub, service_policy):
    add_private_dataset(hub)
    data = _load(
        "acme/secret",
        service_policy,
        ALICE_TOKEN,
        config="secret-config",
        text_column="confidential_text",
    )
    assert sorted(data.texts) == sorted(SECRET_ROWS)


@pytest.mark.parametrize("token", [None, "hf_wrong_token_0123456789"], ids=["no-token", "wrong"])
def test_a_cached_private_dataset_is_refused_like_one_that_never_existed(
    hub, service_policy, shared_datasets_cache, token
):
    add_private_dataset(hub)
    # alice's job fills every cache the worker has: the shared huggingface_hub cache and
    # datasets' own
    _load(
        "acme/secret",
        service_policy,
        ALICE_TOKEN,
        config="secret-config",
        text_column="confidential_text",
    )
    import datasets

    datasets.load_dataset("acme/secret", "secret-config", split="train", token=ALICE_TOKEN)
    assert any(shared_datasets_cache.rglob("*.arrow")), (
        "the shared datasets cache holds alice's rows"
    )

    # the original attack: a text column named as the label column lists the "unknown labels"
    attacks = [
        dict(config="secret-config", label_column="confidential_text"),
        dict(config="secret-config", text_column="no_such_column"),
        dict(config="other-config"),  # would list the cached configs
        dict(),
    ]
    for kwargs in attacks:
        refused = _refusal(
            lambda kwargs=kwargs: _load("acme/secret", service_policy, token, **kwargs)
        )
        never_seen = _refusal(
            lambda kwargs=kwargs: _load("acme/never", service_policy, token, **kwargs)
        )
        _same_answer(refused, never_seen, "acme/secret", "acme/never")
    if token is None:
        assert isinstance(never_seen, DatasetError) and "not found" in str(never_seen)
    else:
        assert isinstance(never_seen, Unauthorized)


def test_a_job_without_a_token_never_reads_as_the_workers_own_login(
    hub, service_policy, monkeypatch
):
    """HF_TOKEN on a worker machine (the operator's login) is not lent to a job without a token."""
    from huggingface_hub import constants

    add_private_dataset(hub)
    hub.add_repo(
        "acme/private-model", {"config.json": b"{}", "model.safetensors": b"x"}, private=True
    )
    monkeypatch.setenv("HF_TOKEN", ALICE_TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent")
    never_seen = _refusal(lambda: _load("acme/never", service_policy))
    _same_answer(
        _refusal(lambda: _load("acme/secret", service_policy)),
        never_seen,
        "acme/secret",
        "acme/never",
    )
    with pytest.raises(RepoNotFound):
        download_model("acme/private-model", policy=service_policy)
    # the command line (ambient login allowed) does use it
    cli = HubPolicy(cache_dir=service_policy.cache_dir, backoff_seconds=0.01)
    assert download_model("acme/private-model", policy=cli).commit


@pytest.mark.parametrize("token", [None, "hf_wrong_token_0123456789"], ids=["no-token", "wrong"])
def test_a_cached_private_model_is_refused_like_one_that_never_existed(
    hub, service_policy, tiny_classifier_folder, token
):
    repo = hub.add_repo("acme/private-model", tiny_classifier_folder, private=True)
    commit = repo.commits[-1].sha
    alice = download_model("acme/private-model", token=ALICE_TOKEN, policy=service_policy)
    assert alice.commit == commit and (alice.path / "config.json").is_file()

    before = len(hub.requests)
    never_seen = _refusal(lambda: download_model("acme/never", token=token, policy=service_policy))
    for revision in (None, commit, "main"):
        refused = _refusal(
            lambda revision=revision: download_model(
                "acme/private-model", revision=revision, token=token, policy=service_policy
            )
        )
        assert type(refused) is type(never_seen) and refused.code == never_seen.code
        assert str(refused).replace("acme/private-model", "X") == str(never_seen).replace(
            "acme/never", "X"
        )
        assert "safetensors" not in str(refused) and commit not in str(refused)
    # every refused call stopped at the Hub's answer about the repo: no file was asked for
    asked = [path for _, path in hub.requests[before:]]
    assert asked and all(path.startswith("/api/models/") for path in asked), asked


@pytest.mark.slow
@pytest.mark.integration
def test_through_the_service_bob_gets_nothing_of_alices_cached_hub_data(
    tmp_path, tiny_classifier_folder
):
    """The probe's own steps against ``slimformer serve`` (API + worker process, keys alice and
    bob, the worker logged in to the Hub as alice through HF_TOKEN): alice's job reads her private
    dataset and model into the worker's caches; bob's jobs naming them, with no token and with a
    wrong one, fail exactly like jobs naming repos that never existed."""
    from testkit.hub_server import HubServer
    from testkit.services import Service, base_env, free_port

    hub = HubServer().start()
    hub.add_user("alice", ALICE_TOKEN, orgs=("acme",))
    hub.add_repo("acme/tiny", tiny_classifier_folder)
    hub.add_repo("acme/private-model", tiny_classifier_folder, private=True)
    add_private_dataset(hub)
    data_dir = tmp_path / "data"
    env = base_env(data_dir, hub, free_port()) | {"HF_TOKEN": ALICE_TOKEN}
    service = Service(data_dir, env, int(env["SLIMFORMER_PORT"]))
    keys = {}
    for name in ("alice", "bob"):
        created = service.command("keys", "create", "--name", name)
        assert created.returncode == 0, created.stderr
        keys[name] = {"Authorization": f"Bearer {created.stdout.strip()}"}
    service.start_api(worker=True)
    try:
        columns = {"text_column": "confidential_text", "label_column": "label"}
        dataset = {"hub_id": "acme/secret", "config": "secret-config"} | columns
        spec = {"method": "prune", "prune": {"heads": 0.5}, "evaluation": {"max_samples": 8}}

        def run(who: str, model: str, data: dict, token: str | None) -> dict:
            body = spec | {"model": {"id": model}, "dataset": data}
            if token:
                body["hub_token"] = token
            service.headers = keys[who]
            return service.wait(service.submit(body)["id"])

        alice = run(
            "alice",
            "acme/private-model",
            dataset | {"eval_split": "validation"},
            ALICE_TOKEN,
        )
        assert alice["status"] == "succeeded", alice
        wrong = "hf_wrong_token_0123456789"
        for token in (None, wrong):
            for data in (
                dataset | {"label_column": "confidential_text"},  # the probe's attack
                dataset | {"text_column": "no_such_column"},
                {"hub_id": "acme/secret", "config": "other-config", **columns},
            ):
                refused = run("bob", "acme/tiny", data, token)
                never = run("bob", "acme/tiny", data | {"hub_id": "acme/never"}, token)
                assert refused["status"] == never["status"] == "failed"
                mine, theirs = refused["error"], never["error"]
                assert mine["code"] == theirs["code"]
                assert mine["message"].replace("acme/secret", "X") == theirs["message"].replace(
                    "acme/never", "X"
                )
                # the details only echo what bob sent
                assert json.dumps(mine["details"]).replace("acme/secret", "X") == json.dumps(
                    theirs["details"]
                ).replace("acme/never", "X")
                for word in ("secret row", "secret-config", "hidden/", "jsonl", "negative"):
                    assert word not in mine["message"], (word, mine)
            refused = run("bob", "acme/private-model", dataset, token)
            never = run("bob", "acme/never-model", dataset, token)
            assert refused["status"] == never["status"] == "failed"
            assert refused["error"]["code"] == never["error"]["code"]
            assert refused["error"]["message"].replace("acme/private-model", "X") == never["error"][
                "message"
            ].replace("acme/never-model", "X")
    finally:
        service.kill()
        hub.stop()
