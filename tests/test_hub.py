"""Hub integration against a real HTTP server speaking the Hub's protocol (testkit/hub_server.py),
driven by the real huggingface_hub and transformers clients."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from slimformer.errors import HubAccessError, HubUnavailable, PickleOnly, RemoteCode
from slimformer.hub.download import download_model
from slimformer.hub.publish import publish_folder
from slimformer.loading import load_model
from slimformer.pipeline import run
from slimformer.spec import JobSpec
from testkit.hub_server import ALICE_TOKEN as TOKEN
from testkit.hub_server import BOB_TOKEN as OTHER_TOKEN


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(Path(folder) / "model.safetensors")


def test_download_fetches_only_what_a_model_needs_and_loads(hub, policy, tiny_classifier_folder):
    repo = hub.add_repo("acme/tiny", tiny_classifier_folder)
    repo.commit(
        {
            **repo.resolve("main").files,
            "pytorch_model.bin": b"pickle",
            "training_args.bin": b"pickle",
            "model.onnx": b"onnx",
            "notes/big.dat": b"x" * 100,
        },
        "extra files",
    )
    snapshot = download_model("acme/tiny", policy=policy)
    assert snapshot.commit == repo.refs["main"] and snapshot.revision is None
    names = {
        p.relative_to(snapshot.path).as_posix() for p in snapshot.path.rglob("*") if p.is_file()
    }
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not names & {
        "pytorch_model.bin",
        "training_args.bin",
        "model.onnx",
        "notes/big.dat",
        ".gitattributes",
    }
    assert str(snapshot.path).startswith(
        str(policy.cache_dir)
    )  # the shared cache, not a private copy
    assert not any("pytorch_model.bin" in p or "model.onnx" in p for p in hub.paths())

    loaded = load_model("acme/tiny", policy=policy)
    assert loaded.commit == repo.refs["main"] and loaded.task == "text-classification"
    local = transformers.AutoModelForSequenceClassification.from_pretrained(
        tiny_classifier_folder
    ).eval()
    batch = loaded.tokenizer(["a fine film", "a dull one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded.model(**batch).logits, local(**batch).logits)


def test_transformers_from_pretrained_and_tokenizer_straight_from_the_server(
    hub, tiny_classifier_folder
):
    hub.add_repo("acme/tiny", tiny_classifier_folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained("acme/tiny")
    tokenizer = transformers.AutoTokenizer.from_pretrained("acme/tiny")
    local = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_classifier_folder)
    assert (
        tokenizer("hello world")["input_ids"]
        == transformers.AutoTokenizer.from_pretrained(tiny_classifier_folder)("hello world")[
            "input_ids"
        ]
    )
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), local.state_dict().values(), strict=True)
    )


def test_a_revision_is_resolved_to_its_commit(hub, policy, tiny_classifier_folder):
    repo = hub.add_repo("acme/tiny", tiny_classifier_folder)
    first = repo.refs["main"]
    repo.refs["v1"] = first
    repo.commit({**repo.resolve("main").files, "README.md": b"# newer\n"}, "newer card")
    assert download_model("acme/tiny", revision="v1", policy=policy).commit == first
    snapshot = download_model("acme/tiny", revision=first, policy=policy)
    assert (
        snapshot.commit == first
        and snapshot.revision == first
        and not (snapshot.path / "README.md").exists()
    )


def test_private_repo_needs_the_token(hub, policy, tiny_classifier_folder):
    hub.add_repo("alice/secret", tiny_classifier_folder, private=True)
    with pytest.raises(HubAccessError) as err:
        download_model("alice/secret", policy=policy)
    assert err.value.code == "repo_not_found" and "token" in str(err.value)
    with pytest.raises(HubAccessError) as err:  # a valid token of someone else: still invisible
        download_model("alice/secret", token=OTHER_TOKEN, policy=policy)
    assert err.value.code == "repo_not_found"
    snapshot = download_model("alice/secret", token=TOKEN, policy=policy)
    assert (snapshot.path / "model.safetensors").is_file()
    assert f"Bearer {TOKEN}" in hub.auth_headers


def _config_with_auto_map(folder) -> bytes:
    config = json.loads((Path(folder) / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    "case, code",
    [
        ("missing", "repo_not_found"),
        ("revision", "revision_not_found"),
        ("gated", "gated_repo"),
        ("bad_token", "unauthorized"),
        ("too_large", "model_too_large"),
        ("pickle_only", "pickle_only"),
        ("remote_code", "remote_code"),
        ("down", "hub_unavailable"),
    ],
)
def test_each_failure_has_its_code(hub, policy, tiny_classifier_folder, case, code):
    files = {p.name: p.read_bytes() for p in Path(tiny_classifier_folder).iterdir()}
    hub.add_repo("acme/tiny", files)
    hub.add_repo("acme/gated", files, gated=True)
    hub.add_repo("acme/old", {"config.json": files["config.json"], "pytorch_model.bin": b"pickle"})
    hub.add_repo(
        "acme/custom", {**files, "config.json": _config_with_auto_map(tiny_classifier_folder)}
    )
    repo_id, kwargs = "acme/tiny", {}
    if case == "missing":
        repo_id = "acme/nothing-here"
    elif case == "revision":
        kwargs = {"revision": "no-such-branch"}
    elif case == "gated":
        repo_id, kwargs = "acme/gated", {"token": OTHER_TOKEN}
    elif case == "bad_token":
        kwargs = {"token": "hf_not_a_real_token"}
    elif case == "too_large":
        policy.max_model_bytes = 1000
    elif case == "pickle_only":
        repo_id = "acme/old"
    elif case == "remote_code":
        repo_id = "acme/custom"
    elif case == "down":
        policy.retries = 2
        hub.fail_next(100)
    with pytest.raises(HubAccessError) as err:
        download_model(repo_id, policy=policy, **kwargs)
    assert err.value.code == code
    assert err.value.transient is (code == "hub_unavailable")
    assert err.value.details["repo_id"] == repo_id
    if case == "down":
        assert len(hub.requests) == 3  # one try and two retries, then it gives up


def test_size_limit_is_checked_before_any_file_is_downloaded(hub, policy, tiny_classifier_folder):
    hub.add_repo("acme/tiny", tiny_classifier_folder)
    size = (Path(tiny_classifier_folder) / "model.safetensors").stat().st_size
    policy.max_model_bytes = size  # the weights fit, the weights and the tokenizer do not
    with pytest.raises(HubAccessError) as err:
        download_model("acme/tiny", policy=policy)
    assert err.value.code == "model_too_large" and err.value.details["limit"] == size
    assert "MB" in str(err.value)
    assert hub.paths() == ["/api/models/acme/tiny"]  # metadata only: no resolve, no tree
    policy.max_model_bytes = 10 * size
    download_model("acme/tiny", policy=policy)


def test_pickle_only_and_remote_code_are_refused_unless_allowed(
    hub, policy, tiny_classifier_folder
):
    hub.add_repo(
        "acme/old",
        {
            "config.json": (Path(tiny_classifier_folder) / "config.json").read_bytes(),
            "pytorch_model.bin": b"pickle",
            "optimizer.pt": b"pickle",
        },
    )
    with pytest.raises(PickleOnly, match="pickle"):
        download_model("acme/old", policy=policy)
    assert not [p for p in hub.paths() if "/resolve/" in p]
    policy.allow_pickle = True
    snapshot = download_model("acme/old", policy=policy)
    assert (snapshot.path / "pytorch_model.bin").is_file() and not (
        snapshot.path / "optimizer.pt"
    ).exists()

    custom = {
        "config.json": _config_with_auto_map(tiny_classifier_folder),
        "model.safetensors": b"{}",
    }
    hub.add_repo("acme/custom", custom)
    with pytest.raises(RemoteCode, match="custom classes"):
        download_model("acme/custom", policy=policy)
    policy.allow_remote_code = True
    assert (download_model("acme/custom", policy=policy).path / "config.json").is_file()


def test_remote_code_in_the_tokenizer_config_is_refused(hub, policy, tiny_classifier_folder):
    files = {p.name: p.read_bytes() for p in Path(tiny_classifier_folder).iterdir()}
    tokenizer_config = json.loads(files["tokenizer_config.json"])
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    hub.add_repo(
        "acme/custom-tok", {**files, "tokenizer_config.json": json.dumps(tokenizer_config).encode()}
    )
    with pytest.raises(RemoteCode, match="tokenizer_config.json"):
        download_model("acme/custom-tok", policy=policy)
    assert not [p for p in hub.paths() if p.endswith("model.safetensors")]


def test_5xx_is_retried_then_succeeds(hub, policy, tiny_classifier_folder):
    hub.add_repo("acme/tiny", tiny_classifier_folder)
    hub.fail_next(2)
    snapshot = download_model("acme/tiny", policy=policy)
    assert (snapshot.path / "model.safetensors").is_file()
    assert hub.paths()[:3] == ["/api/models/acme/tiny"] * 3


def test_4xx_is_not_retried(hub, policy):
    with pytest.raises(HubAccessError) as err:
        download_model("acme/nothing-here", policy=policy)
    assert err.value.code == "repo_not_found" and not err.value.transient
    assert hub.paths() == ["/api/models/acme/nothing-here"]


def test_network_error_is_transient(hub, policy):
    policy.endpoint, policy.retries = "http://127.0.0.1:9", 1  # nothing listens on the discard port
    with pytest.raises(HubUnavailable) as err:
        download_model("acme/tiny", policy=policy)
    assert err.value.transient and err.value.code == "hub_unavailable"


def test_publish_creates_a_private_repo_and_commits_the_folder(hub, policy, tiny_classifier_folder):
    result = publish_folder(
        tiny_classifier_folder, "acme/tiny-pruned", token=TOKEN, job_id="job-42", policy=policy
    )
    repo = hub.repos["acme/tiny-pruned"]
    head = repo.resolve("main")
    assert (
        repo.private
        and result.commit_sha == head.sha
        and not result.skipped
        and result.pr_url is None
    )
    assert result.repo_url == f"{hub.url}/acme/tiny-pruned" and head.sha in result.commit_url
    assert "job-42" in head.message
    for path in Path(tiny_classifier_folder).iterdir():
        assert head.files[path.name] == path.read_bytes()


def test_republishing_the_same_content_makes_no_second_commit(
    hub, policy, tiny_classifier_folder, tmp_path
):
    first = publish_folder(
        tiny_classifier_folder, "acme/tiny-pruned", token=TOKEN, job_id="job-42", policy=policy
    )
    commits = len(hub.repos["acme/tiny-pruned"].commits)
    again = publish_folder(
        tiny_classifier_folder, "acme/tiny-pruned", token=TOKEN, job_id="job-42", policy=policy
    )
    assert again.skipped and again.commit_sha == first.commit_sha
    assert len(hub.repos["acme/tiny-pruned"].commits) == commits
    # a changed file is a new commit, and only that file travels
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(tiny_classifier_folder, changed)
    (changed / "README.md").write_text("---\nlicense: mit\n---\n# changed\n")
    hub.requests.clear()
    third = publish_folder(changed, "acme/tiny-pruned", token=TOKEN, job_id="job-43", policy=policy)
    assert not third.skipped and third.commit_sha != first.commit_sha
    assert (
        hub.repos["acme/tiny-pruned"]
        .resolve("main")
        .files["README.md"]
        .startswith(b"---\nlicense: mit")
    )


def test_publish_as_a_pull_request(hub, policy, tiny_classifier_folder):
    hub.add_repo("acme/target", {"README.md": b"# target\n"})
    result = publish_folder(
        tiny_classifier_folder,
        "acme/target",
        token=TOKEN,
        create_pr=True,
        job_id="j1",
        policy=policy,
    )
    repo = hub.repos["acme/target"]
    assert result.pr_url == f"{hub.url}/acme/target/discussions/1" and not result.skipped
    assert repo.refs["refs/pr/1"] == result.commit_sha and repo.resolve("main").files == {
        ".gitattributes": repo.commits[0].files[".gitattributes"],
        "README.md": b"# target\n",
    }


def test_publish_without_rights_is_unauthorized_and_not_retried(
    hub, policy, tiny_classifier_folder
):
    with pytest.raises(HubAccessError) as err:
        publish_folder(tiny_classifier_folder, "acme/theirs", token=OTHER_TOKEN, policy=policy)
    assert err.value.code == "unauthorized" and not err.value.transient
    assert hub.paths().count("/api/repos/create") == 1 and not [
        p for p in hub.paths() if "commit" in p
    ]


def test_publish_survives_a_5xx(hub, policy, tiny_classifier_folder):
    hub.fail_next(1)
    result = publish_folder(tiny_classifier_folder, "acme/tiny-pruned", token=TOKEN, policy=policy)
    assert result.commit_sha == hub.repos["acme/tiny-pruned"].refs["main"]


@pytest.fixture
def round_trip(hub, policy, tiny_classifier_folder, labelled_csv, tmp_path, caplog):
    """Prune a model pulled from the server and publish the result back, logging at DEBUG."""
    hub.add_repo("acme/tiny", tiny_classifier_folder)
    spec = JobSpec.model_validate(
        {
            "model": {"id": "acme/tiny"},
            "dataset": {"path": str(labelled_csv)},
            "prune": {"heads": 0.5, "ffn": 0.3},
            "evaluation": {"latency": False},
            "publish": {"repo_id": "acme/tiny-pruned"},
        }
    )
    caplog.set_level(logging.DEBUG)
    stages = []
    result = run(
        spec,
        tmp_path / "work",
        token=TOKEN,
        job_id="job-7",
        hub_policy=policy,
        on_progress=lambda stage, fraction, message: stages.append((stage, fraction, message)),
    )
    return result, stages


def test_round_trip_prune_publish_and_load_back(round_trip, hub, tiny_classifier_folder):
    result, stages = round_trip
    repo = hub.repos["acme/tiny-pruned"]
    assert result.published == {
        "repo_url": f"{hub.url}/acme/tiny-pruned",
        "commit_sha": repo.refs["main"],
        "commit_url": f"{hub.url}/acme/tiny-pruned/commit/{repo.refs['main']}",
        "pr_url": None,
    }
    assert [s for s in stages if s[0] == "publishing"][0][1] == 0.0
    assert [s for s in stages if s[0] == "publishing"][-1][1] == 1.0
    assert result.report["base_model"]["commit"] == hub.repos["acme/tiny"].refs["main"]
    assert hub.repos["acme/tiny"].refs["main"] in (result.folder / "README.md").read_text()
    assert repo.private and "job-7" in repo.resolve("main").message

    remote = transformers.AutoModelForSequenceClassification.from_pretrained(
        "acme/tiny-pruned", trust_remote_code=True, token=TOKEN
    ).eval()
    local = transformers.AutoModelForSequenceClassification.from_pretrained(
        result.folder, trust_remote_code=True
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained("acme/tiny-pruned", token=TOKEN)
    batch = tokenizer(
        ["a great movie", "an awful movie number 3"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.equal(remote(**batch).logits, local(**batch).logits)
    assert sum(p.numel() for p in remote.parameters()) < sum(
        p.numel()
        for p in transformers.AutoModelForSequenceClassification.from_pretrained(
            tiny_classifier_folder
        ).parameters()
    )


def test_the_token_appears_in_no_artifact_report_card_or_log(round_trip, hub, caplog, tmp_path):
    result, stages = round_trip
    assert any(f"Bearer {TOKEN}" == h for h in hub.auth_headers)  # it was used...
    for path in (tmp_path / "work").rglob(
        "*"
    ):  # ...but written nowhere: artifacts, report, card, checkpoints
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for content in hub.repos["acme/tiny-pruned"].resolve("main").files.values():
        assert TOKEN.encode() not in content
    assert TOKEN not in json.dumps(result.report) and TOKEN not in json.dumps(result.published)
    assert TOKEN not in repr(stages)
    records = caplog.get_records("setup")  # the run happened in the fixture
    assert any(r.name.startswith("huggingface_hub") or r.name.startswith("httpx") for r in records)
    assert any(r.levelno == logging.DEBUG for r in records)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in records:
        assert TOKEN not in formatter.format(record) and TOKEN not in repr(record.__dict__)


def test_publishing_without_a_token_fails_before_any_work(
    hub, tiny_classifier_folder, labelled_csv, tmp_path
):
    spec = JobSpec.model_validate(
        {
            "model": {"id": tiny_classifier_folder},
            "dataset": {"path": str(labelled_csv)},
            "prune": {"heads": 0.5},
            "publish": {"repo_id": "acme/x"},
        }
    )
    with pytest.raises(HubAccessError) as err:
        run(spec, tmp_path / "work")
    assert err.value.code == "unauthorized" and not hub.requests


def test_service_validation_accepts_a_hub_id_with_publish(hub):
    spec = JobSpec.model_validate(
        {
            "model": {"id": "acme/tiny"},
            "dataset": {"upload_id": "u1"},
            "prune": {"heads": 0.5},
            "publish": {"repo_id": "acme/tiny-pruned"},
        },
        context={"local_files": False},
    )
    assert spec.publish.private


def test_the_retry_rules_and_the_policy_load_no_model_stack():
    """slimformer.data asks is_transient of dataset errors: the hub package's __init__ runs first
    and must not drag in torch or transformers, while the download names still resolve from it
    (model loading is not Hub code: it lives in slimformer.loading alone)."""
    code = (
        "import sys; import slimformer.hub.retries, slimformer.hub.policy; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "from slimformer.hub import download_model; "
        "import slimformer.hub, slimformer.hub.download; "
        "assert not hasattr(slimformer.hub, 'load_model'); "
        "assert download_model is slimformer.hub.download.download_model; "
        "print(heavy); sys.exit(bool(heavy))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
