"""vLLM: perplexity and next-token accuracy of a folder measured in vLLM's CPU build."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

from slimformer.engines.runtime import kept_engine, run_engine

_VLLM_SCORE = """
import gc, json, os, sys, time
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

def score(request):
    windows = request["windows"]
    seq = max(len(w) for w in windows)
    start = time.perf_counter()
    llm = LLM(model=request["model"], tokenizer=request["model"], dtype=request["dtype"],
              trust_remote_code=request["trust_remote_code"],
              max_model_len=seq, enforce_eager=True,
              kv_cache_memory_bytes=request["kv_cache_mb"] << 20, max_logprobs=-1, seed=0,
              generation_config="vllm")
    load = time.perf_counter() - start
    # All but the last token are the prompt; the last token's log probability is read from the one
    # generated position (every token's), so a window as long as the model's position limit fits.
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1, logprobs=-1,
                            detokenize=False)
    outs = llm.generate([TokensPrompt(prompt_token_ids=w[:-1]) for w in windows], params,
                        use_tqdm=False)
    nll, hits, count, logprobs = 0.0, 0, 0, []
    for ids, out in zip(windows, outs):
        row = []
        entries = [out.prompt_logprobs[pos][ids[pos]] for pos in range(1, len(ids) - 1)]
        entries.append(out.outputs[0].logprobs[0][ids[-1]])
        for entry in entries:
            nll -= entry.logprob
            hits += int(entry.rank == 1)
            count += 1
            row.append(entry.logprob)
        logprobs.append(row)
    result = {"nll_sum": nll, "hits": hits, "tokens": count, "logprobs": logprobs, "load_s": load}
    bench = request.get("bench")
    if bench:
        heads = [w[: bench["prompt"]] for w in windows[: bench["batch"]]]
        prompts = [TokensPrompt(prompt_token_ids=h) for h in heads]
        greedy = SamplingParams(temperature=0.0, max_tokens=bench["new_tokens"], ignore_eos=True,
                                detokenize=False)
        llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
        start = time.perf_counter()
        made = llm.generate(prompts, greedy, use_tqdm=False)
        seconds = time.perf_counter() - start
        new = sum(len(o.outputs[0].token_ids) for o in made)
        result["bench"] = {"new_tokens": new, "seconds": seconds, "tokens_per_s": new / seconds}
    del llm
    gc.collect()
    return result

if sys.argv[1] == "--serve":  # kept running: one request per stdin line, one answer each
    import traceback
    for line in sys.stdin:
        try:
            answer = "SLIMFORMER_RESULT " + json.dumps(score(json.loads(line)))
        except Exception:
            answer = "SLIMFORMER_ERROR " + json.dumps(traceback.format_exc())
        print(answer, flush=True)
else:
    print("SLIMFORMER_RESULT " + json.dumps(score(json.load(open(sys.argv[1])))))
"""

# vLLM's CPU build ships two kernel libraries and loads the AVX2 one on a CPU without AVX-512; its
# 4-bit weight kernel (GPTQ's CPUWNA16) is only in the other one
VLLM_INT4_KERNEL = "cpu_gemm_wna16"
VLLM_NO_INT4 = (
    f"vLLM's CPU build has no 4-bit kernel for this CPU ({VLLM_INT4_KERNEL} is built for AVX-512 "
    "CPUs only; this one has AVX2): the folder serves in vLLM on an AVX-512 CPU or a GPU"
)
_KERNELS = f"""
import torch, vllm._custom_ops  # loads the kernel library this CPU takes
print("SLIMFORMER_RESULT", hasattr(torch.ops._C, "{VLLM_INT4_KERNEL}"))
"""


@functools.cache
def vllm_serves_int4() -> bool:
    """Whether the vllm engine can run GPTQ's 4-bit weights on this machine's CPU (asked once per
    process, in the engine: about 10 s).

    Raises:
        EngineMissing: the vllm engine is not built.
    """
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    out = run_engine("vllm", ["-c", _KERNELS], timeout=600, what="vLLM's kernel check", env=env)
    line = next(x for x in reversed(out.splitlines()) if x.startswith("SLIMFORMER_RESULT "))
    return line.split()[-1] == "True"


def vllm_scores(
    folder: str | Path,
    windows: list[list[int]],
    *,
    kv_cache_mb: int = 256,
    bench: dict | None = None,
    dtype: str = "float32",
) -> dict:
    """Next-token NLL, greedy hits (the real token ranked first) and token count of a saved folder
    over token windows, measured by vLLM's CPU build in its engine environment, plus the log
    probability of every real next token (``logprobs``, to compare with PyTorch). A folder in the
    nemotron_nas layout is loaded with ``trust_remote_code`` (its config class is in the folder's
    ``modeling_slimformer.py``; vLLM runs its own Nemotron-NAS model code).

    vLLM runs in one process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with one OpenMP thread: on 2
    cores its multiprocess mode takes 25-40 s to start and two threads oversubscribe them.
    ``bench={"batch": 8, "prompt": 32, "new_tokens": 64}`` also times greedy generation.
    ``dtype``: what vLLM computes in; its quantized kernels (GPTQ, int8) take only ``bfloat16``
    or ``float16``.
    Inside :func:`kept_engines` the folder is measured in the kept vLLM process.

    Raises:
        EngineMissing: the vllm engine is not built.
        ExportError: vLLM could not load or run the folder.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    request = {
        "model": str(Path(folder).resolve()),
        "windows": windows,
        "kv_cache_mb": kv_cache_mb,
        "dtype": dtype,
        # the nemotron_nas layout's config class is slimformer's (vLLM reads the shapes itself)
        "trust_remote_code": bool(config.get("auto_map")),
    }
    if bench:
        request["bench"] = bench
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "OMP_NUM_THREADS": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    kept = kept_engine("vllm", _VLLM_SCORE, env)
    if kept is not None:
        return kept.request(request, timeout=3600, what="vLLM scoring")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(request, handle)
    try:
        out = run_engine(
            "vllm", ["-c", _VLLM_SCORE, handle.name], timeout=3600, what="vLLM scoring", env=env
        )
    finally:
        os.unlink(handle.name)
    line = next(x for x in reversed(out.splitlines()) if x.startswith("SLIMFORMER_RESULT "))
    return json.loads(line.removeprefix("SLIMFORMER_RESULT "))
