"""Runs inside the gptq engine environment (``deploy/engines/gptq.sh``), not in slimformer's:
``python gptq_engine.py REQUEST.json`` writes or measures a quantized folder and prints one line
``SLIMFORMER_RESULT {json}``. :mod:`slimformer.engines.quantize` writes the request and reads the
answer.

Requests (``op``):

* ``gptq-int4``: optimum.gptq's ``GPTQQuantizer`` (built from transformers' ``GPTQConfig``, over
  gptqmodel) on the calibration token windows in ``calibration`` (a JSON file of token-id lists). A
  causal LM is quantized block by block from its files and written block by block
  (:mod:`block_quantizers`): the tensors are those optimum writes for the model loaded whole, but
  the process never holds more than one block. An encoder (small) goes through transformers'
  ``GPTQConfig`` whole and is saved with transformers' ``save_pretrained`` before any forward pass
  (the first forward repacks the weights in place, and ``GPTQQuantizer.save`` writes v1 tensors
  under a config that says ``gptq_v2``). The calibration data is cleared from the config;
* ``w8a8``: int8 weights per output channel (round to nearest) and dynamic per-token int8
  activations, smoothed first, compressed with compressed-tensors in its ``int-quantized`` format
  (what vLLM reads), block by block;
* ``score``: the folder loaded in this fresh process, scored on ``windows`` (next-token NLL and
  greedy hits for causal LMs) and on the ``probe`` windows.

Every write also records the written model's outputs on the ``probe`` windows in the process that
quantized it, through the written kernels (block by block: the probe's states are carried through
each quantized block), so that a reload elsewhere can be compared with what was quantized.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

KEEP = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


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
    logits, hidden = [], []
    for window in windows:
        ids = torch.tensor([window])
        result = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=not causal
        )
        if causal:
            logits.append(result.logits)
        else:
            hidden.append(result.hidden_states[-1][0].float().flatten().tolist())
    if causal:
        return _causal_probe(logits, windows)
    return {"top1": [], "logprobs": [], "hidden": hidden}


def _causal_probe(logits: list[torch.Tensor], windows: list[list[int]]) -> dict:
    out: dict = {"top1": [], "logprobs": [], "hidden": []}
    for window, scores in zip(windows, logits, strict=True):
        logp = torch.log_softmax(scores[0, :-1].float(), -1)
        out["top1"].append(logp.argmax(-1).tolist())
        out["logprobs"].append(logp.gather(-1, torch.tensor(window[1:])[:, None])[:, 0].tolist())
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


def _finish(request: dict, started: float, probe: dict) -> dict:
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
        "probe": probe,
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


def _gptq_config(request: dict, **extra):
    from transformers import GPTQConfig

    return GPTQConfig(
        bits=4,
        group_size=request["group_size"],
        sym=True,  # vLLM's CPU kernel (CPUWNA16) is symmetric only
        desc_act=request.get("desc_act", False),
        damp_percent=request.get("damp_percent", 0.1),
        true_sequential=request.get("true_sequential", True),
        modules_in_block_to_quantize=request.get("modules"),
        block_name_to_quantize=request["block_name"],
        model_seqlen=request["seq_len"],
        **extra,
    )


def _written_config(written, request: dict):
    """The quantization config as written: no calibration windows (else they land in
    config.json), and the block list named (encoders reload only with it)."""
    written.dataset = None
    written.tokenizer = None
    written.block_name_to_quantize = request["block_name"]
    return written


def quantize_gptq(request: dict) -> dict:
    """gptq-int4: a causal LM block by block from its files (:mod:`block_quantizers`), an encoder
    (small; its blocks take the inputs BERT-like models compute) whole through transformers'
    ``GPTQConfig``."""
    started = time.perf_counter()
    if request.get("clip_norm"):
        _clipping_search(request["clip_norm"])
    if request["causal"]:
        return _gptq_blocks(request, started)
    config = _gptq_config(request, dataset=_samples(request["calibration"]))
    model = _load(request, quantization_config=config, dtype=torch.bfloat16)
    _written_config(model.config.quantization_config, request)
    model.save_pretrained(request["out"])  # before any forward pass: it repacks the weights
    return _finish(request, started, _probe(model, request["probe"], causal=False))


def _gptq_blocks(request: dict, started: float) -> dict:
    import block_quantizers
    from optimum.gptq import GPTQQuantizer
    from transformers import GPTQConfig

    optimum = GPTQQuantizer.from_dict(_gptq_config(request).to_dict_optimum())
    writer = _writer(request)
    result = block_quantizers.gptq_int4(request, optimum, writer)
    writer.close()
    written = _written_config(GPTQConfig.from_dict(result["config"]), request)
    _save_config(request, quantization_config=written)
    return _finish(request, started, _causal_probe(result["logits"], request["probe"]))


def quantize_w8a8(request: dict) -> dict:
    import block_quantizers

    started = time.perf_counter()
    writer = _writer(request)
    result = block_quantizers.w8a8(request, writer)
    writer.close()
    _save_config(request)
    result["compressor"].update_config(request["out"])
    probe = _causal_probe(result["logits"], request["probe"])
    return _finish(request, started, probe) | {"smoothed": result["smoothed"]}


def _writer(request: dict):
    # the block-by-block modules beside this script (its folder is on sys.path when it runs as
    # one; imported as part of slimformer, this module needs neither)
    from block_stream import SHARD_BYTES, ShardWriter

    return ShardWriter(Path(request["out"]), request.get("shard_bytes") or SHARD_BYTES)


def _save_config(request: dict, **set_) -> None:
    """The source folder's config (and generation config) into the written folder, in bfloat16
    and with ``set_`` set, as ``save_pretrained`` writes them."""
    import transformers

    source, remote = request["model"], request["trust_remote_code"]
    config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=remote)
    config.dtype = torch.bfloat16
    for key, value in set_.items():
        setattr(config, key, value)
    config.save_pretrained(request["out"])
    try:
        generation = transformers.GenerationConfig.from_pretrained(source)
    except OSError:  # the source folder has none
        return
    generation.save_pretrained(request["out"])


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
