"""What a new user hits first: the local commands run as a user runs them (a subprocess of
``python -m slimformer.cli``, environment variables for the Hub), checked for what a user notices.

Covers publishing with huggingface_hub's own token, where the base model came from, slimformer's own
per_layer outputs as inputs, plain-language errors, a made-up head, the card and folder as a person
reads them, progress lines off a terminal, and the README's example commands.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
import yaml
from huggingface_hub import ModelCard

from slimformer.artifacts import BUNDLED_MODELING_FILE, KNOWN_MODELING_DIGESTS, file_sha256
from slimformer.errors import RemoteCode
from slimformer.loading import load_model
from slimformer.spec import UPLOAD_FORMATS
from testkit.tiny_models import save_tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^\[(\d+h)?(\d+m)?\d+s\] (\w+)\s+(\d+)%  ETA (\S+)  ")


# -- running the command line as a user does -------------------------------------------------------
def _env(tmp_path: Path, hub=None, **extra: str) -> dict[str, str]:
    """The user's environment: no token unless a test gives one, a Hub only with ``hub``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "SLIMFORMER_PROGRESS_SECONDS")
    }
    env |= {
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_TOKEN_PATH": str(tmp_path / "hf-home" / "no-token"),
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "PYTHONPATH": str(ROOT),
    }
    if hub is not None:
        env.pop("HF_HUB_OFFLINE", None)
        env |= {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1"}
    return env | extra


def _cli(
    *args: str | Path,
    env: dict[str, str],
    cwd: Path | None = None,
    umask: int | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [sys.executable, "-m", "slimformer.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


def _ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run


def _one_error_line(run: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with exit 2 and one ``error: ...`` line naming every fragment."""
    assert run.returncode == 2, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _every_file(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# -- tiny inputs: a classifier, a causal LM with a real (byte-level BPE) tokenizer, data -----------
def _bpe_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(
        [f"{w} movie number {i}" for i in range(30) for w in ("great", "awful")], trainer
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def save_tiny_causal_lm(folder: Path) -> Path:
    """A tiny random Llama causal LM (like SmolLM2: grouped-query attention; four layers, so some
    are pruned between the protected first and last) with its own tokenizer."""
    import torch

    tokenizer = _bpe_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=4,
        intermediate_size=37,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_encoder(folder: Path, tokenizer_path: str) -> Path:
    """A tiny random BERT without a head (an embedding model), with MiniLM's tokenizer."""
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(folder)
    return folder


def save_six_layer_classifier(folder: Path, tokenizer_path: str) -> Path:
    """Like ../shared/models/minilm-l6-sst2 (six layers, labels negative/positive), tiny."""
    return Path(save_tiny_classifier(folder, tokenizer_path, num_layers=6))


def write_sst2_like(path: Path, rows: int = 40) -> Path:
    """``sentence<TAB>label`` with labels 1 (positive) and 0, like ../shared/data/sst2/*.tsv."""
    lines = ["sentence\tlabel"] + [
        f"{w} movie number {i}\t{label}"
        for i in range(rows // 2)
        for w, label in (("great", 1), ("awful", 0))
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def causal_lm_folder(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("models") / "smollm2-tiny")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    from testkit.tiny_models import write_reviews_csv

    return write_reviews_csv(tmp_path_factory.mktemp("data") / "reviews.csv")


@pytest.fixture(scope="module")
def pruned(
    tmp_path_factory, tiny_classifier_folder, reviews
) -> tuple[Path, subprocess.CompletedProcess]:
    """``slimformer prune`` of the tiny classifier with the defaults (per_layer), umask 022,
    stderr a file (progress lines every time they change)."""
    tmp = tmp_path_factory.mktemp("pruned")
    out = tmp / "runs" / "tiny-pruned"
    run = _ok(
        _cli(
            "prune",
            tiny_classifier_folder,
            "--data",
            reviews,
            "--heads",
            "0.5",
            "--ffn",
            "0.3",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp, SLIMFORMER_PROGRESS_SECONDS="0"),
            umask=0o022,
        )
    )
    return out, run


@pytest.fixture(scope="module")
def pruned_causal_lm(
    tmp_path_factory, causal_lm_folder, reviews
) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's SmolLM2 mistake, minus the task: a causal LM pruned with a label column."""
    tmp = tmp_path_factory.mktemp("pruned-lm")
    out = tmp / "lm-pruned"
    run = _ok(
        _cli(
            "prune",
            causal_lm_folder,
            "--data",
            reviews,
            "--label-column",
            "label",
            "--heads",
            "0.25",
            "--ffn",
            "0.3",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp),
        )
    )
    return out, run


# -- 1. the Hub token: huggingface_hub's own resolution, printed nowhere ---------------------------
def _publish_spec(tmp_path: Path, model: str | Path, data: Path, repo: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "model": {"id": str(model)},
                "dataset": {"path": str(data)},
                "method": "prune",
                "prune": {"heads": 0.5},
                "evaluation": {"latency": False},
                "publish": {"repo_id": repo},
            }
        )
    )
    return spec


def test_compress_publishes_with_hf_token_and_prints_it_nowhere(
    hub, tmp_path, tiny_classifier_folder, reviews
):
    from testkit.hub_server import ALICE_TOKEN

    spec = _publish_spec(tmp_path, tiny_classifier_folder, reviews, "acme/tiny-pruned")
    out = tmp_path / "out"
    run = _ok(_cli("compress", spec, "--out", out, env=_env(tmp_path, hub, HF_TOKEN=ALICE_TOKEN)))
    repo = hub.repos["acme/tiny-pruned"]
    assert repo.private and f"Bearer {ALICE_TOKEN}" in hub.auth_headers
    assert (
        f"published to acme/tiny-pruned: {hub.url}/acme/tiny-pruned/commit/{repo.refs['main']}"
        in run.stdout
    )
    published = repo.resolve("main").files
    assert published["compression_report.json"] == (out / "compression_report.json").read_bytes()
    assert ALICE_TOKEN not in run.stdout + run.stderr
    for name, content in {**_every_file(out), **published}.items():
        assert ALICE_TOKEN.encode() not in content, name


def test_a_private_model_downloads_with_the_saved_login(
    hub, tmp_path, tiny_classifier_folder, reviews
):
    """``hf auth login`` saves the token in a file (``HF_TOKEN_PATH``): no HF_TOKEN needed."""
    from testkit.hub_server import ALICE_TOKEN

    repo = hub.add_repo("alice/secret-classifier", tiny_classifier_folder, private=True)
    token_file = tmp_path / "login" / "token"
    token_file.parent.mkdir()
    token_file.write_text(ALICE_TOKEN)
    out = tmp_path / "out"
    run = _ok(
        _cli(
            "prune",
            "alice/secret-classifier",
            "--data",
            reviews,
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp_path, hub, HF_TOKEN_PATH=str(token_file)),
        )
    )
    report = json.loads((out / "compression_report.json").read_text())
    assert (
        report["base_model"]["commit"] == repo.refs["main"]
        and report["base_model"]["source"] == "hub"
    )
    assert ModelCard.load(out / "README.md").data.base_model == "alice/secret-classifier"
    assert ALICE_TOKEN not in run.stdout + run.stderr + json.dumps(report)


def test_publishing_without_a_token_says_how_to_give_one(
    hub, tmp_path, tiny_classifier_folder, reviews
):
    spec = _publish_spec(tmp_path, tiny_classifier_folder, reviews, "acme/tiny-pruned")
    run = _cli("compress", spec, "--out", tmp_path / "out", env=_env(tmp_path, hub))
    _one_error_line(
        run, "publishing to acme/tiny-pruned needs a Hub token", "HF_TOKEN", "hf auth login"
    )
    assert not hub.requests and not (tmp_path / "out").exists()


def test_a_token_the_hub_refuses_is_not_printed(hub, tmp_path, tiny_classifier_folder, reviews):
    wrong = "hf_" + "0123456789abcdef" * 2
    hub.add_repo("alice/secret-classifier", tiny_classifier_folder, private=True)
    run = _cli(
        "prune",
        "alice/secret-classifier",
        "--data",
        reviews,
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path, hub, HF_TOKEN=wrong),
    )
    _one_error_line(run, "alice/secret-classifier")
    assert f"Bearer {wrong}" in hub.auth_headers and wrong not in run.stdout + run.stderr


