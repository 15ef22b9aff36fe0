"""The real decoder (SmolLM2-135M, Llama family with grouped-query attention) pruned in each layout
that serving engines read, loaded by llama.cpp and by vLLM's CPU build, against PyTorch.

Layouts (pruned by activation importance on the test's own text): ``uniform`` (one of the 3 KV
groups and 20% of the FFN neurons in every layer), depth-pruned (3 of 30 layers dropped) and
``nemotron_nas`` (attention removed whole in 20% of the layers, 20% of the FFN neurons in chunks of
256). Tolerances: vLLM runs float32 like PyTorch, so every next-token log probability
agrees to 2e-3 and the perplexity to 0.01%; llama.cpp's F16 file gives PyTorch's perplexity within
1% and its Q8_0 file within 3%.

Skipped, saying why, where the fixture (``../shared/models/make-smollm2``) or an engine (``make
engines``) is not built.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from slimformer.engines import EngineMissing, engine_python, export_gguf, llama_cpp_scores

# kept_engines: vLLM's import and shutdown once for the session, not once per layout
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("kept_engines")]

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
SMOLLM2 = CACHE / "slimformer-fixtures" / "smollm2-135m"
TEXT = (
    "The tower is 324 metres tall, about the same height as an 81-storey building, and the "
    "tallest structure in Paris. Its base is square, measuring 125 metres on each side. During "
    "its construction, the Eiffel Tower surpassed the Washington Monument to become the tallest "
    "man-made structure in the world, a title it held for 41 years until the Chrysler Building in "
    "New York City was finished in 1930. It was the first structure to reach a height of 300 "
    "metres. Due to the addition of a broadcasting aerial at the top of the tower in 1957, it is "
    "now taller than the Chrysler Building by 5.2 metres. Excluding transmitters, the Eiffel "
    "Tower is the second tallest free-standing structure in France after the Millau Viaduct."
)
LAYOUTS = ("uniform", "depth", "nemotron_nas")


def _need(engine: str) -> None:
    try:
        engine_python(engine)
    except EngineMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def smollm2_windows():
    if not (SMOLLM2 / ".complete").is_file():
        pytest.skip(f"SmolLM2-135M is not built at {SMOLLM2} (../shared/models/make-smollm2)")
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(SMOLLM2)(TEXT)["input_ids"]
    assert len(ids) >= 128
    return [ids[:64], ids[64:128]]


@pytest.fixture(scope="module")
def pruned_smollm2(smollm2_windows, tmp_path_factory):
    """layout -> (folder, perplexity in PyTorch float32 on the windows, log probabilities)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slimformer.artifacts import save_model_folder
    from slimformer.importance import score_importance
    from slimformer.importance.depth import attention_influence
    from slimformer.pruning import PruningTarget, drop_layers, plan_pruning, prune_model

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    batches = [
        {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w))}
        for w in smollm2_windows
    ]
    out = {}
    root = tmp_path_factory.mktemp("smollm2")
    for layout in LAYOUTS:
        model = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval()
        if layout == "depth":
            drop_layers(model, [20, 24, 26])  # the stock config, three layers fewer
        else:
            scores = score_importance(model, batches, method="activations")
            uniform = layout == "uniform"
            target = PruningTarget(
                heads=0.34 if uniform else 0.2,  # a third of the 3 KV groups, every layer alike
                ffn=0.2,
                ranking="per_layer" if uniform else "adaptive",
                keep_first_layers=0 if uniform else 1,
                keep_last_layers=0 if uniform else 1,
            )
            extra = {} if uniform else {"attention_scores": attention_influence(model, batches)}
            plan = plan_pruning(model, scores, target, layout=layout, **extra)
            prune_model(model, plan, layout=layout)
        folder = root / layout
        save_model_folder(model, tokenizer, folder)
        nll, tokens, logprobs = 0.0, 0, []
        with torch.no_grad():
            for ids in smollm2_windows:
                logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
                lp = torch.log_softmax(logits, -1)[
                    torch.arange(len(ids) - 1), torch.tensor(ids[1:])
                ]
                nll -= float(lp.sum())
                tokens += len(ids) - 1
                logprobs.append(lp)
        out[layout] = (folder, math.exp(nll / tokens), logprobs)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_smollm2_in_each_layout_gives_pytorchs_perplexity_in_llama_cpp(
    layout, pruned_smollm2, smollm2_windows, tmp_path
):
    _need("llama-cpp")
    folder, perplexity, _ = pruned_smollm2[layout]
    files = export_gguf(folder, tmp_path, types=("f16", "q8_0"))
    for entry, margin in zip(files, (0.01, 0.03), strict=True):
        got = llama_cpp_scores(tmp_path / entry["file"], smollm2_windows)
        assert got["tokens"] == sum(len(w) - 1 for w in smollm2_windows)
        measured = math.exp(got["nll_sum"] / got["tokens"])
        assert measured == pytest.approx(perplexity, rel=margin), (layout, entry["type"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_smollm2_in_each_layout_gives_pytorchs_log_probabilities_in_vllm(
    layout, pruned_smollm2, smollm2_windows
):
    _need("vllm")
    from slimformer.engines import vllm_scores

    folder, perplexity, logprobs = pruned_smollm2[layout]
    got = vllm_scores(folder, smollm2_windows, kv_cache_mb=128)
    for mine, theirs in zip(logprobs, got["logprobs"], strict=True):
        assert float((torch.tensor(theirs, dtype=torch.float64) - mine).abs().max()) < 2e-3
    measured = math.exp(got["nll_sum"] / got["tokens"])
    assert measured == pytest.approx(perplexity, rel=1e-4), layout
