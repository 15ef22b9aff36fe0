"""Serving engines: what slimformer writes loads in llama.cpp (GGUF) and gives PyTorch's logits.

The engine tests are marked ``integration`` and skip, saying why, where the engine environment is
not built (``make engines``); CI builds them once and keeps them in the machine's cache.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from tiny_models import VOCAB, llama_style_tokenizer, tiny_model

from slimformer.artifacts import save_model_folder
from slimformer.engines import EngineMissing, engine_python, export_gguf, llama_cpp_scores
from slimformer.errors import ExportError
from slimformer.importance import score_importance
from slimformer.pruning import PruningTarget, drop_layers, plan_pruning, prune_model


def _llama_cpp():
    try:
        engine_python("llama-cpp")
    except EngineMissing as err:
        pytest.skip(str(err))


def _windows(n: int = 3, length: int = 24) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [[1, *torch.randint(4, VOCAB, (length - 1,), generator=gen).tolist()] for _ in range(n)]


def _pruned_folder(tmp_path, layout: str, depth: bool):
    model = tiny_model("llama", "causal-lm", num_hidden_layers=4, bos_token_id=1, eos_token_id=2)
    batches = [
        {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, 24)} for w in _windows()
    ]
    if depth:
        drop_layers(model, [2])
    scores = score_importance(model, batches, method="obs")
    ranking = "per_layer" if layout == "uniform" else "adaptive"
    plan = plan_pruning(
        model, scores, PruningTarget(heads=0.5, ffn=0.25, ranking=ranking), layout=layout
    )
    prune_model(model, plan, layout=layout)
    folder = tmp_path / f"{layout}-{depth}"
    save_model_folder(model, llama_style_tokenizer(), folder)
    return model.eval(), folder


def test_a_per_layer_folder_is_refused_before_any_engine_runs(tmp_path):
    _, folder = _pruned_folder(tmp_path, "per_layer", depth=False)
    with pytest.raises(ExportError, match="layout 'uniform'"):
        export_gguf(folder, tmp_path / "gguf")
    with pytest.raises(ExportError, match="unknown GGUF type"):
        export_gguf(folder, tmp_path / "gguf", types=("q3_x",))


@pytest.mark.integration
@pytest.mark.parametrize("depth", [False, True])
def test_uniform_and_depth_pruned_llamas_give_pytorchs_logits_in_llama_cpp(tmp_path, depth):
    _llama_cpp()
    model, folder = _pruned_folder(tmp_path, "uniform", depth)
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and config["num_hidden_layers"] == (3 if depth else 4)
    files = export_gguf(folder, tmp_path / "gguf", types=("f16", "q8_0"))
    assert [f["type"] for f in files] == ["F16", "Q8_0"]
    assert files[1]["size_bytes"] < files[0]["size_bytes"]
    windows = _windows()
    with torch.no_grad():
        reference = [model(input_ids=torch.tensor([w])).logits[0].numpy() for w in windows]
    scale = max(float(np.abs(r).max()) for r in reference)
    for entry, tolerance in zip(files, (0.01, 0.05), strict=True):
        got = llama_cpp_scores(tmp_path / "gguf" / entry["file"], windows, keep_logits=3)
        assert got["tokens"] == 3 * 23
        for logits, ref in zip(got["logits"], reference, strict=True):
            diff = float(np.abs(np.array(logits) - ref).max())
            # F16 weights: within 1% of the largest logit; Q8_0: within 5%
            assert diff <= tolerance * scale, (entry["type"], diff, scale)
            agreement = float((np.array(logits).argmax(-1) == ref.argmax(-1)).mean())
            assert agreement >= (0.95 if entry["type"] == "F16" else 0.85), agreement
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder)  # and stock transformers
    assert reloaded.config.num_hidden_layers == config["num_hidden_layers"]
