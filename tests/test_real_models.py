"""The library on real pretrained models: the packaged all-MiniLM-L6-v2 and (where ../shared exists)
the fine-tuned SST-2 MiniLM the benchmarks use."""

import json
import subprocess
import sys

import pytest
import torch

from slimformer.cli import main
from slimformer.data import load_text_file, make_batches
from slimformer.evaluation import task_metric
from slimformer.importance import gated, score_importance
from slimformer.loading import load_model
from slimformer.pruning import PruningTarget, plan_pruning, prune_model

pytestmark = pytest.mark.slow


def test_label_free_pruning_of_the_packaged_minilm_reloads(minilm_path, tmp_path, capsys):
    out = tmp_path / "minilm"
    code = main(
        [
            "prune",
            minilm_path,
            "--data",
            "examples/sentences.csv",
            "--heads",
            "0.3",
            "--ffn",
            "0.3",
            "--no-latency",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "compression_report.json").read_text())
    assert (
        report["base_model"]["task"] == "feature-extraction"
        and report["importance"]["loss"] == "label_free"
    )
    evaluation = report["evaluation"]
    assert evaluation["primary_metric"] == "cosine_to_original"
    assert evaluation["compressed"]["metrics"]["cosine_to_original"] > 0.8
    assert sum(report["pruning"]["heads_per_layer"]) == 72 - round(0.3 * 72)
    check = (
        "import sys, torch, transformers\n"
        f"m = transformers.AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        f"t = transformers.AutoTokenizer.from_pretrained({str(out)!r})\n"
        "x = t(['a quiet morning in the park'], return_tensors='pt')\n"
        "print(m(**x).last_hidden_state.shape[-1])\n"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("384"), run.stderr[-2000:]


def test_sst2_minilm_pruned_equals_gated_and_keeps_accuracy(shared_dir, tmp_path):
    loaded = load_model(str(shared_dir / "models" / "minilm-l6-sst2"))
    model, tokenizer = loaded.model, loaded.tokenizer
    train = load_text_file(shared_dir / "data" / "sst2" / "train.tsv").head(128)
    val = load_text_file(shared_dir / "data" / "sst2" / "validation.tsv").head(200)
    kwargs = dict(task=loaded.task, config=model.config, batch_size=32)
    scores = score_importance(model, make_batches(tokenizer, train, **kwargs))
    val_batches = make_batches(tokenizer, val, **kwargs)
    _, full = task_metric(model, val_batches)
    plan = plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.5))
    with gated(model, heads=plan.heads, neurons=plan.neurons):
        _, gated_accuracy = task_metric(model, val_batches)
        with torch.no_grad():
            gated_logits = model(
                **{k: v for k, v in val_batches[0].items() if k != "labels"}
            ).logits
    prune_model(model, plan)
    _, pruned_accuracy = task_metric(model, val_batches)
    with torch.no_grad():
        pruned_logits = model(**{k: v for k, v in val_batches[0].items() if k != "labels"}).logits
    assert (pruned_logits - gated_logits).abs().max() <= 1e-4
    assert pruned_accuracy == gated_accuracy
    assert pruned_accuracy >= full - 0.05  # 50% of heads and FFN neurons, no retraining
