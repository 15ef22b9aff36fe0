"""Runs inside the gptq engine environment (``deploy/engines/gptq.sh``), not in slimformer's:
``python gptq_engine.py REQUEST.json`` writes or measures a quantized folder and prints one line
``SLIMFORMER_RESULT {json}``. :mod:`slimformer.engines.quantize` writes the request and reads the
answer.

Requests (``op``):

* ``gptq-int4``: transformers' ``GPTQConfig`` (optimum.gptq over gptqmodel) on the calibration token
  windows in ``calibration`` (a JSON file of token-id lists), saved with transformers'
  ``save_pretrained`` before any forward pass (the first forward repacks the weights in place, and
  ``GPTQQuantizer.save`` writes v1 tensors under a config that says ``gptq_v2``), the calibration
  data cleared from the config;
* ``w8a8``: int8 weights per output channel (round to nearest) and dynamic per-token int8
  activations, compressed with compressed-tensors in its ``int-quantized`` format (what vLLM reads);
* ``score``: the folder loaded in this fresh process, scored on ``windows`` (next-token NLL and
  greedy hits for causal LMs) and on the ``probe`` windows.

Every write also records the written model's outputs on the ``probe`` windows in the process that
quantized it, after saving, so that a reload elsewhere can be compared with what was quantized.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

KEEP = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def _load(request: dict, **kwargs):
    import transformers

    auto = getattr(transformers, request["auto_class"])
    return auto.from_pretrained(
        request["model"], trust_remote_code=request["trust_remote_code"], **kwargs
    )


def _samples(path: str) -> list[dict]:
    windows = json.loads(Path(path).read_text())
    return [{"input_ids": [w], "attention_mask": [[1] * len(w)]} for w in windows]


@torch.no_grad()
def _probe(model, windows: list[list[int]], causal: bool) -> dict:
    """What a reload must reproduce: top-1 ids and each real next token's log probability (causal
    LMs), or the last hidden state (encoders)."""
    model.eval()
    out: dict = {"top1": [], "logprobs": [], "hidden": []}
    for window in windows:
        ids = torch.tensor([window])
        result = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=not causal
        )
        if causal:
            logp = torch.log_softmax(result.logits[0, :-1].float(), -1)
            out["top1"].append(logp.argmax(-1).tolist())
            out["logprobs"].append(logp.gather(-1, ids[0, 1:, None])[:, 0].tolist())
        else:
            out["hidden"].append(result.hidden_states[-1][0].float().flatten().tolist())
    return out


def _finish(request: dict, model, started: float) -> dict:
    """Copy what ``save_pretrained`` does not write (tokenizer files, bundled modelling code) and
    the architecture name engines know the model by (a Nemotron-NAS folder says
    ``DeciLMForCausalLM``; saved from slimformer's class it would say that class)."""
    source, out = Path(request["model"]), Path(request["out"])
    written = json.loads((out / "config.json").read_text())
    written["architectures"] = json.loads((source / "config.json").read_text())["architectures"]
    (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    for path in source.iterdir():
        if (path.name in KEEP or path.suffix == ".py") and not (out / path.name).exists():
            shutil.copy2(path, out / path.name)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "probe": _probe(model, request["probe"], request["causal"]),
    }


def quantize_gptq(request: dict) -> dict:
    from transformers import GPTQConfig

    started = time.perf_counter()
    config = GPTQConfig(
        bits=4,
        group_size=request["group_size"],
        sym=True,  # vLLM's CPU kernel (CPUWNA16) is symmetric only
        desc_act=request.get("desc_act", False),
        dataset=_samples(request["calibration"]),
        block_name_to_quantize=request["block_name"],
        model_seqlen=request["seq_len"],
    )
    model = _load(request, quantization_config=config, dtype=torch.bfloat16)
    written = model.config.quantization_config
    written.dataset = None  # else the calibration windows land in config.json
    written.tokenizer = None
    # encoders reload only when the block list is named in the config
    written.block_name_to_quantize = request["block_name"]
    model.save_pretrained(request["out"])  # before any forward pass: it repacks the weights
    return _finish(request, model, started)


def quantize_w8a8(request: dict) -> dict:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    started = time.perf_counter()
    model = _load(request, dtype=torch.bfloat16)
    block = request["block_name"]
    scheme = preset_name_to_scheme("W8A8", ["Linear"])
    ignore = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith(block + ".")
    ]
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=ignore)
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None:
                continue
            weight = module.weight.float()
            scale, zero = calculate_qparams(
                weight.amin(1, keepdim=True), weight.amax(1, keepdim=True), scheme.weights
            )
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
            module.weight_zero_point.copy_(zero.to(module.weight_zero_point.dtype))
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    model.save_pretrained(request["out"])
    compressor.update_config(request["out"])
    return _finish(request, model, started)


@torch.no_grad()
def score(request: dict) -> dict:
    """The folder reloaded here, in a process that did not write it."""
    started = time.perf_counter()
    model = _load(request, dtype=torch.bfloat16).eval()
    load = time.perf_counter() - started
    nll, hits, count = 0.0, 0, 0
    for window in request.get("windows") or []:
        ids = torch.tensor([window])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        real = ids[0, 1:]
        nll -= float(logp.gather(-1, real[:, None]).sum())
        hits += int((logp.argmax(-1) == real).sum())
        count += len(real)
    return {
        "nll_sum": nll,
        "hits": hits,
        "tokens": count,
        "load_s": load,
        "seconds": time.perf_counter() - started,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "kernels": sorted(
            {type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__}
        ),
        "probe": _probe(model, request["probe"], request["causal"]),
    }


OPS = {"gptq-int4": quantize_gptq, "w8a8": quantize_w8a8, "score": score}

if __name__ == "__main__":
    torch.manual_seed(0)
    request = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(request.get("threads") or torch.get_num_threads())
    print("SLIMFORMER_RESULT " + json.dumps(OPS[request["op"]](request)), flush=True)
