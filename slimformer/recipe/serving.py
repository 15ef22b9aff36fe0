"""What the job serves beside the PyTorch folder (``export``, ``evaluation.onnx``): the engines it
needs, checked before any work; ONNX, GGUF, vLLM and quantized copies
(:mod:`~slimformer.recipe.quantizing`), each written and measured in the job.

The one owner of ``export.targets`` in the recipe: the layout those targets need is decided with
the spec's defaults (``slimformer.spec.default_layout``), everything else here, from the spec's
derived view of what is written (``JobSpec.gguf_types``, ``writes_onnx``, ``served_targets``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from slimformer.engines import engine_python, export_gguf, llama_cpp_scores, vllm_scores
from slimformer.evaluation import generation_speed
from slimformer.export import export_onnx, quantize_onnx_int8
from slimformer.recipe import quantizing
from slimformer.recipe.job import Job
from slimformer.recipe.results import Served

GEN_PROMPT, GEN_TOKENS = 32, 64  # generation speed of served artefacts: prompt and new tokens


def check(job: Job) -> None:
    """A serving engine the spec needs must be there before any work (EngineMissing names the
    fix)."""
    spec = job.spec
    if spec.gguf_types():
        engine_python("llama-cpp")
    if "vllm" in spec.export.targets:
        engine_python("vllm")
    quantizing.check_engines(job)


def _scores(scores: dict) -> dict:
    return {
        "perplexity": math.exp(scores["nll_sum"] / max(1, scores["tokens"])),
        "next_token_accuracy": scores["hits"] / max(1, scores["tokens"]),
    }


def _onnx(job: Job, folder: Path) -> dict | None:
    spec, batch = job.inputs.spec, job.inputs.eval_batches[0]
    if not spec.writes_onnx():
        return None
    job.check()
    onnx = export_onnx(job.compressed, batch, folder / "model.onnx")
    onnx["path"] = "model.onnx"
    if spec.evaluation.onnx_int8:
        job.check()
        int8 = quantize_onnx_int8(folder / "model.onnx", folder / "model.int8.onnx", batch)
        onnx["int8"] = int8 | {"path": "model.int8.onnx"}
    return onnx


def _gguf(job: Job, folder: Path, new_tokens: int) -> list[dict] | None:
    windows = job.inputs.lm_windows
    job.check()
    job.stage("writing_card", 0.2, "writing GGUF files with llama.cpp")
    gguf = export_gguf(folder, folder / "gguf", job.inputs.spec.gguf_types())
    for entry in gguf:
        entry["file"] = f"gguf/{entry['file']}"
        if windows:
            job.check()
            scores = llama_cpp_scores(folder / entry["file"], windows, bench_tokens=new_tokens)
            entry |= _scores(scores)
            entry["measured_by"] = "llama.cpp (llama-cpp-python), the evaluation windows"
            if "bench" in scores:
                entry["tokens_per_s"] = scores["bench"]["tokens_per_s"]
    return gguf


def _vllm(job: Job, folder: Path, bench: dict | None) -> dict:
    job.check()
    job.stage("writing_card", 0.6, "loading the result in vLLM")
    scores = vllm_scores(folder, job.inputs.lm_windows, bench=bench)
    served = _scores(scores) | {
        "load_seconds": round(scores["load_s"], 1),
        "measured_by": "vLLM (CPU build, float32), the evaluation windows",
    }
    if "bench" in scores:
        served["tokens_per_s"] = scores["bench"]["tokens_per_s"]
    return served


def measure(job: Job, folder: Path) -> Served:
    """Write and measure every served file of the saved ``folder``."""
    inputs = job.inputs
    served = Served(onnx=_onnx(job, folder))
    windows = inputs.lm_windows
    # generation speed of every served artefact, one stream: greedy from the first evaluation
    # window's first GEN_PROMPT tokens, GEN_TOKENS new tokens (fewer if the window is shorter)
    speed = bool(inputs.spec.evaluation.latency and windows)
    new_tokens = min(GEN_TOKENS, len(windows[0]) - GEN_PROMPT) if speed else 0
    bench = {"batch": 1, "prompt": GEN_PROMPT, "new_tokens": new_tokens} if speed else None
    if inputs.spec.gguf_types():
        served.gguf = _gguf(job, folder, new_tokens)
    if "vllm" in inputs.spec.export.targets and windows:
        served.vllm = _vllm(job, folder, bench)
    served.quantized = quantizing.measure(job, folder, bench)
    if speed and (served.gguf or served.vllm or served.quantized):  # the same table's PyTorch rows
        prompt = torch.tensor([windows[0][:GEN_PROMPT]])
        served.generation = {
            "prompt_tokens": GEN_PROMPT,
            "new_tokens": new_tokens,
            "original_tokens_per_s": generation_speed(inputs.original, prompt, new_tokens),
            "compressed_tokens_per_s": generation_speed(job.compressed, prompt, new_tokens),
        }
    return served