# -- 3. where the model came from: never a local path, always said how it is known -----------------
def _public_text(out: Path) -> str:
    return (out / "README.md").read_text() + (out / "compression_report.json").read_text()


def test_a_hugging_face_cache_folder_names_its_repo_and_commit(
    hub, tmp_path, tiny_classifier_folder, reviews
):
    from huggingface_hub import snapshot_download

    repo = hub.add_repo("acme/tiny-classifier", tiny_classifier_folder)
    snapshot = Path(snapshot_download("acme/tiny-classifier", cache_dir=tmp_path / "user-cache"))
    assert snapshot.parent.name == "snapshots"
    out = tmp_path / "out"
    _ok(
        _cli(
            "prune",
            snapshot,
            "--data",
            reviews,
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp_path),
        )
    )
    card = ModelCard.load(out / "README.md")
    commit = repo.refs["main"]
    assert (
        card.data.base_model == "acme/tiny-classifier" and card.data.base_model_revision == commit
    )
    assert "[`acme/tiny-classifier`](https://huggingface.co/acme/tiny-classifier)" in card.text
    assert "Hugging Face cache" in card.text
    base = json.loads((out / "compression_report.json").read_text())["base_model"]
    assert (base["id"], base["hub_id"], base["source"], base["commit"]) == (
        "acme/tiny-classifier",
        "acme/tiny-classifier",
        "hub_cache",
        commit,
    )
    assert str(tmp_path) not in _public_text(out)


