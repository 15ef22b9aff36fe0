"""Saved folders reload in a fresh process with transformers alone, and compute what the pruned
model computed."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from slimformer.artifacts import save_model_folder
from slimformer.importance import gated, score_importance
from slimformer.pruning import PruningTarget, plan_pruning, prune_model
from testkit.tiny_models import CONFIGS, DECODERS, HEADS, tiny_batch, tiny_model

pytestmark = pytest.mark.slow

CASES = (
    [(f, "classification", "per_layer") for f in CONFIGS]
    + [(f, "base", "per_layer") for f in CONFIGS]
    + [(f, "causal-lm", "per_layer") for f in DECODERS]
    + [(f, "classification", "uniform") for f in CONFIGS]
    + [(f, "causal-lm", "uniform") for f in ("llama", "qwen3", "gpt2")]
)

CHECK = textwrap.dedent(
    """
    import json, sys, torch, transformers
    results = {}
    for case in json.load(open(sys.argv[1])):
        cls = getattr(transformers, case["auto"])
        model = cls.from_pretrained(case["folder"], trust_remote_code=case["trust"]).eval()
        inputs = torch.load(case["folder"] + "/inputs.pt")
        with torch.no_grad():
            out = model(**inputs)[0]
        torch.save(out, case["folder"] + "/reloaded.pt")
        results[case["folder"]] = type(model).__name__
    results["slimformer_imported"] = any(m.startswith("slimformer") for m in sys.modules)
    print(json.dumps(results))
    """
)


def _real(out, mask):
    return out[mask.bool()] if out.dim() == 3 else out


def test_pruned_folders_reload_in_a_fresh_process(tmp_path):
    cases, expected = [], {}
    for family, head, layout in CASES:
        model = tiny_model(family, head)
        batch = tiny_batch(family, head=head, labels=head != "base")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        scores = score_importance(model, [batch])
        if layout == "per_layer":
            target = PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1)
        else:
            target = PruningTarget(heads=0.5 if family in ("llama", "qwen3") else 0.0, ffn=0.3)
        plan = plan_pruning(model, scores, target, layout=layout)
        with torch.no_grad(), gated(model, heads=plan.heads, neurons=plan.neurons, mlps=plan.mlps):
            gated_out = model(**inputs)[0]
        prune_model(model, plan, layout=layout)
        with torch.no_grad():
            pruned_out = model(**inputs)[0]
        folder = tmp_path / f"{family}-{head}-{layout}"
        save_model_folder(model, None, folder)
        torch.save(inputs, folder / "inputs.pt")
        cases.append({"folder": str(folder), "auto": HEADS[head], "trust": layout == "per_layer"})
        expected[str(folder)] = (pruned_out, gated_out, inputs["attention_mask"], layout, family)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(tmp_path / "cases.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results.pop("slimformer_imported") is False, (
        "the reloaded folders must not need slimformer"
    )
    for folder, (pruned_out, gated_out, mask, layout, _family) in expected.items():
        reloaded = torch.load(f"{folder}/reloaded.pt")
        assert (_real(reloaded, mask) - _real(pruned_out, mask)).abs().max() <= 1e-4, folder
        assert (_real(reloaded, mask) - _real(gated_out, mask)).abs().max() <= 1e-4, folder
        name = results[folder]
        assert name.startswith("Slimformer") == (layout == "per_layer"), (folder, name)


def test_per_layer_folder_without_trust_remote_code_fails_loudly(tmp_path):
    model = tiny_model("bert")
    scores = score_importance(model, [tiny_batch("bert")])
    prune_model(model, plan_pruning(model, scores, PruningTarget(heads=0.5)), layout="per_layer")
    save_model_folder(model, None, tmp_path / "m")
    assert (tmp_path / "m" / "modeling_slimformer.py").is_file()
    code = (
        "import transformers\n"
        "transformers.AutoModelForSequenceClassification.from_pretrained("
        f"{str(tmp_path / 'm')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert (
        "per-layer attribute" in run.stderr
    )  # transformers' own AmbiguousGlobalPerLayerAttributeError


def test_generation_works_after_per_layer_pruning(tmp_path):
    model = tiny_model("qwen2", "causal-lm")
    batch = tiny_batch("qwen2", head="causal-lm")
    scores = score_importance(model, [batch])
    prune_model(model, plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1)))
    save_model_folder(model, None, tmp_path / "m")
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", trust_remote_code=True
    ).eval()
    ids = batch["input_ids"][:1, :5]
    a = model.generate(ids, max_new_tokens=6, do_sample=False)
    b = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
    assert a.shape == (1, 11) and torch.equal(a, b)
