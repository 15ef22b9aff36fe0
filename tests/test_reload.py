"""Saved folders reload in a fresh process with transformers alone, and compute what the pruned
model computed."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers

from slimformer.artifacts import save_model_folder
from slimformer.importance import gated, score_importance
from slimformer.modeling.modeling_slimformer import GLOBAL_ACCESS_FLAG
from slimformer.pruning import PruningTarget, plan_pruning, prune_model
from testkit.tiny_models import (
    CONFIGS,
    DECODERS,
    HEADS,
    llama_style_tokenizer,
    tiny_batch,
    tiny_model,
)

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
SMOLLM2 = CACHE / "slimformer-fixtures" / "smollm2-135m"

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


def _load_in_a_fresh_process(code: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """Run as a user would: transformers' warnings shown (the tests otherwise silence them)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=os.environ | {"TRANSFORMERS_VERBOSITY": "warning"},
    )


STOCK_LOAD = "import sys, transformers\ntransformers.{auto}.from_pretrained(sys.argv[1])\n"


def _per_layer_folder(folder, family: str, head: str, target: PruningTarget, tokenizer=None):
    model = tiny_model(family, head)
    scores = score_importance(model, [tiny_batch(family, head=head)])
    prune_model(model, plan_pruning(model, scores, target), layout="per_layer")
    save_model_folder(model, tokenizer, folder)
    assert (folder / "modeling_slimformer.py").is_file()
    return json.loads((folder / "config.json").read_text())


def test_per_layer_folder_without_trust_remote_code_fails_loudly(tmp_path):
    """A stock model class builds every layer at the original sizes; transformers refuses the
    pruned weights (never a model with re-initialised layers), and the error names the shapes."""
    config = _per_layer_folder(tmp_path / "m", "bert", "classification", PruningTarget(heads=0.5))
    assert config[GLOBAL_ACCESS_FLAG] is True  # the config reads in stock transformers
    auto = "AutoModelForSequenceClassification"
    run = _load_in_a_fresh_process(STOCK_LOAD.format(auto=auto), str(tmp_path / "m"), cwd=tmp_path)
    assert run.returncode != 0
    assert "RuntimeError" in run.stderr and "ignore_mismatched_sizes" in run.stderr
    assert re.search(r"attention\.self\.query\.weight\s*\|\s*MISMATCH", run.stderr), run.stderr


def test_a_folder_a_stock_class_would_fit_keeps_the_config_refused(tmp_path):
    """Only whole MLPs removed: a stock class would load every remaining weight and re-initialise
    the removed MLPs, so the config stays unreadable without the modelling code."""
    target = PruningTarget(whole_mlps=1)
    config = _per_layer_folder(tmp_path / "m", "llama", "causal-lm", target)
    assert GLOBAL_ACCESS_FLAG not in config
    auto = "AutoModelForCausalLM"
    run = _load_in_a_fresh_process(STOCK_LOAD.format(auto=auto), str(tmp_path / "m"), cwd=tmp_path)
    assert run.returncode != 0
    assert "AmbiguousGlobalPerLayerAttributeError" in run.stderr, run.stderr[-3000:]
    assert "per-layer attribute" in run.stderr


def _user_tokenizer():
    """SmolLM2's tokenizer where the fixture exists, else a Llama-style one built in code."""
    if SMOLLM2.is_dir():
        return transformers.AutoTokenizer.from_pretrained(SMOLLM2)
    return llama_style_tokenizer()


TOKENIZER_CHECK = textwrap.dedent(
    """
    import json, sys, transformers
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    remote = sorted(m for m in sys.modules if m.startswith("transformers_modules"))
    ids = [tokenizer(t)["input_ids"] for t in texts]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    try:
        model.config.num_attention_heads
        strict = False
    except transformers.integrations.heterogeneity.AmbiguousGlobalPerLayerAttributeError:
        strict = True
    print(json.dumps({
        "ids": ids, "eos": tokenizer.eos_token, "remote_code_for_the_tokenizer": remote,
        "model": type(model).__name__, "strict_config": strict,
        "slimformer_imported": any(m.startswith("slimformer") for m in sys.modules),
    }))
    """
)


def test_the_tokenizer_of_a_per_layer_lm_loads_without_remote_code(tmp_path):
    """The first line a user types: ``AutoTokenizer.from_pretrained(folder)``, stock transformers,
    no remote code, in a fresh process; the model still needs (and loads with) the bundled code,
    whose config keeps transformers' strict per-layer access."""
    tokenizer = _user_tokenizer()
    target = PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1)
    config = _per_layer_folder(tmp_path / "m", "llama", "causal-lm", target, tokenizer)
    assert config[GLOBAL_ACCESS_FLAG] is True and config["per_layer_config"]
    texts = ["Hello world, this is a pruned model.", "  two  spaces\nand a line"]
    run = _load_in_a_fresh_process(
        TOKENIZER_CHECK, str(tmp_path / "m"), json.dumps(texts), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ids"] == [tokenizer(t)["input_ids"] for t in texts]
    assert result["eos"] == tokenizer.eos_token
    assert result["remote_code_for_the_tokenizer"] == []
    assert result["model"] == "SlimformerLlamaForCausalLM" and result["strict_config"] is True
    assert result["slimformer_imported"] is False


def test_generation_works_after_per_layer_pruning(tmp_path):
    model = tiny_model("qwen2", "causal-lm")
    batch = tiny_batch("qwen2", head="causal-lm")
    scores = score_importance(model, [batch])
    prune_model(model, plan_pruning(model, scores, PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1)))
    save_model_folder(model, None, tmp_path / "m")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", trust_remote_code=True
    ).eval()
    ids = batch["input_ids"][:1, :5]
    a = model.generate(ids, max_new_tokens=6, do_sample=False)
    b = reloaded.generate(ids, max_new_tokens=6, do_sample=False)
    assert a.shape == (1, 11) and torch.equal(a, b)