def test_a_local_folder_of_unknown_origin_gets_no_link_and_no_path(
    tmp_path, tiny_classifier_folder, reviews
):
    """The issue's ``base_model: models/smollm2-135m-instruct``, linked to a page that does not
    exist."""
    shutil.copytree(tiny_classifier_folder, tmp_path / "models" / "my-classifier")
    shutil.copy(reviews, tmp_path / "reviews.csv")
    out = tmp_path / "runs" / "pruned"
    _ok(
        _cli(
            "prune",
            "models/my-classifier",
            "--data",
            "reviews.csv",
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            "runs/pruned",
            cwd=tmp_path,
            env=_env(tmp_path),
        )
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and "huggingface.co" not in card.text
    assert "whose Hub origin is unknown" in card.text and "--base-model" in card.text
    assert "models/my-classifier" not in _public_text(out) and str(tmp_path) not in _public_text(
        out
    )
    report = json.loads((out / "compression_report.json").read_text())
    assert (
        report["base_model"]["id"] == "my-classifier" and report["base_model"]["source"] == "local"
    )
    assert (
        report["spec"]["model"]["id"] == "my-classifier"
        and report["spec"]["dataset"]["path"] == "reviews.csv"
    )


@pytest.mark.parametrize("how", ["option", "config"])
def test_base_model_from_the_option_or_the_config(tmp_path, tiny_classifier_folder, reviews, how):
    folder = tmp_path / "models" / "my-classifier"
    shutil.copytree(tiny_classifier_folder, folder)
    extra = []
    if how == "option":
        extra = ["--base-model", "acme/classifier-base"]
    else:  # what transformers 4 wrote when the weights came from the Hub
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(
            json.dumps(config | {"_name_or_path": "acme/classifier-base"})
        )
    out = tmp_path / "out"
    _ok(
        _cli(
            "prune",
            folder,
            "--data",
            reviews,
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            out,
            *extra,
            env=_env(tmp_path),
        )
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "acme/classifier-base"
    assert getattr(card.data, "base_model_revision", None) is None
    assert ("as given with `--base-model`" if how == "option" else "`_name_or_path`") in card.text
    assert str(tmp_path) not in _public_text(out)


def test_base_model_must_be_a_hub_id(tmp_path, tiny_classifier_folder, reviews):
    run = _cli(
        "prune",
        tiny_classifier_folder,
        "--data",
        reviews,
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        "--base-model",
        "../models/mine",
        env=_env(tmp_path),
    )
    _one_error_line(run, "model.base_model", "is not a Hub model id")


# -- 4. slimformer's own per_layer outputs are inputs again ----------------------------------------
def test_the_installed_modeling_file_is_a_known_digest():
    """A change to modeling_slimformer.py must add its digest to KNOWN_MODELING_DIGESTS."""
    assert file_sha256(BUNDLED_MODELING_FILE) in KNOWN_MODELING_DIGESTS


def test_a_per_layer_result_is_pruned_again_and_distilled_from(pruned, tmp_path, reviews):
    first, _ = pruned
    assert json.loads((first / "config.json").read_text())["auto_map"]
    again = tmp_path / "again"
    _ok(
        _cli(
            "prune",
            first,
            "--data",
            reviews,
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            again,
            env=_env(tmp_path),
        )
    )
    report = json.loads((again / "compression_report.json").read_text())
    assert report["base_model"]["own_code"] is True
    assert report["pruning"]["original_heads_per_layer"] == [2, 2]
    assert sum(report["pruning"]["heads_per_layer"]) == 2
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        again, trust_remote_code=True
    )
    assert (
        sum(p.numel() for p in model.parameters())
        == report["evaluation"]["compressed"]["parameters"]
    )
    student = tmp_path / "student"
    _ok(
        _cli(
            "distill",
            first,
            "--data",
            reviews,
            "--student-layers",
            "1",
            "--max-steps",
            "3",
            "--no-latency",
            "--out",
            student,
            env=_env(tmp_path),
        )
    )
    assert json.loads((student / "config.json").read_text())["num_hidden_layers"] == 1


def test_a_per_layer_result_on_the_hub_is_an_input_and_a_changed_copy_is_refused(
    hub, pruned, tmp_path, reviews
):
    first, _ = pruned
    files = {name: content for name, content in _every_file(first).items()}
    hub.add_repo("acme/tiny-pruned", files)
    changed = files["modeling_slimformer.py"] + b"\nimport os  # not what slimformer shipped\n"
    hub.add_repo("acme/tiny-tampered", files | {"modeling_slimformer.py": changed})
    out = tmp_path / "out"
    _ok(
        _cli(
            "prune",
            "acme/tiny-pruned",
            "--data",
            reviews,
            "--ffn",
            "0.3",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp_path, hub),
        )
    )
    report = json.loads((out / "compression_report.json").read_text())
    assert report["base_model"]["own_code"] and report["base_model"]["id"] == "acme/tiny-pruned"
    run = _cli(
        "prune",
        "acme/tiny-tampered",
        "--data",
        reviews,
        "--ffn",
        "0.3",
        "--out",
        tmp_path / "o2",
        env=_env(tmp_path, hub),
    )
    _one_error_line(
        run, "acme/tiny-tampered needs its own modelling code", "not one slimformer shipped"
    )
    assert not [
        p
        for p in hub.paths()
        if p.startswith("/acme/tiny-tampered/resolve/") and "safetensors" in p
    ]
    local = tmp_path / "tampered"
    shutil.copytree(first, local)
    (local / "modeling_slimformer.py").write_bytes(changed)
    with pytest.raises(RemoteCode, match="needs its own modelling code"):
        load_model(str(local))


