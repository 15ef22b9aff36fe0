"""Layer-by-layer compression (slimformer.streaming) gives what the in-memory path gives.

A tiny Llama saved as a folder: the streamed forward is the model's own forward to the bit; a
streamed prune with the causal-LM default (OBS scores, least-squares refit) removes the same units
as the in-memory prune, and the folder it writes one layer at a time loads with transformers and
scores exactly what the streamed evaluation measured; sharded checkpoints go in and out; a bf16
checkpoint stays bf16.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from slimformer.evaluation import score_next_tokens
from slimformer.importance.obs import score_obs
from slimformer.pruning import (
    PruningRecord,
    PruningTarget,
    apply_layout,
    one_shot_prune,
    plan_pruning,
)
from slimformer.streaming import writer
from slimformer.streaming.model import StreamedModel, can_stream
from slimformer.streaming.prune import prune_layers, score_layers
from slimformer.text import pack_texts
from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

TARGET = dict(heads=0.25, ffn=0.25, ranking="adaptive", reconstruction=True)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_causal_lm(folder, num_hidden_layers=3)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = write_story_txt(folder.parent / "stories.txt").read_text().split("\n\n")
    windows = pack_texts(tokenizer, texts, seq_len=32, max_windows=8)
    return folder, tokenizer, windows.batches(4)


def _stats(sm: StreamedModel, batches: list[dict]):
    from slimformer.streaming.model import HeadStats

    hidden = [sm.embed(b) for b in batches]
    for i in range(sm.num_layers):
        layer = sm.load_layer(i)
        hidden = [sm.run_layer(layer, h, b) for h, b in zip(hidden, batches, strict=True)]
        sm.free_layer(i)
    total = HeadStats()
    for h, b in zip(hidden, batches, strict=True):
        total.add(sm.head_stats(h, b))
    return total


def test_the_streamed_forward_is_the_models_own(tiny_llama):
    folder, _, batches = tiny_llama
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected = score_next_tokens(model, batches)
    sm = StreamedModel(folder)
    assert can_stream(sm.config)
    got = _stats(sm, batches)
    assert (got.tokens, got.hits) == (expected.tokens, expected.hits) and got.tokens > 0
    assert got.nll_sum == pytest.approx(expected.nll_sum, rel=1e-6)
    # nothing of the decoder layers stays in memory between layers
    assert all(p.device.type == "meta" for p in sm.adapter.layers[0].parameters())


def _streamed_prune(folder, tokenizer, batches, out, layout="per_layer"):
    sm = StreamedModel(folder)
    importance = score_layers(sm, batches)
    plan = plan_pruning(sm.model, importance, PruningTarget(**TARGET), layout=layout)
    record = PruningRecord.start(sm.adapter)
    staging = out.parent / (out.name + "-staged")
    side = prune_layers(sm, plan, batches, batches, staging, reconstruct=True)
    record.apply(plan, sm.adapter)
    apply_layout(sm.model, layout)
    out.mkdir()
    writer.write_folder(sm, staging, out, tokenizer)
    return plan, side, record


@pytest.mark.parametrize("layout", ["per_layer", "uniform"])
def test_a_streamed_prune_is_the_in_memory_prune(tiny_llama, tmp_path, layout):
    folder, tokenizer, batches = tiny_llama
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    original = score_next_tokens(model, batches)
    importance = score_obs(model, batches)
    plan = plan_pruning(model, importance, PruningTarget(**TARGET), layout=layout)
    in_memory = one_shot_prune(model, importance, plan, layout=layout).model
    expected = score_next_tokens(in_memory, batches)

    streamed_plan, side, record = _streamed_prune(
        folder, tokenizer, batches, tmp_path / "pruned", layout
    )
    assert streamed_plan.heads == plan.heads and streamed_plan.neurons == plan.neurons
    assert not plan.is_empty() and record.to_dict()["removed_heads"]
    assert side.original.nll_sum == pytest.approx(original.nll_sum, rel=1e-5)
    assert side.compressed.nll_sum == pytest.approx(expected.nll_sum, rel=1e-4)
    assert side.compressed.hits == expected.hits
    # the folder written one layer at a time is the model that was measured
    remote = layout == "per_layer"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned", trust_remote_code=remote, dtype=torch.float32
    )
    fresh = score_next_tokens(reloaded, batches)
    assert fresh.nll_sum == pytest.approx(side.compressed.nll_sum, rel=1e-6)
    assert fresh.hits == side.compressed.hits
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in in_memory.parameters()
    )


def test_sharded_checkpoints_in_and_out(tiny_llama, tmp_path, monkeypatch):
    folder, tokenizer, batches = tiny_llama
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    tokenizer.save_pretrained(sharded)
    assert (sharded / "model.safetensors.index.json").is_file()
    monkeypatch.setattr(writer, "SHARD_BYTES", 20_000)
    _, side, _ = _streamed_prune(sharded, tokenizer, batches, tmp_path / "out")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / "out" / s).is_file() for s in shards)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", trust_remote_code=True, dtype=torch.float32
    )
    assert score_next_tokens(reloaded, batches).nll_sum == pytest.approx(
        side.compressed.nll_sum, rel=1e-6
    )


def test_a_bf16_checkpoint_is_pruned_and_written_in_bf16(tiny_llama, tmp_path):
    folder, tokenizer, batches = tiny_llama
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    half = tmp_path / "bf16"
    model.save_pretrained(half)
    tokenizer.save_pretrained(half)
    _, side, _ = _streamed_prune(half, tokenizer, batches, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "out", trust_remote_code=True, dtype=torch.float32
    )
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    # measured with the bf16 weights it was saved with (computed in float32)
    fresh = score_next_tokens(reloaded, batches)
    assert fresh.nll_sum == pytest.approx(side.compressed.nll_sum, rel=1e-4)
    assert math.isfinite(side.compressed.nll_sum)


def _job(model_id: str, data, **extra):
    from slimformer.spec import JobSpec

    body = {"model": {"id": model_id}, "dataset": {"path": str(data)}, "prune": {"heads": 0.25}}
    return JobSpec.model_validate(body | extra, context={"local_files": True})


@pytest.fixture(scope="module")
def six_layers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-6")
    save_tiny_causal_lm(folder, num_hidden_layers=6)
    return folder, write_story_txt(folder.parent / "stories6.txt")


def test_a_causal_lm_job_runs_layer_by_layer_and_says_so(six_layers, tmp_path):
    from slimformer.pipeline import run

    folder, data = six_layers
    report = run(_job(str(folder), data), tmp_path / "work").report
    execution = report["execution"]
    assert execution["path"] == "layer_by_layer" and execution["why_in_memory"] is None
    assert 0 < execution["estimated_peak_bytes"] and 0 < execution["measured_peak_bytes"]
    assert not (tmp_path / "work" / "staged-layers").exists()  # staged layers are gone
    # an iterative schedule holds the model in memory, and says why
    iterative = _job(str(folder), data, prune={"heads": 0.25, "schedule": "iterative"})
    report = run(iterative, tmp_path / "work2").report
    assert report["execution"]["path"] == "in_memory"
    assert "iterative" in report["execution"]["why_in_memory"]


def test_a_job_that_cannot_fit_is_refused_before_any_weight_is_read(
    six_layers, tmp_path, monkeypatch, hub, policy
):
    from slimformer.errors import InsufficientMemory
    from slimformer.pipeline import run

    folder, data = six_layers
    monkeypatch.setenv("SLIMFORMER_MEMORY_LIMIT_BYTES", str(300 * 2**20))
    with pytest.raises(InsufficientMemory) as refused:
        run(_job(str(folder), data), tmp_path / "work", out_dir=tmp_path / "out")
    message = refused.value.message
    assert "GiB" in message and "0.3 GiB is available" in message
    assert refused.value.details["needed_bytes"] > refused.value.details["available_bytes"]
    assert not (tmp_path / "out").exists()
    # from the Hub: config.json is read, no weight file is ever asked for
    hub.add_repo("acme/tiny-llama", folder)
    with pytest.raises(InsufficientMemory):
        run(_job("acme/tiny-llama", data), tmp_path / "work2", hub_policy=policy)
    asked = [path for method, path in hub.requests if "/resolve/" in path]
    assert any(path.endswith("config.json") for path in asked)
    assert not any(path.endswith(".safetensors") for path in asked), asked


def test_hidden_states_spilled_to_files_give_the_same_model_and_numbers(
    six_layers, tmp_path, monkeypatch
):
    """A job whose hidden states would take too much memory keeps them in files, one window in
    memory at a time, and writes the same model with the same numbers."""
    from safetensors.torch import load_file

    from slimformer.memory import estimate as estimate_module
    from slimformer.pipeline import run
    from slimformer.streaming import states

    folder, data = six_layers
    kept = run(_job(str(folder), data), tmp_path / "w1", out_dir=tmp_path / "kept").report
    folders = []
    release = states.HiddenStates.release

    def spying_release(self):
        if self.folder is not None:
            folders.append((self.folder.name, len(list(self.folder.glob("window-*.pt")))))
        release(self)

    monkeypatch.setattr(states.HiddenStates, "release", spying_release)
    monkeypatch.setattr(estimate_module, "STATES_SHARE", 0.0)  # any state is too much
    spilled = run(_job(str(folder), data), tmp_path / "w2", out_dir=tmp_path / "spilled").report
    execution = spilled["execution"]
    assert execution["states_in_files"] is True and kept["execution"]["states_in_files"] is False
    windows = kept["execution"]["estimate"]["calibration_windows"]
    one = kept["execution"]["estimate"]["breakdown"]["calibration_states"] // windows
    assert execution["estimate"]["breakdown"]["calibration_states"] == one
    assert execution["estimate"]["breakdown"]["eval_states"] == 2 * one
    # the scoring pass's calibration states, then the pruning pass's three sets, were files
    assert [name for name, _ in folders] == ["scoring", "calibration", "original", "compressed"]
    assert all(count > 0 for _, count in folders)
    assert not (tmp_path / "w2" / "hidden-states" / "scoring").exists()
    for side in ("original", "compressed"):
        assert spilled["evaluation"][side]["metrics"] == kept["evaluation"][side]["metrics"], side
    a = load_file(tmp_path / "kept" / "model.safetensors")
    b = load_file(tmp_path / "spilled" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "kept in files" in (tmp_path / "spilled" / "README.md").read_text()
