"""The quality numbers on a causal LM's card are what transformers alone measures on the saved
folder, in a fresh process, with the protocol the card states."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slimformer.spec import JobSpec
from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

# Reads each folder with transformers and torch only (nothing of slimformer is imported): documents
# are the file's blank-line-separated blocks, tokenised without special tokens, joined with EOS and
# cut into whole windows of SEQ tokens, as the card's protocol says. One process for both folders.
MEASURE = """
import json, math, sys, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
text_file, seq, windows, folders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
assert "slimformer" not in sys.modules
measured = []
for folder in folders:
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    blocks, current = [], []
    for line in open(text_file, encoding="utf-8").read().split("\\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\\n".join(current).strip()); current = []
    if current:
        blocks.append("\\n".join(current).strip())
    ids = []
    for block in blocks:
        ids += tok(block, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    nll, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * seq : (w + 1) * seq]])
            logits = model(input_ids=x).logits[0, :-1]
            nll += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
            hits += int((logits.argmax(-1) == x[0, 1:]).sum())
            count += seq - 1
    measured.append({"perplexity": math.exp(nll / count), "accuracy": hits / count})
print(json.dumps(measured))
"""


@pytest.mark.parametrize("layout", ["per_layer", "uniform", "nemotron_nas"])
def test_card_perplexity_equals_a_fresh_transformers_process_on_the_saved_folder(tmp_path, layout):
    from slimformer.pipeline import run

    # nemotron_nas states FFN widths in chunks of 256
    width = {"intermediate_size": 512} if layout == "nemotron_nas" else {}
    folder = save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4, **width)
    data = write_story_txt(tmp_path / "stories.txt", stories=60)
    prune = {"heads": 0.25, "ffn": 0.3, "layout": layout}
    if layout == "uniform":
        prune["ranking"] = "per_layer"
    spec = JobSpec.model_validate(
        {
            "model": {"id": folder},
            "dataset": {"path": str(data), "eval_path": str(data)},
            "prune": prune,
            "evaluation": {"latency": False, "max_samples": 6},
        },
        context={"local_files": True},
    )
    result = run(spec, tmp_path / "work")
    evaluation = result.report["evaluation"]
    protocol = evaluation["protocol"]
    assert protocol["windows"] == 6 and protocol["stride"] == protocol["seq_len"]
    assert result.report["pruning"]["reconstruction"]  # the default for causal LMs: obs + refit
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(data),
            str(protocol["seq_len"]),
            "6",
            str(folder),
            str(result.folder),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    original, compressed = json.loads(done.stdout.strip().splitlines()[-1])
    measured = {"original": original, "compressed": compressed}
    for side in ("original", "compressed"):
        metrics = evaluation[side]["metrics"]
        assert metrics["perplexity"] == pytest.approx(measured[side]["perplexity"], rel=1e-4)
        assert metrics["next_token_accuracy"] == pytest.approx(measured[side]["accuracy"], abs=1e-9)
    assert measured["compressed"]["perplexity"] != pytest.approx(
        measured["original"]["perplexity"], rel=1e-3
    )  # the pruned model really is another model
    card = (result.folder / "README.md").read_text()
    assert (
        f"| {measured['original']['perplexity']:.1f} | {measured['compressed']['perplexity']:.1f} |"
        in card
    )
