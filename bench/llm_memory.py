"""Peak memory of the default LLM pruning job as the model grows: SmolLM2-135M, 0.5B and 1B Llamas.

Each row is one ``slimformer prune`` command, run as a user runs it (``--heads 0.25 --ffn 0.25``,
the causal-LM defaults: OBS importance with reconstruction, adaptive ranking), in a process of its
own under ``/usr/bin/time -v`` (peak RSS of the whole command: loading, the original's copy kept for
the side-by-side evaluation, scoring, pruning, evaluating both models, saving). Models with random
weights in the shapes of SmolLM2-135M, Qwen2.5-0.5B (as a Llama) and TinyLlama-1.1B, all with
SmolLM2's 49k tokenizer so that the same WikiText-2 text feeds them; weights in float32.

Calibration and evaluation stream (no batch x sequence x vocabulary logits; statistics summed per
batch), so the peak does not grow with the number of windows: ``--windows`` (default 8) sets both;
``--compare-windows`` also runs the 135M row at 32 windows, the job's default, to show it.

Prints a table and writes ``llm_memory.json`` and ``llm_memory.md`` under ``--out``.

    python bench/llm_memory.py [--sizes 135m,0.5b,1b] [--windows 8] [--method obs]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tables import ROOT, SHARED, Table, environment, render_markdown, render_text

WIKITEXT = SHARED / "data" / "wikitext2"
MAKE_SMOLLM2 = SHARED / "models" / "make-smollm2"
SHAPES = {
    "135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=False,
    ),
}


def build(size: str, tokenizer_folder: Path, out: Path) -> int:
    """A random-weight Llama of ``size`` with SmolLM2's tokenizer, saved to ``out``; its
    parameter count."""
    code = f"""
import torch, transformers
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=49152, max_position_embeddings=2048,
    rms_norm_eps=1e-5, **{SHAPES[size]!r})
model = transformers.LlamaForCausalLM(config)
model.save_pretrained({str(out)!r})
transformers.AutoTokenizer.from_pretrained({str(tokenizer_folder)!r}).save_pretrained({str(out)!r})
print(sum(p.numel() for p in model.parameters()))
"""
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1])


def run_job(folder: Path, windows: int, method: str, work: Path) -> dict:
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
        "--importance",
        method,
        "--calibration-samples",
        str(windows),
        "--eval-samples",
        str(windows),
        "--no-latency",
        "--out",
        str(work / "out"),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    report = json.loads((work / "out" / "compression_report.json").read_text())
    shutil.rmtree(work / "out")
    return {
        "peak_rss_gb": peak_kb / 1024**2,
        "seconds": seconds,
        "timings": report.get("seconds"),
        "perplexity": report["evaluation"]["compressed"]["metrics"].get("perplexity"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="135m,0.5b,1b")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--method", default="obs", help="prune.importance (default: obs)")
    parser.add_argument("--compare-windows", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not MAKE_SMOLLM2.exists() or not (WIKITEXT / "test.txt").exists():
        sys.exit(f"llm_memory: needs {MAKE_SMOLLM2} and {WIKITEXT} (../shared next to the repo)")
    tokenizer = Path(
        subprocess.run(
            [str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    rows, results = [], {"environment": environment(), "method": args.method, "runs": []}
    runs = [(size, args.windows) for size in args.sizes.split(",")]
    if args.compare_windows:
        runs.append(("135m", 32))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        built: dict[str, int] = {}
        for size, windows in runs:
            folder = work / size
            if size not in built:
                built[size] = build(size, tokenizer, folder)
            result = run_job(folder, windows, args.method, work) | {
                "size": size,
                "parameters": built[size],
                "weights_gb": built[size] * 4 / 1024**3,
                "windows": windows,
            }
            results["runs"].append(result)
            print(f"{size} x{windows}: {result}", flush=True)
            rows.append(
                [
                    size,
                    f"{built[size] / 1e6:,.0f}M",
                    f"{result['weights_gb']:.2f}",
                    str(windows),
                    f"{result['peak_rss_gb']:.2f}",
                    f"{result['peak_rss_gb'] / result['weights_gb']:.1f}",
                    f"{result['seconds'] / 60:.1f}",
                ]
            )
    table = Table(
        title=f"Peak memory of `slimformer prune --heads 0.25 --ffn 0.25` ({args.method}), float32",
        headers=["model", "parameters", "weights GB", "windows", "peak RSS GB", "× weights", "min"],
        rows=rows,
        notes=[
            "peak RSS of the whole command (/usr/bin/time -v); random weights in each shape",
            "the command holds the model and the original's copy for the side-by-side evaluation",
        ],
    )
    print(render_text(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_memory.json").write_text(json.dumps(results, indent=1))
    (out / "llm_memory.md").write_text(render_markdown(table) + "\n")


if __name__ == "__main__":
    main()