# -- 5. plain-language errors for the first things people try --------------------------------------
def test_a_plain_text_file_without_the_txt_suffix_says_what_to_do(tmp_path, tiny_classifier_folder):
    (tmp_path / "notes.md").write_text("first line\nsecond line\n")
    run = _cli(
        "prune",
        tiny_classifier_folder,
        "--data",
        tmp_path / "notes.md",
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path),
    )
    _one_error_line(run, "notes.md looks like plain text", "name it .txt", "`text` column")
    assert not (tmp_path / "o").exists()


def test_a_spreadsheet_says_to_export_it_as_csv(tmp_path, tiny_classifier_folder):
    (tmp_path / "reviews.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    run = _cli(
        "prune",
        tiny_classifier_folder,
        "--data",
        tmp_path / "reviews.xlsx",
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path),
    )
    _one_error_line(
        run,
        "reviews.xlsx: unsupported file type '.xlsx' (a spreadsheet)",
        "export it as CSV",
        ", ".join(sorted(UPLOAD_FORMATS)),
    )
    assert not (tmp_path / "o").exists()


def test_a_model_folder_without_a_tokenizer_says_to_save_one(
    tmp_path, tiny_classifier_folder, reviews
):
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_classifier_folder) / name, folder / name)
    run = _cli(
        "prune",
        folder,
        "--data",
        reviews,
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path),
    )
    _one_error_line(run, "has no tokenizer", "save_pretrained")


