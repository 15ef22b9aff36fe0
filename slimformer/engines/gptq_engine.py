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


def _peak_rss() -> int:
    """This process's own peak resident memory: the high-water mark of its memory map, which
    starts afresh at exec (``ru_maxrss`` keeps the forking parent's resident size, a job's whole
    model, across the exec that started this engine)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
        "peak_rss_bytes": _peak_rss(),
        "probe": _probe(model, request["probe"], request["causal"]),
    }


def _clipping_search(norm: float) -> None:
    """GPTQ's clipping search (the reference implementation's ``--mse``, gptqmodel's
    ``QuantizeConfig.mse``): each group's scale is shrunk over a grid (down to 0.8 of its
    maximum) to the one that minimises the ``norm``-th power of the rounding error, instead of
    fitting the group's largest weight. ``GPTQConfig`` has no field for it, and optimum builds
    gptqmodel's config itself, so it is set on that config once optimum has built it."""
    from optimum.gptq import quantizer

    build = quantizer.GPTQQuantizer.__init__

    def init(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.quantizeConfig.mse = norm

    quantizer.GPTQQuantizer.__init__ = init


def quantize_gptq(request: dict) -> dict:
    from transformers import GPTQConfig

    started = time.perf_counter()
    if request.get("clip_norm"):
        _clipping_search(request["clip_norm"])
    config = GPTQConfig(
        bits=4,
        group_size=request["group_size"],
        sym=True,  # vLLM's CPU kernel (CPUWNA16) is symmetric only
        desc_act=request.get("desc_act", False),
        damp_percent=request.get("damp_percent", 0.1),
        true_sequential=request.get("true_sequential", True),
        modules_in_block_to_quantize=request.get("modules"),
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


# the linears that read one module's output, in llama-like blocks: (that module, its readers)
SMOOTHED = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


def _smoothing_pairs(model, block: str) -> list:
    """(source, [linears]) where dividing the source's output channels by a scale and multiplying
    the linears' input columns by it leaves the float model unchanged: a norm's weight (and bias)
    before q/k/v or gate/up, and ``up_proj``'s rows before ``down_proj`` (SwiGLU multiplies
    ``up_proj``'s output elementwise). Layers without these modules (attention removed, other
    families) are left as they are."""
    pairs = []
    for layer in model.get_submodule(block):
        for source_name, reader_names in SMOOTHED:
            try:
                source = layer.get_submodule(source_name)
                readers = [layer.get_submodule(name) for name in reader_names]
            except AttributeError:
                continue
            linear = all(isinstance(m, torch.nn.Linear) for m in readers)
            if linear and isinstance(getattr(source, "weight", None), torch.Tensor):
                pairs.append((source, readers))
    return pairs


@torch.no_grad()
def smooth(model, block: str, windows: list[list[int]], alpha: float) -> int:
    """SmoothQuant: per input channel j of each group of linears that read one module's output,
    s_j = max|x_j|^alpha / max|W_:j|^(1-alpha) over the calibration ``windows``; the linears'
    columns are multiplied by s and the source's output divided by it, moving activation
    outliers (which per-token int8 rounds badly) into the weights (which per-channel int8 holds).
    The float model computes the same function. Answers how many groups were smoothed."""
    if not 0 < alpha <= 1:
        raise ValueError(f"smoothing strength {alpha} is outside (0, 1]")
    pairs = _smoothing_pairs(model, block)
    peaks: dict = {}

    def record(module, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        peaks[module] = torch.maximum(peaks[module], x) if module in peaks else x

    hooks = [readers[0].register_forward_pre_hook(record) for _, readers in pairs]
    model.eval()
    for window in windows:
        model(input_ids=torch.tensor([window]))
    for hook in hooks:
        hook.remove()
    for source, readers in pairs:
        weight_peak = torch.stack([m.weight.abs().amax(0).float() for m in readers]).amax(0)
        scale = peaks[readers[0]].clamp(min=1e-5).pow(alpha) / weight_peak.clamp(min=1e-5).pow(
            1 - alpha
        )
        scale = scale.clamp(min=1e-5)
        for module in readers:
            module.weight.copy_((module.weight.float() * scale).to(module.weight.dtype))
        if isinstance(source, torch.nn.Linear):  # up_proj: its output rows
            source.weight.copy_((source.weight.float() / scale[:, None]).to(source.weight.dtype))
            if source.bias is not None:
                source.bias.copy_((source.bias.float() / scale).to(source.bias.dtype))
        else:  # a norm: its elementwise weight (and bias)
            source.weight.copy_((source.weight.float() / scale).to(source.weight.dtype))
            if getattr(source, "bias", None) is not None:
                source.bias.copy_((source.bias.float() / scale).to(source.bias.dtype))
    return len(pairs)


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
    block, smoothed = request["block_name"], 0
    if request.get("smoothing"):
        # float32 while smoothing: bfloat16 matmuls are slow on most CPUs, and the scales are
        # folded in before the one rounding to bfloat16
        model = _load(request, dtype=torch.float32)
        windows = json.loads(Path(request["calibration"]).read_text())
        smoothed = smooth(model, block, windows, request["smoothing"])
        # the weights only, as a bfloat16 load leaves them: buffers (rotary frequencies) stay
        # float32, else the written model's outputs differ from what a reload computes
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
    else:
        model = _load(request, dtype=torch.bfloat16)
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
    return _finish(request, model, started) | {"smoothed": smoothed}


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
        "peak_rss_bytes": _peak_rss(),
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
