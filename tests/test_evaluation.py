import subprocess
import sys

import pytest
import torch
from tiny_models import CONFIGS, DECODERS, tiny_batch, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from slimformer.evaluation import count_macs, count_parameters, measure_latency, task_metric
from slimformer.importance import score_importance
from slimformer.pruning import PruningTarget, plan_pruning, prune_model

CASES = [(f, "classification") for f in CONFIGS] + [(f, "base") for f in CONFIGS] + [(f, "causal-lm") for f in DECODERS]


def _measured_macs(model, seq_len):
    model.set_attn_implementation("eager")  # the flop counter does not see the CPU SDPA kernel
    ids = torch.randint(3, 100, (1, seq_len))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize(("family", "head"), CASES)
@pytest.mark.parametrize("pruned", [False, True])
def test_analytic_macs_match_the_flop_counter_within_5_percent(family, head, pruned):
    model = tiny_model(family, head)
    if pruned:
        batch = tiny_batch(family, head=head, labels=head != "base")
        scores = score_importance(model, [batch])
        prune_model(model, plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.4, whole_mlps=1)))
    measured = _measured_macs(model, 48)
    assert count_macs(model, 48) == pytest.approx(measured, rel=0.05)


def test_parameters_count_tied_embeddings_once():
    model = tiny_model("gpt2", "causal-lm")
    assert count_parameters(model) == sum(p.numel() for p in set(model.parameters()))


def test_task_metric_accuracy_and_agreement():
    model = tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(3)]
    name, value = task_metric(model, batches)
    assert name == "accuracy" and 0 <= value <= 1
    from slimformer.evaluation import predict

    reference = predict(model, batches)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    assert task_metric(model, unlabeled, reference) == ("agreement", 1.0)


def test_latency_reports_percentiles_and_throughput():
    lat = measure_latency(tiny_model("bert"), batch_size=4, seq_len=16, runs=5, warmup=1)
    assert 0 < lat.p50_ms <= lat.p95_ms and lat.throughput > 0 and lat.runs == 5


def test_library_never_imports_web_or_queue_frameworks():
    code = (
        "import sys, pkgutil, importlib, slimformer\n"
        "for m in pkgutil.walk_packages(slimformer.__path__, 'slimformer.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('fastapi', 'celery', 'sqlalchemy', 'starlette') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