def test_labels_that_are_not_the_models_say_what_to_write(tmp_path, tiny_classifier_folder):
    data = tmp_path / "moods.csv"
    data.write_text(
        "text,label\n"
        + "".join(f"a {w} film {i},{w}\n" for i in range(10) for w in ("good", "bad"))
    )
    run = _cli(
        "prune",
        tiny_classifier_folder,
        "--data",
        data,
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path),
    )
    line = _one_error_line(
        run,
        "in column 'label' do not match the model's 2 labels (negative=0, positive=1)",
        "write the labels as the model's label names or class ids 0 to 1",
    )
    assert re.search(r"labels (bad|good)", line)


# -- 6. no silent nonsense: a made-up head, an unused label column ---------------------------------
def test_a_causal_lm_asked_to_classify_is_refused(tmp_path, causal_lm_folder):
    """The issue's ``prune SmolLM2 --data sst2/train.tsv --label-column label --task ...``."""
    data = write_sst2_like(tmp_path / "train.tsv")
    run = _cli(
        "prune",
        causal_lm_folder,
        "--data",
        data,
        "--label-column",
        "label",
        "--task",
        "text-classification",
        "--heads",
        "0.5",
        "--out",
        tmp_path / "o",
        env=_env(tmp_path),
    )
    _one_error_line(run, "has no text-classification head", "LlamaForCausalLM", "--allow-new-head")
    assert not (tmp_path / "o").exists()


def test_allow_new_head_goes_ahead_and_the_card_says_the_head_is_untrained(
    tmp_path, causal_lm_folder
):
    out = tmp_path / "out"
    data = write_sst2_like(tmp_path / "train.tsv")
    run = _ok(
        _cli(
            "prune",
            causal_lm_folder,
            "--data",
            data,
            "--label-column",
            "label",
            "--task",
            "text-classification",
            "--heads",
            "0.5",
            "--allow-new-head",
            "--no-latency",
            "--out",
            out,
            env=_env(tmp_path),
        )
    )
    assert "warning: the text-classification head (score.weight) is new and untrained" in run.stderr
    report = json.loads((out / "compression_report.json").read_text())
    assert report["base_model"]["new_head"] == ["score.weight"]
    card = (out / "README.md").read_text()
    assert "the text-classification head is new and untrained" in card and "`score.weight`" in card
    assert "never trained" in card


def test_a_label_column_for_a_causal_lm_is_said_to_be_unused(pruned_causal_lm):
    out, run = pruned_causal_lm
    assert "warning: the label column 'label' is not used: a causal LM" in run.stderr
    card = (out / "README.md").read_text()
    assert "the text column `sentence`" in card
    assert "The label column `label` was given but not used" in card
    assert "task loss on labelled data" not in card
    report = json.loads((out / "compression_report.json").read_text())
    assert (
        report["data"]["unused_label_column"] == "label" and report["data"]["label_column"] is None
    )


# -- 7. the card and the folder as a person reads them ---------------------------------------------
def _table_rows(card: str) -> dict[str, list[str]]:
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4:
            rows[cells[0]] = cells[1:]
    return rows


