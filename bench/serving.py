"""Serving SmolLM2-135M, original and pruned 30%, in transformers, vLLM (CPU) and llama.cpp.

The pruned models are the jobs a user runs for serving engines, through ``slimformer.pipeline.run``
with the causal-LM defaults (OBS with reconstruction): ``prune: {heads: 0.3, ffn: 0.3}`` and
``export: {targets: [transformers, vllm, llama.cpp], gguf: [f16, q8_0]}``, which gives the
``uniform`` layout (a stock config: every layer loses the same KV groups and neurons), and the same
job with ``layout: nemotron_nas`` (attention removed whole in 30% of the layers, FFN widths in
chunks of 256). The original is converted with the same llama.cpp tools. Each model is then
measured in each engine, one after another on the same cores:

* perplexity and next-token accuracy on the first ``--eval-windows`` 512-token windows of
  WikiText-2 test (float32 in transformers and vLLM; the GGUF type in llama.cpp);
* greedy generation speed: transformers ``generate`` and vLLM on a batch of 8 prompts of 32 tokens,
  64 new tokens each; llama.cpp one stream of 64 new tokens (llama-cpp-python generates one sequence
  at a time).

Needs the engines (``make engines``). Prints the table and writes ``serving.json``, ``serving.md``
and ``serving.png`` under ``--out``.

    python bench/serving.py [--eval-windows 16]

``--quantized`` measures ``export.quantize`` instead: the job ``prune: {ffn: 0.3, layout:
nemotron_nas}`` (or the model folder of such a job given with ``--pruned``), then each quantized
copy (gptq-int4, w8a8) made from it on the job's calibration windows (``--calibration-windows``
windows of 512 tokens of WikiText-2 validation): WikiText-2 test perplexity in transformers (the
gptq engine, bfloat16, a fresh process) and in vLLM (bfloat16) against the pruned bf16 folder in
the same engines, size on disk, quantization wall time and peak memory of the quantizing process,
and vLLM greedy tokens/s (a batch of 8 and one stream). Writes ``quantized.json`` and
``quantized.md``.

    python bench/serving.py --quantized [--pruned FOLDER] [--eval-windows 24]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tables import ROOT, SHARED, Table, environment, render_markdown, render_text

WIKITEXT = SHARED / "data" / "wikitext2"
MAKE_SMOLLM2 = SHARED / "models" / "make-smollm2"
BATCH, PROMPT, NEW = 8, 32, 64


def transformers_row(folder: Path, windows: list[list[int]]) -> dict:
    from transformers import AutoModelForCausalLM

    from slimformer.evaluation import score_next_tokens

    remote = "auto_map" in json.loads((Path(folder) / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=remote
    ).eval()
    batches = [
        {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
        for w in windows
    ]
    scores = score_next_tokens(model, batches)
    prompts = torch.tensor([w[:PROMPT] for w in windows[:BATCH]])
    with torch.no_grad():
        model.generate(prompts[:1], max_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=NEW,
            do_sample=False,
            min_new_tokens=NEW,
        )
        seconds = time.perf_counter() - start
    new = int((out.shape[1] - PROMPT) * out.shape[0])
    return {
        "perplexity": scores.perplexity,
        "accuracy": scores.accuracy,
        "tokens_per_s": new / seconds,
        "batch": BATCH,
    }


def engine_row(scores: dict, batch: int) -> dict:
    return {
        "perplexity": math.exp(scores["nll_sum"] / scores["tokens"]),
        "accuracy": scores["hits"] / scores["tokens"],
        "tokens_per_s": scores["bench"]["tokens_per_s"],
        "batch": batch,
    }


def plot(results: dict, path: Path) -> None:
    """Two panels: generation speed and perplexity of every model in every engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(results["models"])
    engines = list(results["models"][models[0]])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(models)
    x = np.arange(len(engines))
    for i, name in enumerate(models):
        rows = results["models"][name]
        for ax, key in zip(axes, ("tokens_per_s", "perplexity"), strict=True):
            values = [rows[e][key] for e in engines]
            bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=name)
            ax.bar_label(bars, fmt="%.0f" if key == "tokens_per_s" else "%.1f", fontsize=7)
    for ax, title in zip(
        axes,
        ("greedy generation, tokens/s (higher is better)", "perplexity (lower is better)"),
        strict=True,
    ):
        ax.set_xticks(
            x, [f"{e}\n(batch {results['models'][models[0]][e]['batch']})" for e in engines]
        )
        ax.set_title(title, fontsize=10)
    for ax in axes:  # room above the bars for the legend
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    axes[0].legend(fontsize=8, loc="upper left", ncol=3)
    fig.suptitle("SmolLM2-135M served, WikiText-2 test, 2 CPU cores", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fixture() -> Path:
    if not MAKE_SMOLLM2.exists() or not (WIKITEXT / "test.txt").exists():
        sys.exit(f"serving: needs {MAKE_SMOLLM2} and {WIKITEXT} (../shared next to the repo)")
    out = subprocess.run(
        [str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _pruned_folder(args, work: Path) -> Path:
    """The model folder of ``prune --ffn 0.3 --layout nemotron_nas`` (``--pruned``, or run here)."""
    if args.pruned:
        return Path(args.pruned)
    from slimformer.pipeline import run
    from slimformer.spec import JobSpec

    spec = {
        "model": {"id": str(_fixture())},
        "dataset": {
            "path": str(WIKITEXT / "validation.txt"),
            "eval_path": str(WIKITEXT / "test.txt"),
        },
        "prune": {"ffn": 0.3, "layout": "nemotron_nas"},
        "evaluation": {"latency": False, "max_samples": args.eval_windows},
    }
    return run(JobSpec.model_validate(spec, context={"local_files": True}), work / "job").folder


def _engine_rows(folder: Path, windows: list[list[int]]) -> dict:
    from slimformer.engines import vllm_scores
    from slimformer.engines.quantize import quantized_scores

    hf = quantized_scores(folder, windows)
    rows = {"transformers bf16": engine_row(hf | {"bench": {"tokens_per_s": float("nan")}}, 1)}
    for batch in (BATCH, 1):
        bench = {"batch": batch, "prompt": PROMPT, "new_tokens": NEW}
        scores = vllm_scores(folder, windows, bench=bench, dtype="bfloat16")
        rows[f"vLLM bf16, batch {batch}"] = engine_row(scores, batch)
    return rows


def quantized_main(args) -> None:
    """``--quantized``: the pruned bf16 folder and each quantized copy, side by side."""
    from transformers import AutoTokenizer

    from slimformer.engines import kept_engines
    from slimformer.engines.quantize import quantize_folder
    from slimformer.text import pack_texts, read_documents

    torch.set_num_threads(2)
    results = {"environment": environment(), "models": {}, "quantization": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _pruned_folder(args, Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        windows = pack_texts(
            tokenizer, read_documents(WIKITEXT / "test.txt"), max_windows=args.eval_windows
        ).input_ids.tolist()
        calibration = pack_texts(
            tokenizer,
            read_documents(WIKITEXT / "validation.txt"),
            max_windows=args.calibration_windows,
        ).input_ids.tolist()
        with kept_engines():
            results["models"]["pruned bf16"] = _engine_rows(folder, windows)
            bf16_size = (folder / "model.safetensors").stat().st_size / 2  # float32 on disk
            for method in ("gptq-int4", "w8a8"):
                out = Path(tmp) / "quantized" / method
                start = time.perf_counter()
                record = quantize_folder(
                    folder, method, calibration, blocks="model.layers", out=out,
                    desc_act=args.desc_act, damp_percent=args.damp_percent,
                    group_size=args.group_size, clip_norm=args.clip_norm,
                    smoothing=args.smoothing,
                )  # fmt: skip
                record["wall_s"] = time.perf_counter() - start
                results["quantization"][method] = record
                print(method, record, flush=True)
                results["models"][method] = _engine_rows(out, windows)
                results["models"][method]["size_mb"] = record["size_bytes"] / 1e6
        results["models"]["pruned bf16"]["size_mb"] = bf16_size / 1e6
    _quantized_table(args, results)


def _quantized_table(args, results: dict) -> None:
    base = results["models"]["pruned bf16"]
    rows = []
    for name, engines in results["models"].items():
        record = results["quantization"].get(name, {})
        for engine, row in engines.items():
            if engine == "size_mb":
                continue
            ratio = row["perplexity"] / base[engine]["perplexity"]
            speed = row["tokens_per_s"]
            rows.append(
                [
                    name,
                    engine,
                    f"{engines['size_mb']:,.0f}",
                    f"{row['perplexity']:.2f}",
                    f"x{ratio:.3f}",
                    "" if math.isnan(speed) else f"{speed:.1f}",
                    f"{record['wall_s']:.0f}" if record else "",
                    f"{record['peak_rss_bytes'] / 2**30:.2f}" if record else "",
                ]
            )
    table = Table(
        title="SmolLM2-135M pruned 30% of the FFN (nemotron_nas), quantized, WikiText-2 test",
        headers=[
            "model", "engine", "MB", "perplexity", "vs bf16", "tokens/s", "quantize s", "peak GiB",
        ],
        rows=rows,
        notes=[
            f"perplexity on the first {args.eval_windows} windows of 512 tokens; calibration: "
            f"{args.calibration_windows} windows of 512 tokens of WikiText-2 validation",
            "MB: the weights on disk (the pruned folder: its float32 file halved, as bf16); "
            "quantize s: wall time of quantizing, saving and reloading; peak GiB: the "
            "quantizing process's peak RSS",
            f"tokens/s: vLLM greedy generation, {PROMPT}-token prompts, {NEW} new tokens, "
            "2 CPU cores, one OpenMP thread",
        ],
    )  # fmt: skip
    print(render_text(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantized.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "quantized.md").write_text(render_markdown(table) + "\n")


def main() -> None:
    from slimformer.engines.quantize import (
        GPTQ_CLIP_NORM,
        GPTQ_DAMP_PERCENT,
        GPTQ_GROUP_SIZE,
        W8A8_SMOOTHING,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--plot-only", action="store_true", help="redraw serving.png from serving.json in --out"
    )
    parser.add_argument("--quantized", action="store_true", help="measure export.quantize")
    parser.add_argument("--pruned", help="--quantized: a pruned model folder to start from")
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument(
        "--desc-act", action="store_true", help="gptq-int4 with act-order (vLLM 0.32 refuses it)"
    )
    parser.add_argument("--damp-percent", type=float, default=GPTQ_DAMP_PERCENT)
    parser.add_argument("--group-size", type=int, default=GPTQ_GROUP_SIZE, help="gptq-int4")
    parser.add_argument(
        "--clip-norm", type=float, default=GPTQ_CLIP_NORM, help="gptq-int4 clipping, 0: off"
    )
    parser.add_argument(
        "--smoothing", type=float, default=W8A8_SMOOTHING, help="w8a8: SmoothQuant, 0: none"
    )
    args = parser.parse_args()
    if args.quantized:
        quantized_main(args)
        return
    if args.plot_only:
        out = Path(args.out)
        plot(json.loads((out / "serving.json").read_text()), out / "serving.png")
        return
    from slimformer.engines import export_gguf, llama_cpp_scores, vllm_scores
    from slimformer.pipeline import run
    from slimformer.spec import JobSpec
    from slimformer.text import pack_texts, read_documents

    if not MAKE_SMOLLM2.exists() or not (WIKITEXT / "test.txt").exists():
        sys.exit(f"serving: needs {MAKE_SMOLLM2} and {WIKITEXT} (../shared next to the repo)")
    original = Path(
        subprocess.run(
            [str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    torch.set_num_threads(2)
    results = {"environment": environment(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = [("original", original, work / "original-gguf")]
        for name, layout in (
            ("pruned 30%, nemotron_nas", "nemotron_nas"),
            ("pruned 30%, uniform", None),  # the default layout for these targets
        ):
            spec = {
                "model": {"id": str(original)},
                "dataset": {
                    "path": str(WIKITEXT / "validation.txt"),
                    "eval_path": str(WIKITEXT / "test.txt"),
                },
                "prune": {"heads": 0.3, "ffn": 0.3} | ({"layout": layout} if layout else {}),
                "evaluation": {"latency": False, "max_samples": args.eval_windows},
                "export": {
                    "targets": ["transformers", "vllm", "llama.cpp"],
                    "gguf": ["f16", "q8_0"],
                },
            }
            start = time.perf_counter()
            job = run(
                JobSpec.model_validate(spec, context={"local_files": True}), work / name.split()[-1]
            )
            results.setdefault("jobs", {})[name] = {
                "seconds": time.perf_counter() - start,
                "artifacts": job.report["artifacts"],
                "parameters": job.report["evaluation"]["compressed"].get("parameters"),
                "perplexity": job.report["evaluation"]["compressed"]["metrics"]["perplexity"],
            }
            print(name, "job", results["jobs"][name], flush=True)
            models.append((name, job.folder, job.folder / "gguf"))
        export_gguf(original, work / "original-gguf", ("f16", "q8_0"))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(original)
        docs = read_documents(WIKITEXT / "test.txt")
        windows = pack_texts(tokenizer, docs, max_windows=args.eval_windows).input_ids.tolist()
        bench = {"batch": BATCH, "prompt": PROMPT, "new_tokens": NEW}
        for name, folder, gguf_dir in models:
            rows = {"transformers fp32": transformers_row(folder, windows)}
            print(name, "transformers", rows["transformers fp32"], flush=True)
            rows["vLLM fp32"] = engine_row(vllm_scores(folder, windows, bench=bench), BATCH)
            print(name, "vLLM", rows["vLLM fp32"], flush=True)
            for kind in ("F16", "Q8_0"):
                path = gguf_dir / f"model-{kind}.gguf"
                scores = llama_cpp_scores(path, windows, bench_tokens=NEW)
                rows[f"llama.cpp {kind}"] = engine_row(scores, 1) | {
                    "size_mb": path.stat().st_size / 1e6
                }
                print(name, kind, rows[f"llama.cpp {kind}"], flush=True)
            size = (Path(folder) / "model.safetensors").stat().st_size / 1e6
            for key in ("transformers fp32", "vLLM fp32"):
                rows[key]["size_mb"] = size
            results["models"][name] = rows
    table_rows = []
    for name, rows in results["models"].items():
        for engine, row in rows.items():
            table_rows.append(
                [
                    name,
                    engine,
                    f"{row['size_mb']:,.0f}",
                    f"{row['perplexity']:.2f}",
                    f"{100 * row['accuracy']:.1f}%",
                    f"{row['tokens_per_s']:.1f}",
                    str(row["batch"]),
                ]
            )
    table = Table(
        title="SmolLM2-135M served: original and pruned 30% (nemotron_nas and uniform), "
        "WikiText-2 test",
        headers=["model", "engine", "MB", "perplexity", "next-token acc", "tokens/s", "batch"],
        rows=table_rows,
        notes=[
            f"perplexity on the first {args.eval_windows} windows of 512 tokens; generation: "
            f"greedy, {PROMPT}-token prompts, {NEW} new tokens, 2 CPU cores",
            "vLLM runs in one process with one OpenMP thread (its fastest setting on 2 cores)",
        ],
    )
    print(render_text(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "serving.md").write_text(render_markdown(table) + "\n")
    plot(results, out / "serving.png")


if __name__ == "__main__":
    main()
