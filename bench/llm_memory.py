"""Peak memory of the default LLM pruning job as the model grows: SmolLM2-135M, then random
checkpoints in the shapes of SmolLM2-135M, Qwen2.5-0.5B, Llama-3.2-1B, Llama-3.2-3B (Llama-3.1-8B).

Each row is one ``slimformer prune FOLDER --data wikitext2/validation.txt --eval-data
wikitext2/test.txt --heads 0.25 --ffn 0.25`` with the CLI's defaults (for causal LMs: OBS importance
with reconstruction, adaptive ranking, layer by layer when the model is streamable), in a process of
its own under ``/usr/bin/time -v`` (peak RSS of the whole command). Only the number of windows
changes: the real SmolLM2-135M fixture (float32) runs with the defaults (32 calibration and 64
evaluation windows of 512 tokens); the random-weight checkpoints (bf16 safetensors shards
written tensor by tensor by ``bench/checkpoints.py``, SmolLM2's tokenizer) run with ``--windows``
(default 8) of each. Each random checkpoint is written into a temporary folder under /tmp and
deleted after its row. The columns compare the measured peak with the report's
``execution.estimated_peak_bytes`` (``slimformer.memory``, from config.json before any weight is
read).

Perplexity is the quality figure for the real SmolLM2 row only; on random weights it is
meaningless (printed, and marked so). ``--skip-after MIN`` skips the remaining shapes once the run
has taken that many minutes (8b needs ~16 GB of disk and likely over an hour: ask for it by name).

Prints a table and writes ``llm_memory.json``, ``llm_memory.md`` and ``llm_memory.png`` under
``--out``.

    python bench/llm_memory.py [--sizes 135m,0.5b,1b,3b] [--windows 8] [--no-fixture]
        [--skip-after MIN]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkpoints import SHAPES, tensors_of, write_random_checkpoint
from tables import ROOT, SHARED, Table, environment, render_markdown, render_text

WIKITEXT = SHARED / "data" / "wikitext2"
MAKE_SMOLLM2 = SHARED / "models" / "make-smollm2"
GIB = 1024**3  # sizes in GiB, as slimformer.memory and the report state them
# Goals (GiB): peak RSS of the plain command (and, for SmolLM2-135M, the perplexity ratio at 64
# windows: the in-memory default's result)
GOALS_GIB = {"1b": 2.5, "3b": 4.0, "8b": 8.0, "smollm2-135m": 1.2}
GOAL_PPL_RATIO = 1.38


def run_job(folder: Path, windows: int | None, out: Path) -> dict:
    """One ``slimformer prune`` under ``/usr/bin/time -v``; ``windows`` None keeps the defaults."""
    command = [
        "/usr/bin/time",
        "-v",
        str(Path(sys.executable).parent / "slimformer"),
        "prune",
        str(folder),
        "--data",
        str(WIKITEXT / "validation.txt"),
        "--eval-data",
        str(WIKITEXT / "test.txt"),
        "--heads",
        "0.25",
        "--ffn",
        "0.25",
        "--out",
        str(out),
    ]
    if windows is not None:
        command[-2:-2] = ["--calibration-samples", str(windows), "--eval-samples", str(windows)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    report = json.loads((out / "compression_report.json").read_text())
    shutil.rmtree(out)
    execution = report["execution"]
    evaluation = report["evaluation"]
    calibration = report["data"]["calibration_protocol"]
    return {
        "command": " ".join(command[2:]),
        "peak_rss_bytes": peak_kb * 1024,
        "seconds": seconds,
        "path": execution["path"],
        "why_in_memory": execution.get("why_in_memory"),
        "estimated_peak_bytes": execution["estimated_peak_bytes"],
        "measured_peak_bytes": execution["measured_peak_bytes"],
        "estimate": execution.get("estimate"),
        "calibration_windows": calibration["windows"],
        "eval_windows": evaluation["protocol"]["windows"],
        "window_tokens": calibration["seq_len"],
        "perplexity": {
            "original": evaluation["original"]["metrics"]["perplexity"],
            "compressed": evaluation["compressed"]["metrics"]["perplexity"],
        },
        "parameters_before": evaluation["original"]["parameters"],
        "parameters_after": evaluation["compressed"]["parameters"],
        "timings": report.get("seconds"),
        # layer by layer: latency and generations on the whole models, one at a time, where one
        # fits within the job's estimate
        "whole_model": execution.get("whole_model"),
        "latency_speedup": evaluation["ratios"].get("latency_speedup"),
        "throughput_speedup": evaluation["ratios"].get("throughput_speedup"),
    }


def row_of(run: dict) -> list[str]:
    rss, est = run["peak_rss_bytes"] / GIB, run["estimated_peak_bytes"] / GIB
    ppl = run["perplexity"]
    ratio = ppl["compressed"] / ppl["original"]
    if run["random"]:
        quality = f"{ppl['original']:,.0f} → {ppl['compressed']:,.0f} †"
    else:
        quality = f"{ppl['original']:.2f} → {ppl['compressed']:.2f} (×{ratio:.2f})"
    goal = GOALS_GIB.get(run["name"])
    if goal is None:
        goal_text = "—"
    else:
        met = rss <= goal and (run["random"] or round(ratio, 2) <= GOAL_PPL_RATIO)
        goal_text = f"≤ {goal:g} GiB" + ("" if run["random"] else f", ≤ ×{GOAL_PPL_RATIO}")
        goal_text += " met" if met else " missed"
    cal_tokens = run["calibration_windows"] * run["window_tokens"]
    per = run["seconds"] / (run["parameters"] / 1e9) / (cal_tokens / 1000)
    name = run["name"]
    if run.get("layers") and run["layers"] < run["all_layers"]:
        name += f" ({run['layers']} of {run['all_layers']} layers)"
    speedup = run.get("latency_speedup")
    whole = run.get("whole_model") or {}
    if speedup:
        latency = f"×{speedup:.2f} / ×{run['throughput_speedup']:.2f}"
    else:
        latency = "not measured" + (" (no room)" if whole and not whole.get("loaded") else "")
    return [
        name,
        f"{run['parameters'] / 1e6:,.0f}M",
        run["dtype"],
        f"{run['calibration_windows']}/{run['eval_windows']} × {run['window_tokens']}",
        run["path"],
        f"{rss:.2f}",
        f"{est:.2f}",
        f"{est / rss:.2f}",
        f"{run['seconds'] / 60:.1f}",
        f"{per:,.0f}",
        quality,
        latency,
        goal_text,
    ]


def model_parameters(run: dict) -> int:
    """The whole model's parameters: a run on the first N layers of a shape (``--layers``) is
    plotted where the whole shape lies."""
    if run.get("shape") and run.get("layers") and run["layers"] < run["all_layers"]:
        return sum(math.prod(size) for _, size in tensors_of(SHAPES[run["shape"]]))
    return run["parameters"]


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    kinds = ((False, "o", "k", "SmolLM2-135M (real, float32)"), (True, "s", None, ""))
    for random, marker, color, label in kinds:
        chosen = [r for r in runs if r["random"] == random]
        if not chosen:
            continue
        x = [model_parameters(r) / 1e9 for r in chosen]
        suffix = f" — {label}" if label else " — random bf16 checkpoints"
        ax.plot(
            x,
            [r["peak_rss_bytes"] / GIB for r in chosen],
            marker,
            color=color or "C0",
            ms=8 if not random else 6,
            zorder=3,
            ls="-" if random else "",
            label="measured peak RSS" + suffix,
        )
        ax.plot(
            x,
            [r["estimated_peak_bytes"] / GIB for r in chosen],
            marker,
            color=color or "C1",
            ms=8 if not random else 6,
            zorder=3,
            ls="--" if random else "",
            mfc="none",
            label="estimate (config.json)" + suffix,
        )
    goals = [
        (model_parameters(r) / 1e9, GOALS_GIB[r["name"]]) for r in runs if r["name"] in GOALS_GIB
    ]
    if goals:
        ax.scatter(
            [g[0] for g in goals],
            [g[1] for g in goals],
            marker="_",
            s=400,
            color="C3",
            zorder=2,
            label="goal",
        )
    ax.set_xscale("log")
    ticks = sorted({model_parameters(r) / 1e9 for r in runs})
    ax.set_xticks(ticks, [f"{t * 1e3:.0f}M" if t < 1 else f"{t:.2f}B" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(
        "parameters of the whole model (log scale; 3b and 8b: peak of their first layers)"
    )
    ax.set_ylabel("GiB")
    top = max(max(r["peak_rss_bytes"], r["estimated_peak_bytes"]) for r in runs) / GIB
    ax.set_ylim(0, max([top] + [g[1] for g in goals]) * 1.15)
    ax.set_title("slimformer prune --heads 0.25 --ffn 0.25: peak memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="135m,0.5b,1b,3b", help=f"from {','.join(SHAPES)}")
    parser.add_argument(
        "--windows",
        type=int,
        default=8,
        help="calibration and evaluation windows "
        "of the random checkpoints (the SmolLM2 fixture runs the defaults)",
    )
    parser.add_argument("--no-fixture", action="store_true", help="skip the real SmolLM2-135M row")
    parser.add_argument(
        "--layers",
        type=int,
        default=None,
        help="write only the first N decoder layers of each random shape: the streamed peak is "
        "one layer's work over what stays resident, so it does not depend on the depth (the "
        "minutes and parameters are then those of the N layers)",
    )
    parser.add_argument(
        "--skip-after",
        type=float,
        default=None,
        help="skip the remaining shapes once the run has taken this many minutes",
    )
    parser.add_argument("--tmp", default="/tmp", help="where the random checkpoints are written")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--render",
        metavar="JSON",
        nargs="+",
        help="only rebuild the table, md and png from saved json files (their rows in order)",
    )
    args = parser.parse_args()
    if args.render:
        save(merge([json.loads(Path(p).read_text()) for p in args.render]), Path(args.out))
        return
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        sys.exit(f"llm_memory: unknown sizes {unknown}; from {','.join(SHAPES)}")
    if not MAKE_SMOLLM2.exists() or not (WIKITEXT / "test.txt").exists():
        sys.exit(f"llm_memory: needs {MAKE_SMOLLM2} and {WIKITEXT} (../shared next to the repo)")
    fixture = Path(
        subprocess.run(
            [str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    results: dict = {"environment": environment(), "runs": [], "skipped": []}
    runs: list[dict] = results["runs"]
    begin = time.perf_counter()
    jobs = ([] if args.no_fixture else [("smollm2-135m", None)]) + [(s, s) for s in sizes]
    for name, shape in jobs:
        elapsed = (time.perf_counter() - begin) / 60
        if args.skip_after is not None and elapsed > args.skip_after:
            print(
                f"{name}: skipped, {elapsed:.1f} min > --skip-after {args.skip_after:g}", flush=True
            )
            results["skipped"].append(name)
            continue
        with tempfile.TemporaryDirectory(prefix="llm-memory-", dir=args.tmp) as tmp:
            work = Path(tmp)
            if shape is None:
                folder, dtype, windows = fixture, "float32", None
                parameters = None
            else:
                folder, dtype, windows = work / shape, "bf16", args.windows
                start = time.perf_counter()
                sizes_of = dict(SHAPES[shape])
                if args.layers:
                    sizes_of["num_hidden_layers"] = min(args.layers, sizes_of["num_hidden_layers"])
                parameters = write_random_checkpoint(folder, sizes_of)
                print(
                    f"{name}: wrote {parameters:,} parameters in "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )
            run = run_job(folder, windows, work / "out")
        run = {
            "name": name,
            "shape": shape,
            "random": shape is not None,
            "dtype": dtype,
            "parameters": parameters or run["parameters_before"],
            "layers": None if shape is None else sizes_of["num_hidden_layers"],
            "all_layers": None if shape is None else SHAPES[shape]["num_hidden_layers"],
        } | run
        runs.append(run)
        print(f"{name}: " + "  ".join(row_of(run)), flush=True)
    results["total_seconds"] = time.perf_counter() - begin
    save(results, Path(args.out))


def merge(parts: list[dict]) -> dict:
    """Saved runs as one: rows in order, every command, the total of their times."""
    if len(parts) == 1:
        return parts[0]
    runs = [run for part in parts for run in part["runs"]]
    done = {run["name"] for run in runs}
    skipped = [n for part in parts for n in part["skipped"] if n not in done]
    environment = parts[0]["environment"] | {
        "command": "; ".join(part["environment"]["command"] for part in parts)
    }
    return {
        "environment": environment,
        "parts": [part["environment"] for part in parts],
        "runs": runs,
        "skipped": list(dict.fromkeys(skipped)),
        "total_seconds": sum(part["total_seconds"] for part in parts),
    }


def save(results: dict, out: Path) -> None:
    """Print the table; write llm_memory.json, .md and .png under ``out``."""
    runs = results["runs"]
    table = table_of(runs, results["skipped"])
    print(render_text(table))
    print(f"total {results['total_seconds'] / 60:.1f} min")
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_memory.json").write_text(json.dumps(results, indent=1) + "\n")
    env = results["environment"]
    (out / "llm_memory.md").write_text(
        render_markdown(table)
        + f"\n\n`{env['command']}`, {env['date']}, {results['total_seconds'] / 60:.0f} minutes"
        f" in all, {env['cpu_count']} cores, torch {env['torch']}.\n"
    )
    plot(runs, out / "llm_memory.png")


def table_of(runs: list[dict], skipped: list[str] = ()) -> Table:
    notes = [
        "peak RSS of the whole command (/usr/bin/time -v); estimate: the report's "
        "execution.estimated_peak_bytes (from config.json, before any weight is read); "
        "GiB = 2**30 bytes",
        "wall seconds per billion parameters per 1,000 calibration tokens: s/B/1k",
        "† random weights: the perplexity is meaningless (only the SmolLM2 row measures quality)",
        "latency / throughput: speed-ups at batch 1 and batch 32 (128 tokens), measured on the "
        "written folder and the original loaded whole one at a time, where one fits within the "
        "job's estimate (execution.whole_model); peak RSS includes that phase",
    ]
    if skipped:
        notes.append(f"not run (--skip-after: the rows above took longer): {', '.join(skipped)}")
    return Table(
        title="Peak memory of `slimformer prune --heads 0.25 --ffn 0.25` (CLI defaults)",
        headers=[
            "model",
            "parameters",
            "dtype",
            "windows cal/eval × tokens",
            "path",
            "peak RSS GiB",
            "estimate GiB",
            "est/meas",
            "min",
            "s/B/1k",
            "perplexity",
            "latency / throughput",
            "goal",
        ],
        rows=[row_of(r) for r in runs],
        notes=notes,
    )


if __name__ == "__main__":
    main()