def test_changes_read_as_points_factors_and_percentages(pruned, pruned_causal_lm):
    rows = _table_rows((pruned[0] / "README.md").read_text())
    assert re.fullmatch(r"[+-]\d+\.\d\d pt", rows["Accuracy"][2]), rows
    assert re.fullmatch(r"\d+\.\d\d%", rows["Accuracy"][0])
    assert re.fullmatch(r"-\d+\.\d%", rows["Parameters"][2]) and "," in rows["Parameters"][0]
    lm_rows = _table_rows((pruned_causal_lm[0] / "README.md").read_text())
    assert re.fullmatch(r"×[\d,]+(\.\d+)?", lm_rows["Perplexity"][2]), lm_rows
    assert not [v for v in lm_rows["Perplexity"][:2] if re.search(r"\d\.\d{4}", v)], lm_rows
    for out, _ in (pruned, pruned_causal_lm):
        assert not re.search(r"\+\d+\.\d{4}\b", (out / "README.md").read_text())
    summary = pruned[1].stdout
    assert re.search(r"accuracy .* [+-]\d+\.\d\d pt", summary) and re.search(
        r"parameters .* -\d+\.\d%", summary
    )


def test_the_output_folder_is_readable_as_the_umask_says(pruned):
    out, _ = pruned
    assert (out.stat().st_mode & 0o777) == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o644}, modes


def test_load_snippets_of_the_cards_run(pruned, pruned_causal_lm, tmp_path):
    """The card's own "how to load" code, run as written against the folder it describes."""
    for out, _ in (pruned, pruned_causal_lm):
        card = (out / "README.md").read_text()
        code = re.search(r"## How to load it\n\n```python\n(.*?)```", card, re.S)[1]
        assert "trust_remote_code=True" in code
        code = code.replace("path/to/this/folder", str(out))
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                code + "\nimport sys\nassert not [m for m in sys.modules "
                "if m.startswith('slimformer')]\n",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=_env(tmp_path) | {"PYTHONPATH": ""},
        )
        assert run.returncode == 0, (out, code, run.stderr[-3000:])
        assert run.stdout.strip()


