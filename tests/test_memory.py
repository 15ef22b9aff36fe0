"""The memory estimate of a job from its config, the available memory, and the refusal."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from slimformer.errors import InsufficientMemory, SlimformerError
from slimformer.memory import (
    GIB,
    MEMORY_LIMIT_ENV,
    available,
    available_memory,
    available_memory_bytes,
    cgroup_memory_room,
    check_fits,
    checkpoint_dtype,
    dtype_bytes,
    estimate_for_repo,
    estimate_job_memory,
    safetensors_parameters,
)

SMOLLM2 = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    tie_word_embeddings=True,
    dtype="float32",
)
LLAMA_8B = dict(
    model_type="llama",
    architectures=["LlamaForCausalLM"],
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)
JOB = dict(calibration_windows=32, eval_windows=64, window_tokens=512, method="obs")

# SmolLM2-135M by hand: q and o 576 x 576, k and v 576 x 192, gate/up/down 576 x 1536, two norms
LAYER = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
EMBEDDINGS = 49152 * 576 + 576  # tied: the head is the embedding matrix; plus the final norm


def test_streamed_parts_are_the_hand_computed_numbers():
    estimate = estimate_job_memory(SMOLLM2, dtype_bytes=4, path="streamed", **JOB)
    assert LAYER == 3_540_096
    assert estimate.breakdown == {
        "resident": EMBEDDINGS * 4,
        "layer_float32": LAYER * 4 * 2,
        "grams": (1537**2 + 577**2) * 4,
        "solve": 1537**2 * 8 + 576 * 1536 * 8,  # the FFN's Gram and down projection, float64
        "calibration_states": 32 * 512 * 576 * 4,
        "eval_states": 2 * 64 * 512 * 576 * 4,
        "head_chunk": 256 * 49152 * 4,
        "runtime": int(0.6 * GIB),  # measured layer by layer (in memory: 1 GiB, fitted)
    }
    assert estimate.total_bytes == sum(estimate.breakdown.values())
    report = estimate.to_dict()
    assert report["parameters"] == 30 * LAYER + EMBEDDINGS == 134_515_008
    assert report["breakdown"]["grams"] == 10_781_192 and report["path"] == "streamed"
    json.dumps(report)


def test_in_memory_parts_and_the_measured_peaks_they_were_fitted_to():
    estimate = estimate_job_memory(SMOLLM2, dtype_bytes=4, path="in_memory", **JOB)
    weights32 = (30 * LAYER + EMBEDDINGS) * 4
    assert estimate.breakdown["weights"] == pytest.approx(2.45 * weights32, abs=1)
    assert estimate.breakdown["grams"] == 30 * (1537**2 + 577**2) * 4
    assert estimate.breakdown["optimizer"] == estimate.breakdown["backward"] == 0
    # bench/llm_memory.py (docs/benchmarks.md): float32 random Llamas, 4 windows, OBS (measured
    # while obs._inverse still held five float64 copies: the estimate stays at or above them)
    measured = {(896, 4864, 24, 14, 2, True): 6.91, (2048, 5632, 22, 32, 4, False): 14.97}
    for (hidden, ffn, layers, heads, kv, tied), peak_gib in measured.items():
        config = dict(
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            vocab_size=49152,
            tie_word_embeddings=tied,
        )
        job = JOB | {"calibration_windows": 4, "eval_windows": 4}
        got = estimate_job_memory(config, dtype_bytes=4, path="in_memory", **job).total_bytes
        assert peak_gib <= got / GIB <= peak_gib * 1.15
    distilled = estimate_job_memory(SMOLLM2, dtype_bytes=4, path="in_memory", distill=True, **JOB)
    assert distilled.breakdown["optimizer"] == 3 * weights32 and distilled.breakdown["backward"]


def test_without_gram_matrices_and_the_paths_that_cannot_stream():
    plain = estimate_job_memory(
        SMOLLM2, dtype_bytes=4, path="streamed", **(JOB | {"method": "activations"})
    )
    assert plain.breakdown["grams"] == plain.breakdown["solve"] == 0
    refit = estimate_job_memory(
        SMOLLM2, dtype_bytes=4, path="streamed", reconstruction=True, **(JOB | {"method": "flap"})
    )
    assert refit.breakdown["grams"] > 0
    with pytest.raises(ValueError, match="in_memory"):
        estimate_job_memory(SMOLLM2, dtype_bytes=4, path="streamed", distill=True, **JOB)
    bert = dict(
        model_type="bert",
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=30522,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    encoder = estimate_job_memory(bert, dtype_bytes=4, path="in_memory", **JOB)
    assert 105e6 < encoder.to_dict()["parameters"] < 110e6  # BERT-base without its pooler
    assert encoder.breakdown["head_chunk"] == 0
    with pytest.raises(ValueError):
        estimate_job_memory(bert, dtype_bytes=4, path="streamed", **JOB)


def test_an_8b_llama_streams_under_8_gib_with_one_float64_copy_in_the_solve():
    job = dict(calibration_windows=16, eval_windows=16, window_tokens=512, method="obs")
    estimate = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **job)
    assert estimate.to_dict()["parameters"] == 8_030_261_248
    assert estimate.breakdown["resident"] == (2 * 128256 * 4096 + 4096) * 2  # untied head
    assert estimate.breakdown["solve"] == 14337**2 * 8 + 4096 * 14336 * 8
    assert 7 * GIB < estimate.total_bytes < 8 * GIB
    # a second float64 copy (torch.linalg.inv's, as the solve once held) would cost 1.5 GiB
    two = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", solve_copies=2, **job)
    assert two.total_bytes - estimate.total_bytes == 14337**2 * 8
    in_memory = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="in_memory", **job)
    assert in_memory.total_bytes > 90 * GIB


def test_insufficient_memory_names_needed_available_and_what_fits():
    estimate = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **JOB)
    needed = estimate.total_bytes
    with pytest.raises(InsufficientMemory) as caught:
        check_fits(estimate, available=8 * GIB)
    err = caught.value
    assert isinstance(err, SlimformerError) and isinstance(err, MemoryError)
    assert err.code == "insufficient_memory" and not err.transient
    assert f"{needed / GIB:.1f} GiB" in err.message and "8.0 GiB is available" in err.message
    assert "evaluation windows instead of 64" in err.message
    assert "importance activations without reconstruction" in err.message
    assert f"a machine with {-(-needed // GIB)} GiB" in err.message
    assert err.details["needed_bytes"] == needed and err.details["available_bytes"] == 8 * GIB
    assert err.details["breakdown"] == estimate.breakdown
    json.dumps(err.details)
    # today's path for a 1B Llama: the streamed path is what fits
    config = LLAMA_8B | dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    )
    in_memory = estimate_job_memory(config, dtype_bytes=2, path="in_memory", **JOB)
    with pytest.raises(InsufficientMemory, match="the streamed path"):
        check_fits(in_memory, available=8 * GIB)
    check_fits(estimate, available=needed)  # fits exactly: no error


def test_docs_list_the_code():
    api = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert "`insufficient_memory`" in api


def test_the_environment_overrides_the_available_memory(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(3 * GIB))
    assert available_memory_bytes() == 3 * GIB
    assert available_memory() == (3 * GIB, MEMORY_LIMIT_ENV)
    estimate = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **JOB)
    with pytest.raises(InsufficientMemory, match="3.0 GiB is available") as caught:
        check_fits(estimate)
    assert caught.value.details["available_from"] == MEMORY_LIMIT_ENV
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "8e9")
    assert available_memory_bytes() == 8_000_000_000
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=MEMORY_LIMIT_ENV):
        available_memory_bytes()


def test_without_the_override_memory_comes_from_the_machine(monkeypatch):
    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    monkeypatch.setattr(available, "cgroup_memory_room", lambda: 2 * GIB)
    monkeypatch.setattr(available, "resident_bytes", lambda: GIB // 2)
    got, source = available_memory()
    assert source == "the cgroup's memory limit" and got == 2 * GIB + GIB // 2
    monkeypatch.setattr(available, "cgroup_memory_room", lambda: None)
    assert available_memory()[1] == "MemAvailable"


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_cgroup_v2_limit_max_and_nested_limits(tmp_path):
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/job/worker\n")
    root = tmp_path / "cg"
    _write(root, {"job/worker/memory.max": "max\n", "job/memory.max": "max\n"})
    assert cgroup_memory_room(root, proc) is None
    _write(
        root,
        {
            "job/memory.max": f"{4 * GIB}\n",
            "job/memory.current": f"{GIB}\n",
            "job/memory.stat": f"anon {GIB // 2}\ninactive_file {GIB // 2}\n",
        },
    )
    assert cgroup_memory_room(root, proc) == 4 * GIB - GIB // 2
    _write(root, {"job/worker/memory.max": f"{GIB}\n", "job/worker/memory.current": "0\n"})
    assert cgroup_memory_room(root, proc) == GIB  # the tightest of the two


def test_cgroup_v1_unlimited_and_limited(tmp_path):
    proc = tmp_path / "proc_cgroup"
    proc.write_text("5:devices:/\n4:memory:/pod/box\n0::/\n")
    root = tmp_path / "cg"
    _write(root, {"memory/memory.limit_in_bytes": "9223372036854771712\n"})
    _write(root, {"memory/pod/box/memory.limit_in_bytes": "9223372036854771712\n"})
    assert cgroup_memory_room(root, proc) is None
    _write(
        root,
        {
            "memory/pod/box/memory.limit_in_bytes": f"{6 * GIB}\n",
            "memory/pod/box/memory.usage_in_bytes": f"{2 * GIB}\n",
            "memory/pod/box/memory.stat": f"cache 1\ntotal_inactive_file {GIB}\n",
        },
    )
    assert cgroup_memory_room(root, proc) == 5 * GIB


def test_dtype_from_the_hub_summary_the_config_or_the_headers(tmp_path):
    assert checkpoint_dtype({"BF16": 1_000, "F32": 10}) == "BF16" and dtype_bytes("BF16") == 2
    assert checkpoint_dtype(None, LLAMA_8B) == "bfloat16" and dtype_bytes("torch.float16") == 2
    assert checkpoint_dtype(None, SMOLLM2) == "float32" == checkpoint_dtype(None, {})
    assert dtype_bytes("float32") == 4 == dtype_bytes("something new")
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "a": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [24, 32]},
        }
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + b"\0" * 32
    )
    assert safetensors_parameters(tmp_path) == {"BF16": 12, "F32": 2}
    from_hub = estimate_for_repo(LLAMA_8B, {"BF16": 8_030_261_248}, path="streamed", **JOB)
    assert from_hub == estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **JOB)


def test_a_random_checkpoint_written_tensor_by_tensor_loads_and_is_estimated(tmp_path):
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.spec_from_file_location(
        "checkpoints", Path(__file__).resolve().parents[1] / "bench" / "checkpoints.py"
    )
    checkpoints = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checkpoints)
    if not (checkpoints.SMOLLM2 / "tokenizer.json").is_file():
        pytest.skip("needs SmolLM2's folder (../shared/models/make-smollm2)")
    shape = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
    )
    count = checkpoints.write_random_checkpoint(tmp_path, shape, shard_bytes=4e6)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # embeddings, layers, head
    assert safetensors_parameters(tmp_path) == {"BF16": count}
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()) and model.dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == count
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(32)[None]).logits).all()
    config = json.loads((tmp_path / "config.json").read_text())
    estimate = estimate_for_repo(config, safetensors_parameters(tmp_path), path="streamed", **JOB)
    assert estimate.to_dict()["parameters"] == count and estimate.job["dtype_bytes"] == 2


def test_downstream_tasks_layer_by_layer_count_one_whole_float32_model():
    plain = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **JOB)
    tasks = estimate_job_memory(
        LLAMA_8B, dtype_bytes=2, path="streamed", downstream_tasks=True, **JOB
    )
    # the resident part and the runtime, beside the larger of the layer's work and the whole
    # model in its bf16 (loaded after the layers are done)
    kept = plain.breakdown["resident"] + plain.breakdown["runtime"]
    whole = 2 * plain.to_dict()["parameters"]
    assert tasks.total_bytes == kept + max(whole, plain.total_bytes - kept)
    assert tasks.total_bytes > 16 * GIB  # an 8B's lm-eval tasks need the whole model
    small = dict(LLAMA_8B, num_hidden_layers=1, vocab_size=1000)
    tiny_plain = estimate_job_memory(small, dtype_bytes=2, path="streamed", **JOB)
    tiny_tasks = estimate_job_memory(
        small, dtype_bytes=2, path="streamed", downstream_tasks=True, **JOB
    )
    assert tiny_tasks.total_bytes == tiny_plain.total_bytes  # one layer's work is the larger


def test_quantized_copies_are_made_block_by_block_within_the_streamed_peak():
    """export.quantize reads, quantizes and writes one block at a time in another process once
    the layers are done: an 8B job that streams within 9 GiB still does with gptq-int4 or w8a8
    (the model whole would be 16 GB of bf16 weights), and twice the layers need no more than the
    finished blocks waiting to be written."""
    from slimformer.memory.estimate import (
        ENGINE_RUNTIME_BYTES,
        QUANTIZER_SHARD_BYTES,
        quantizer_bytes,
    )

    plain = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", **JOB)
    assert plain.total_bytes < 9 * GIB
    weights = plain.shape.parameters()
    for method in ("gptq-int4", "w8a8"):
        job = estimate_job_memory(
            LLAMA_8B, dtype_bytes=2, path="streamed", quantize=(method,), **JOB
        )
        need = quantizer_bytes(job.shape, job.job)
        assert ENGINE_RUNTIME_BYTES[method] < need < 2 * weights / 2
        assert job.total_bytes < 10 * GIB, method  # fits a 16 GiB worker
        # what the job holds meanwhile (its resident parts and runtime) plus what the engine
        # needs beyond the layer work the job has given back
        layer_work = sum(v for k, v in plain.breakdown.items() if k not in ("resident", "runtime"))
        assert job.breakdown["quantizer"] == max(0, need - layer_work)
        deeper = estimate_job_memory(
            dict(LLAMA_8B, num_hidden_layers=64),
            dtype_bytes=2,
            path="streamed",
            quantize=(method,),
            **JOB,
        )
        grown = quantizer_bytes(deeper.shape, deeper.job) - need
        assert 0 <= grown <= QUANTIZER_SHARD_BYTES, method
    # W8A8 smooths in float32: its calibration states cost twice GPTQ's bf16 ones
    fewer = dict(JOB, calibration_windows=16)
    for method, state_bytes in (("gptq-int4", 2), ("w8a8", 4)):
        a = estimate_job_memory(LLAMA_8B, dtype_bytes=2, path="streamed", quantize=(method,), **JOB)
        b = estimate_job_memory(
            LLAMA_8B, dtype_bytes=2, path="streamed", quantize=(method,), **fewer
        )
        states = 2 * 16 * 512 * 4096 * state_bytes
        assert quantizer_bytes(a.shape, a.job) - quantizer_bytes(b.shape, b.job) == states
    # in memory the models stay while the engine runs: the whole engine need is added
    small = estimate_job_memory(SMOLLM2, dtype_bytes=4, path="in_memory", **JOB)
    small_q = estimate_job_memory(
        SMOLLM2, dtype_bytes=4, path="in_memory", quantize=("gptq-int4",), **JOB
    )
    assert small_q.total_bytes - small.total_bytes == quantizer_bytes(small_q.shape, small_q.job)
