"""Peak memory and time of ``export.quantize`` on models of real shapes: each method quantizes a
random-weight bf16 checkpoint (``bench/checkpoints.py``) block by block in the gptq engine, with
the defaults the job uses (gptq-int4: group 32, clipping search, dampening 0.01; w8a8: smoothing
0.5), and the quantizer's own peak (VmHWM) is printed beside the estimate a job states before work
(``slimformer.memory.estimate.quantizer_bytes``) and the checkpoint's size.

    python bench/quantize_memory.py --shapes 135m,1b --windows 8 --tokens 256

Random weights quantize as fast as real ones; their perplexity means nothing (bench/serving.py
measures quality on SmolLM2). Needs the gptq engine (``make engines``) and SmolLM2's tokenizer
(``../shared/models/make-smollm2``). Writes ``quantize_memory.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from checkpoints import SHAPES, write_random_checkpoint  # noqa: E402
from tables import ROOT, Table, render_markdown, render_text  # noqa: E402

from slimformer.engines.quantize import GPTQ_CLIP_NORM, write_quantized  # noqa: E402
from slimformer.memory.estimate import GIB, ModelShape, quantizer_bytes  # noqa: E402


def run(
    shape: str, methods: list[str], windows: int, tokens: int, clip_norm: float, tmp: Path
) -> list[dict]:
    folder = tmp / f"random-{shape}"
    params = write_random_checkpoint(folder, shape)
    config = json.loads((folder / "config.json").read_text())
    model_shape = ModelShape.from_config(config)
    vocab = config["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    calibration = torch.randint(3, vocab, (windows, tokens), generator=gen).tolist()
    file_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    rows = []
    for method in methods:
        job = {
            "quantize": [method],
            "dtype_bytes": 2,
            "calibration_windows": windows,
            "window_tokens": tokens,
        }
        target = tmp / f"{shape}-{method}"
        written = write_quantized(
            folder,
            target,
            method,
            calibration,
            probe=[w[:64] for w in calibration[:2]],
            causal=True,
            blocks="model.layers",
            clip_norm=clip_norm,
        )
        size = sum(p.stat().st_size for p in target.glob("*.safetensors"))
        rows.append(
            {
                "shape": shape,
                "parameters": params,
                "method": method,
                "checkpoint_gib": file_bytes / GIB,
                "written_gib": size / GIB,
                "shards": len(list(target.glob("*.safetensors"))),
                "peak_gib": written["peak_rss_bytes"] / GIB,
                "estimate_gib": quantizer_bytes(model_shape, job) / GIB,
                "seconds": written["seconds"],
                "clip_norm": clip_norm if method == "gptq-int4" else None,
            }
        )
        shutil.rmtree(target)
        print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(folder)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="135m,1b", help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--methods", default="gptq-int4,w8a8")
    parser.add_argument("--windows", type=int, default=8, help="calibration windows")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per window")
    parser.add_argument(
        "--clip-norm",
        type=float,
        default=GPTQ_CLIP_NORM,
        help="gptq-int4's clipping search (0: none; it costs time per group, not memory)",
    )
    parser.add_argument("--tmp", default="/tmp", help="where the checkpoints are written")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimformer-qmem-", dir=args.tmp) as tmp:
        for shape in args.shapes.split(","):
            methods = args.methods.split(",")
            rows += run(shape, methods, args.windows, args.tokens, args.clip_norm, Path(tmp))
    table = Table(
        f"export.quantize block by block: the quantizer's peak (VmHWM), {args.windows} "
        f"calibration windows of {args.tokens} tokens, random bf16 checkpoints",
        [
            "shape",
            "method",
            "checkpoint GiB",
            "written GiB",
            "shards",
            "peak GiB",
            "estimate GiB",
            "s",
        ],
        [
            [
                r["shape"],
                r["method"] + (" (no clipping search)" if r["clip_norm"] == 0 else ""),
                f"{r['checkpoint_gib']:.2f}",
                f"{r['written_gib']:.2f}",
                str(r["shards"]),
                f"{r['peak_gib']:.2f}",
                f"{r['estimate_gib']:.2f}",
                f"{r['seconds']:.0f}",
            ]
            for r in rows
        ],
    )
    print(render_text(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize_memory.json").write_text(
        json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n"
    )
    (out / "quantize_memory.md").write_text(render_markdown(table) + "\n")


if __name__ == "__main__":
    main()