def test_the_readmes_load_snippet_runs(pruned, tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Load the result", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    folder = re.search(r'from_pretrained\("([^"]+)"', code)[1]
    code = (
        code.replace(folder, str(pruned[0]))
        + "\nprint(type(model).__name__, type(tokenizer).__name__)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_env(tmp_path),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("SlimformerBertForSequenceClassification")


# -- 8. progress where no one watches a terminal ---------------------------------------------------
def test_progress_lines_when_stderr_is_not_a_terminal(pruned):
    _, run = pruned
    lines = [m for m in map(STAGE_LINE.match, run.stderr.splitlines()) if m]
    stages = list(dict.fromkeys(m[3] for m in lines))
    assert stages == ["downloading", "scoring", "pruning", "evaluating", "writing_card"], run.stderr
    percents = [int(m[4]) for m in lines]
    assert percents == sorted(percents) and percents[-1] >= 90
    assert "\x1b[" not in run.stderr and "\r" not in run.stderr


def test_plain_progress_is_paced_and_estimates_the_time_left():
    import io

    from slimformer.cli.progress import LineProgress

    now = [100.0]
    stream = io.StringIO()
    progress = LineProgress(
        ["downloading", "scoring", "evaluating"], interval=15, stream=stream, clock=lambda: now[0]
    )
    for second in range(0, 60):
        now[0] = 100.0 + second
        stage = "downloading" if second < 5 else "scoring" if second < 40 else "evaluating"
        progress.update(stage, (second % 20) / 20, f"step {second}")
    lines = stream.getvalue().splitlines()
    # quiet for the first 15 s (a short run prints only its result), then a line per stage change
    # and at most one every 15 s within a stage
    assert [line.split()[:2] for line in lines] == [
        ["[15s]", "scoring"],
        ["[30s]", "scoring"],
        ["[40s]", "evaluating"],
        ["[55s]", "evaluating"],
    ], lines
    assert re.search(r"ETA 15s  step 15$", lines[0]), lines[0]  # half done in 15 s: 15 s to go


def test_a_terminal_gets_the_live_bar(tmp_path, tiny_classifier_folder, reviews):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimformer.cli",
            "prune",
            tiny_classifier_folder,
            "--data",
            str(reviews),
            "--heads",
            "0.5",
            "--no-latency",
            "--out",
            str(tmp_path / "out"),
        ],
        stderr=follower,
        stdout=subprocess.PIPE,
        env=_env(tmp_path, TERM="xterm-256color", COLUMNS="120"),
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0, seen[-3000:]
    text = seen.decode(errors="replace")
    assert "━" in text and "%" in text and not STAGE_LINE.search(text.replace("\r", "\n")), text[
        -2000:
    ]


# -- the README's example commands, as written but for the model and data paths --------------------
def _readme_examples() -> list[list[str]]:
    """The runnable ``slimformer prune|distill|compress`` lines of the README's local section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Compress a model locally", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if (
                words[:1] == ["slimformer"]
                and words[1] in ("prune", "distill", "compress")
                and not any("[" in w or w.isupper() for w in words)
            ):
                commands.append(words)
    return commands


def test_the_readme_has_runnable_examples_for_the_local_commands():
    examples = _readme_examples()
    assert {words[1] for words in examples} >= {"prune", "compress"}, examples


def test_every_flag_of_the_readme_synopsis_exists():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Compress a model locally", 1)[1].split("\n## ", 1)[0]
    synopsis = re.search(r"```\n(slimformer prune MODEL.*?)```", section, re.S)[1]
    from slimformer.cli import build_parser

    parser = build_parser({})
    actions = parser._subparsers._group_actions[0].choices
    for block in re.split(r"\n(?=slimformer )", synopsis):
        command = block.split()[1]
        flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", block.split("#")[0]))
        known = {flag for action in actions[command]._actions for flag in action.option_strings}
        assert flags <= known, (command, flags - known)


def _substituted(
    words: list[str], model: str, data: dict[str, Path], tmp_path: Path, causal_lm: str = ""
) -> list[str]:
    """The example with its model, data and output paths made local to the test, nothing else: the
    benchmark encoder becomes ``model``, the SmolLM2 fixture's folder ``causal_lm``."""
    out = []
    for word in words:
        if "smollm2" in word and not word.startswith("runs/"):
            word = causal_lm
        elif word.startswith("../shared/models/"):
            word = model
        elif word.startswith("../shared/data/"):
            word = str(data[Path(word).name])
        elif word.startswith("runs/"):
            word = str(tmp_path / word)
        elif word.startswith("examples/") and word.endswith(".yaml"):
            spec = yaml.safe_load((ROOT / word).read_text())
            spec["model"]["id"] = model
            for key in ("path", "eval_path"):
                if spec["dataset"].get(key):
                    spec["dataset"][key] = str(data[Path(spec["dataset"][key]).name])
            word = str(tmp_path / Path(word).name)
            Path(word).write_text(yaml.safe_dump(spec))
        out.append(word)
    return out


def test_readme_examples_run_on_a_tiny_model(tmp_path, minilm_path):
    model = str(save_six_layer_classifier(tmp_path / "minilm-l6-sst2-tiny", minilm_path))
    causal_lm = str(save_tiny_causal_lm(tmp_path / "smollm2-tiny"))
    stories = "\n\n".join(f"The cat sat on mat {i}.\nIt was a good day." for i in range(40))
    for name in ("validation.txt", "test.txt"):
        (tmp_path / name).write_text(stories + "\n")
    data = {
        "train.tsv": write_sst2_like(tmp_path / "train.tsv", 60),
        "validation.tsv": write_sst2_like(tmp_path / "validation.tsv", 20),
        "validation.txt": tmp_path / "validation.txt",
        "test.txt": tmp_path / "test.txt",
    }
    for words in _readme_examples():
        command = _substituted(words, model, data, tmp_path, causal_lm)
        _ok(_cli(*command[1:], env=_env(tmp_path)))
        out = Path(command[command.index("--out") + 1])
        assert (out / "README.md").is_file() and (out / "compression_report.json").is_file()
