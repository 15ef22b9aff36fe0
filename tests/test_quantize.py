"""Quantized copies of a written folder (export.quantize): gptq-int4 through transformers'
GPTQConfig (optimum over gptqmodel) and w8a8 in compressed-tensors' format, each reloaded in a
fresh process. One test per trap of that path: v1 tensors under a v2 config and a save after the
first forward (both: a folder that does not reproduce the quantized model), calibration text in
config.json, encoders that reload only with ``block_name_to_quantize``, widths that do not
quantize.

The engine tests need the gptq engine (``make engines``) and skip, saying so, without it."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch
from safetensors import safe_open

from slimformer.engines import EngineMissing, engine_python
from slimformer.engines.quantize import (
    GPTQ_CLIP_NORM,
    GPTQ_DAMP_PERCENT,
    GPTQ_GROUP_SIZE,
    W8A8_SMOOTHING,
    block_path,
    check_reload,
    group_size_for,
    linear_widths,
    quantize_folder,
    quantized_scores,
    write_quantized,
)
from slimformer.errors import ExportError, InvalidSpec
from testkit.tiny_models import VOCAB, save_tiny_causal_lm, tiny_model

# widths that quantize at groups of 32 and 64: hidden 64, 4 heads of 32 (vLLM's CPU attention
# takes no head of 16), FFN 128
WIDTHS = dict(hidden_size=64, head_dim=32, intermediate_size=128, max_position_embeddings=128)


def _engine(name: str) -> None:
    try:
        engine_python(name)
    except EngineMissing as err:
        pytest.skip(f"the {name} engine is not built (make engines): {err}")


def _windows(count: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (count, length), generator=gen).tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    _engine("gptq")
    folder = tmp_path_factory.mktemp("quantize") / "model"
    save_tiny_causal_lm(folder, **WIDTHS)
    calibration, windows = _windows(16, 48, seed=1), _windows(4, 48, seed=2)
    records = {
        method: quantize_folder(folder, method, calibration, blocks="model.layers", windows=windows)
        for method in ("gptq-int4", "w8a8")
    }
    bf16 = quantized_scores(folder, windows)
    return folder, calibration, windows, records, bf16


def _config(folder, method: str) -> dict:
    return json.loads((folder / "quantized" / method / "config.json").read_text())


def test_the_group_is_the_largest_that_divides_every_width_and_a_width_that_cannot_is_named():
    # the default group, the best measured (docs/serving.md), divides every width that quantizes
    assert GPTQ_GROUP_SIZE == 32
    assert group_size_for({"q_proj": 1024, "down_proj": 2048}) == 32
    # larger groups, asked for: SmolLM2's hidden 576 rules out 128
    assert group_size_for({"q_proj": 576, "down_proj": 1536}, largest=128) == 64
    # an attention output of 3 heads of 64 rules out 128 as well
    assert group_size_for({"q_proj": 1024, "o_proj": 192}, largest=128) == 64
    assert group_size_for({"q_proj": 1024, "down_proj": 2048}, largest=128) == 128
    with pytest.raises(InvalidSpec, match=r"model.layers.0.mlp.down_proj has 200 inputs"):
        group_size_for({"layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 200})


def test_widths_that_do_not_quantize_are_refused_before_the_engine_runs(tmp_path):
    """Trap 5: an FFN of 37 neurons cannot be quantized at any group of 32 or more."""
    model = tiny_model("llama", "causal-lm", intermediate_size=37, hidden_size=64, head_dim=16)
    blocks = block_path(model, list(model.model.layers))
    assert blocks == "model.layers"
    widths = linear_widths(model, blocks)
    assert widths["model.layers.1.mlp.down_proj"] == 37
    with pytest.raises(InvalidSpec, match=r"down_proj has 37 inputs, not a multiple of 32"):
        group_size_for(widths)
    # the same refusal from the written folder, before any engine is asked
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    with pytest.raises(InvalidSpec, match=r"model.layers.0.mlp.down_proj has 37 inputs"):
        windows = _windows(2, 16, 0)
        write_quantized(
            folder, folder / "q", "gptq-int4", windows, probe=windows, causal=True, blocks=blocks
        )


def test_gptq_int4_reloads_in_a_fresh_process_as_it_was_quantized(llama):
    """Traps 1 and 2 (v1 tensors under a v2 config; a save after the first forward): the folder,
    reloaded by transformers in another process, predicts what the quantizing process did."""
    folder, _, _, records, bf16 = llama
    record = records["gptq-int4"]
    assert record["reload_agreement"] >= 0.98
    config = _config(folder, "gptq-int4")["quantization_config"]
    assert (config["quant_method"], config["bits"], config["sym"]) == ("gptq", 4, True)
    assert config["group_size"] == record["group_size"] == GPTQ_GROUP_SIZE
    assert config["damp_percent"] == record["damp_percent"] == GPTQ_DAMP_PERCENT
    assert record["clip_norm"] == GPTQ_CLIP_NORM > 0
    with safe_open(folder / "quantized" / "gptq-int4" / "model.safetensors", "pt") as handle:
        names = set(handle.keys())
    assert "model.layers.0.mlp.down_proj.qweight" in names
    assert "model.layers.0.mlp.down_proj.weight" not in names
    # 4-bit weights: the reload is a little worse than bfloat16, not garbage
    base = math.exp(bf16["nll_sum"] / bf16["tokens"])
    assert base / 1.5 < record["perplexity"] < 1.5 * base


def test_a_reload_that_does_not_reproduce_the_quantized_model_is_refused(llama, tmp_path):
    """Traps 1 and 2, the guard: tensors read in the wrong GPTQ format (what GPTQQuantizer.save
    writes, v1 tensors under a config saying gptq_v2) are caught by the reload check."""
    folder, calibration, windows, _, _ = llama
    target = tmp_path / "gptq"
    written = write_quantized(
        folder,
        target,
        "gptq-int4",
        calibration,
        probe=calibration[:2],
        causal=True,
        blocks="model.layers",
    )
    config = json.loads((target / "config.json").read_text())
    assert config["quantization_config"]["checkpoint_format"] == "gptq_v2"
    config["quantization_config"]["checkpoint_format"] = "gptq"  # the other format's tensors
    config["quantization_config"]["format"] = "gptq"
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="does not reproduce the model that was quantized"):
        check_reload(target, written, windows, causal=True)


def test_the_calibration_windows_stay_out_of_config_json(llama):
    """Trap 3: GPTQConfig(dataset=...) is saved into config.json unless cleared."""
    folder, calibration, _, _, _ = llama
    text = (folder / "quantized" / "gptq-int4" / "config.json").read_text()
    config = json.loads(text)["quantization_config"]
    assert config.get("dataset") is None
    assert json.dumps(calibration[0][:8])[1:-1] not in text.replace(" ", "").replace("\n", "")
    assert len(text) < 4000


def test_an_encoder_reloads_with_its_block_list_named(tmp_path):
    """Trap 4: a BERT folder reloads only when block_name_to_quantize is in its config."""
    _engine("gptq")
    model = tiny_model("bert", "base", hidden_size=64, intermediate_size=128)
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    blocks = block_path(model, list(model.encoder.layer))
    record = quantize_folder(
        folder, "gptq-int4", _windows(8, 32, seed=3), causal=False, blocks=blocks
    )
    config = _config(folder, "gptq-int4")["quantization_config"]
    assert config["block_name_to_quantize"] == "encoder.layer"
    assert record["reload_agreement"] >= 0.98  # cosine of the last hidden states


def test_w8a8_is_int8_per_channel_with_dynamic_per_token_activations(llama):
    folder, _, _, records, bf16 = llama
    record = records["w8a8"]
    config = _config(folder, "w8a8")["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "int-quantized")
    scheme = config["config_groups"]["group_0"]
    assert (scheme["weights"]["num_bits"], scheme["weights"]["strategy"]) == (8, "channel")
    acts = scheme["input_activations"]
    assert (acts["num_bits"], acts["strategy"], acts["dynamic"]) == (8, "token", True)
    with safe_open(folder / "quantized" / "w8a8" / "model.safetensors", "pt") as handle:
        weight = handle.get_tensor("model.layers.0.mlp.down_proj.weight")
        scale = handle.get_tensor("model.layers.0.mlp.down_proj.weight_scale")
    assert weight.dtype == torch.int8 and tuple(scale.shape) == (weight.shape[0], 1)
    # smoothed by default, on the calibration windows (tests/test_quantize_smoothing.py)
    assert record["smoothing"] == W8A8_SMOOTHING
    assert record["reload_agreement"] >= 0.98
    base = math.exp(bf16["nll_sum"] / bf16["tokens"])
    assert abs(record["perplexity"] / base - 1) < 0.05


def test_vllm_loads_both_quantized_folders(llama):
    _engine("vllm")
    from slimformer.engines import vllm_scores, vllm_serves_int4

    folder, _, windows, records, _ = llama
    for method, record in records.items():
        if method == "gptq-int4" and not vllm_serves_int4():
            # an AVX2-only CPU: vLLM loads its kernel library without the 4-bit kernel
            with pytest.raises(ExportError, match="cpu_gemm_wna16"):
                vllm_scores(folder / "quantized" / method, windows, dtype="bfloat16")
            continue
        scores = vllm_scores(folder / "quantized" / method, windows, dtype="bfloat16")
        perplexity = math.exp(scores["nll_sum"] / scores["tokens"])
        assert perplexity == pytest.approx(record["perplexity"], rel=0.1), method


def _job(folder, data, prune: dict, quantize: list[str], **export):
    from slimformer.spec import JobSpec

    return JobSpec.model_validate(
        {
            "model": {"id": str(folder)},
            "dataset": {"path": str(data), "eval_path": str(data)},
            "prune": prune,
            "evaluation": {"latency": False, "max_samples": 4},
            "export": {"quantize": quantize, **export},
        },
        context={"local_files": True},
    )


def test_a_job_writes_measures_and_lists_each_quantized_copy(tmp_path):
    """export.quantize end to end: pruning keeps FFN widths multiples of the group (160 neurons
    at 30% would leave 112 per layer), both copies are written beside the folder, measured, and
    on the card."""
    _engine("gptq")
    from slimformer.pipeline import run
    from testkit.tiny_models import write_story_txt

    widths = WIDTHS | {"intermediate_size": 160, "num_hidden_layers": 4}
    folder = save_tiny_causal_lm(tmp_path / "lm", **widths)
    data = write_story_txt(tmp_path / "stories.txt")
    spec = _job(folder, data, {"ffn": 0.3}, ["gptq-int4", "w8a8"])
    result = run(spec, tmp_path / "work")
    artifacts = result.report["artifacts"]
    records = {q["method"]: q for q in artifacts["quantized"]}
    assert set(records) == {"gptq-int4", "w8a8"}
    assert records["gptq-int4"]["group_size"] == 32  # 160 rules out 64
    neurons = result.report["pruning"]["neurons_per_layer"]
    assert all(n % 32 == 0 for n in neurons) and neurons != [160] * len(neurons)
    for method, record in records.items():
        assert (result.folder / "quantized" / method / "config.json").is_file()
        assert record["perplexity"] > 1 and record["reload_agreement"] >= 0.98
    card = (result.folder / "README.md").read_text()
    assert "`quantized/gptq-int4/` | transformers (GPTQ int4, group 32" in card
    assert "`quantized/w8a8/` | transformers (int8 W8A8" in card
    assert "Widths for GPTQ int4: every FFN width kept a multiple of the group size 32" in card


def test_widths_that_cannot_quantize_are_refused_before_pruning(tmp_path):
    """An FFN of 37 neurons: no group of 32 or more divides it; refused before any scoring."""
    _engine("gptq")
    from slimformer.pipeline import run
    from testkit.tiny_models import write_story_txt

    folder = save_tiny_causal_lm(tmp_path / "lm", hidden_size=64, head_dim=16)
    data = write_story_txt(tmp_path / "stories.txt")
    progress = []
    with pytest.raises(InvalidSpec, match=r"model.layers.0.mlp.down_proj has 37 inputs"):
        run(
            _job(folder, data, {"ffn": 0.3}, ["gptq-int4"]),
            tmp_path / "work",
            on_progress=lambda stage, *_: progress.append(stage),
        )
    assert "pruning" not in progress
    assert not (tmp_path / "work" / "model").exists()


CLIPPING = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import gptq_engine
from optimum.gptq import GPTQQuantizer
from gptqmodel.quantization.quantizer import Quantizer

gptq_engine._clipping_search(float(sys.argv[2]))
config = GPTQQuantizer(bits=4, group_size=32, sym=True).quantizeConfig
# groups of 32 Gaussian weights: a scale that fits the largest leaves most of the 16 levels to a
# few weights; a smaller one rounds the many more finely, clipping the largest a little
torch.manual_seed(0)
weights = torch.randn(8, 32) * 0.02
quantizer = Quantizer(qcfg=config)
quantizer.configure(perchannel=True, bits=4, sym=True)
quantizer.find_params(weights, weight=True)
scale = quantizer.scale.flatten()
fitted = weights.abs().amax(1) * 2 / quantizer.maxq.item()
levels = torch.clamp(torch.round(weights / scale[:, None]), -8, 7)
error = ((levels * scale[:, None] - weights).abs() ** 2.4).sum().item()
print(json.dumps({"mse": config.mse, "shrink": (scale / fitted).tolist(), "error": error}))
"""


def test_the_clipping_search_runs_inside_what_optimum_builds():
    """GPTQConfig has no field for GPTQ's clipping search: the engine sets it on the gptqmodel
    config optimum builds, and a group then gets a smaller scale than one that fits its largest
    weight, with a smaller rounding error (in the norm searched)."""
    _engine("gptq")
    from slimformer.engines import engine_python
    from slimformer.engines.quantize import SCRIPT

    def run(norm: float) -> dict:
        done = subprocess.run(
            [str(engine_python("gptq")), "-c", CLIPPING, str(SCRIPT.parent), str(norm)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    searched, plain = run(GPTQ_CLIP_NORM), run(0.0)
    assert searched["mse"] == GPTQ_CLIP_NORM and plain["mse"] == 0.0
    assert all(s == pytest.approx(1.0, abs=1e-4) for s in plain["shrink"])
    assert all(s <= 1 + 1e-4 for s in searched["shrink"])
    assert sum(s < 0.99 for s in searched["shrink"]) >= len(searched["shrink"]) // 4
    assert searched["error"] < plain["error"]


def test_the_quantizers_peak_is_its_own_not_the_jobs_that_started_it(llama, tmp_path):
    """The engine reports its own peak memory: a job holding a large model when it starts the
    engine does not show up as the quantizer's peak (ru_maxrss would carry it across the exec)."""
    folder, calibration, _, records, _ = llama
    held = bytearray(1536 * 2**20)  # the job's 1.5 GiB, touched so that it is resident
    for i in range(0, len(held), 4096):
        held[i] = 1
    windows = calibration[:2]
    written = write_quantized(
        folder,
        tmp_path / "w8a8",
        "w8a8",
        windows,
        probe=windows,
        causal=True,
        blocks="model.layers",
        smoothing=0,
    )
    assert written["peak_rss_bytes"] < 1.2 * 2**30 < len(held)
    del held


WHOLE_MODEL = """
import json, sys, torch, transformers
sys.path.insert(0, sys.argv[1])
import gptq_engine
request = json.loads(open(sys.argv[2]).read())
gptq_engine._clipping_search(request["clip_norm"])
windows = json.loads(open(request["calibration"]).read())
config = gptq_engine._gptq_config(request, dataset=gptq_engine._samples(request["calibration"]))
model = transformers.AutoModelForCausalLM.from_pretrained(
    request["model"], quantization_config=config, dtype=torch.bfloat16
)
model.save_pretrained(request["out"])
"""


def test_block_by_block_gptq_writes_what_optimum_writes_for_the_whole_model(llama, tmp_path):
    """A causal LM is quantized one block at a time from its files; optimum's own quantize_model
    (transformers' GPTQConfig over the model loaded whole) writes the same tensors, bit for bit."""
    from slimformer.engines.quantize import SCRIPT

    folder, calibration, _, records, _ = llama
    calib = tmp_path / "calibration.json"
    calib.write_text(json.dumps(calibration))
    request = {
        "model": str(folder),
        "out": str(tmp_path / "whole"),
        "calibration": str(calib),
        "group_size": records["gptq-int4"]["group_size"],
        "damp_percent": GPTQ_DAMP_PERCENT,
        "clip_norm": GPTQ_CLIP_NORM,
        "block_name": "model.layers",
        "seq_len": max(len(w) for w in calibration),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = subprocess.run(
        [
            str(engine_python("gptq")),
            "-c",
            WHOLE_MODEL,
            str(SCRIPT.parent),
            str(tmp_path / "request.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with (
        safe_open(tmp_path / "whole" / "model.safetensors", "pt") as whole,
        safe_open(folder / "quantized" / "gptq-int4" / "model.safetensors", "pt") as blocks,
    ):
        assert set(whole.keys()) == set(blocks.keys())
        assert any(name.endswith(".qweight") for name in blocks.keys())
        for name in whole.keys():
            assert torch.equal(whole.get_tensor(name), blocks.get_tensor(name)), name


def _quantizer_peak(tmp_path, method: str, layers: int, *, reload: bool) -> tuple[int, dict]:
    """The quantizing process's peak on a model of ``layers`` blocks of 1024 x 2816, and (with
    ``reload``) the record of the whole write-and-reload check."""
    folder = tmp_path / f"{method}-{layers}"
    save_tiny_causal_lm(
        folder,
        hidden_size=1024,
        head_dim=64,
        intermediate_size=2816,
        num_hidden_layers=layers,
        max_position_embeddings=128,
    )
    windows = _windows(4, 32, seed=4)
    options = dict(blocks="model.layers", clip_norm=0, shard_bytes=16 * 2**20)  # plain GPTQ
    if not reload:
        probe = [w[:16] for w in windows[:2]]
        written = write_quantized(
            folder, folder / "q", method, windows, probe=probe, causal=True, **options
        )
        return written["peak_rss_bytes"], {}
    record = quantize_folder(folder, method, windows, windows=windows, **options)
    return record["peak_rss_bytes"], record | {"folder": folder}


@pytest.mark.parametrize("method", ["gptq-int4", "w8a8"])
def test_the_quantizer_holds_one_block_not_the_whole_model(tmp_path, method):
    """Five more blocks (128 MB more in bfloat16, twice that in the float32 file) leave the
    quantizer's peak where it was: it reads, quantizes and writes one block at a time, in files
    of the size asked for, and the folder still reloads as it was quantized."""
    _engine("gptq")
    one, _ = _quantizer_peak(tmp_path, method, 1, reload=False)
    six, record = _quantizer_peak(tmp_path, method, 6, reload=True)
    block_bf16 = 2 * (4 * 1024 * 1024 + 3 * 1024 * 2816)
    assert six - one < 5 * block_bf16 / 3
    assert record["reload_agreement"] >= 0.98
    target = record["folder"] / "quantized" / method
    shards = sorted(p.name for p in target.glob("*.safetensors"))
    assert len(shards) > 1 and (target / "model.safetensors.index.json").is_file()
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"


def test_a_job_says_when_vllm_cannot_run_the_4bit_copy(tmp_path):
    """Target vllm with gptq-int4: on a CPU whose vLLM build has the 4-bit kernel (AVX-512) the
    copy is measured in vLLM; on one without (AVX2) the job still succeeds, the report says why
    vLLM did not measure it and the card says so beside the serving notes."""
    _engine("gptq")
    _engine("vllm")
    from slimformer.engines import VLLM_NO_INT4, vllm_serves_int4
    from slimformer.pipeline import run
    from testkit.tiny_models import write_story_txt

    folder = save_tiny_causal_lm(tmp_path / "lm", **WIDTHS)
    data = write_story_txt(tmp_path / "stories.txt")
    prune = {"ffn": 0.25, "layout": "uniform"}  # a layout vLLM serves at any width
    spec = _job(folder, data, prune, ["gptq-int4"], targets=["transformers", "vllm"])
    result = run(spec, tmp_path / "work")
    record = result.report["artifacts"]["quantized"][0]
    card = (result.folder / "README.md").read_text()
    if vllm_serves_int4():
        assert record["vllm"]["perplexity"] > 1 and not record.get("vllm_not_measured")
        assert "vLLM (GPTQ int4" in card
    else:
        assert record.get("vllm") is None and record["vllm_not_measured"] == VLLM_NO_INT4
        assert "GPTQ int4 was not measured in vLLM: vLLM's CPU build has no 4-bit kernel" in card
