"""What one layer's work costs in memory when a causal LM is pruned layer by layer.

1. The solve: extra float64 copies (peak RSS above the damped Gram matrix itself, in copies of it)
   and seconds of ``torch.linalg.inv`` (what the OBS scores used before), an in-place Cholesky
   factor and inverse, and the diagonal of the inverse from triangular solves (what
   ``slimformer.importance.obs`` uses now), on an ``n``-wide symmetric positive definite matrix.
2. The heap: RSS after each layer of a streamed scoring pass is freed, on the first layers of a
   random checkpoint in a real shape, with glibc's default allocator settings and with the mmap
   threshold ``slimformer.streaming.model`` sets.

Each measurement runs in a fresh process (its peak RSS is its own).

    python bench/layer_solve.py                 # n = 6000; the 1B shape's first 5 layers
    python bench/layer_solve.py --n 8193 --shape 8b --layers 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from checkpoints import SHAPES, write_random_checkpoint
from tables import Table, render_text

SOLVE = r"""
import json, resource, sys, time, torch
n, mode = int(sys.argv[1]), sys.argv[2]
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
a = torch.full((n, n), 0.5, dtype=torch.float64)
a.diagonal().add_(n)  # built in place: the only n x n matrix before the solve
base, start = peak(), time.perf_counter()
if mode == "inv":
    torch.linalg.inv(a)
else:
    f = a.mT  # column-major view of the symmetric matrix: LAPACK factors it in place
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(f, out=(f, info))
    if mode == "cholesky_inverse":
        torch.cholesky_inverse(f, out=f)
    else:  # the inverse's diagonal, 512 columns at a time
        d = torch.empty(n, dtype=torch.float64)
        for s in range(0, n, 512):
            e = torch.zeros(n, min(512, n - s), dtype=torch.float64)
            e[s : s + 512].diagonal().fill_(1)
            d[s : s + 512] = torch.linalg.solve_triangular(f, e, upper=False).square().sum(0)
print(json.dumps({"copies": (peak() - base) / (8 * n * n), "seconds": time.perf_counter() - start}))
"""

HEAP = r"""
import json, sys, torch
from slimformer.streaming import model as streamed
from slimformer.streaming.prune import _layer_grams
from slimformer.streaming.states import HiddenStates
from slimformer.importance.obs import obs_layer_scores
if sys.argv[2] == "glibc default":
    streamed.give_freed_memory_back = lambda: None
def rss():
    lines = open("/proc/self/status").read().splitlines()
    return next(int(l.split()[1]) * 1024 for l in lines if l.startswith("VmRSS"))
sm = streamed.StreamedModel(sys.argv[1])
torch.manual_seed(0)
ones = torch.ones(1, 512, dtype=torch.long)
batches = [{"input_ids": torch.randint(0, 49000, (1, 512)), "attention_mask": ones} for _ in "ab"]
hidden = HiddenStates(sm.embed(b) for b in batches)
after = []
for i in range(sm.num_layers):
    sm.load_layer(i)
    grams = _layer_grams(sm, i, hidden, batches)
    obs_layer_scores(sm.adapter, i, grams[(i, "attention")], grams.get((i, "mlp")))
    del grams
    sm.free_layer(i)
    after.append(rss())
print(json.dumps(after))
"""


def run(code: str, *args: str) -> object:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=6000, help="width of the Gram matrix")
    parser.add_argument("--shape", default="1b", help=f"from {','.join(SHAPES)}")
    parser.add_argument("--layers", type=int, default=5, help="layers of the shape written")
    args = parser.parse_args()
    solve = Table(
        f"The solve of a {args.n:,}-wide float64 Gram matrix ({8 * args.n**2 / 1e6:,.0f} MB)",
        ["method", "extra copies", "seconds"],
        [],
    )
    for mode in ("inv", "cholesky_inverse", "diagonal_by_triangular_solves"):
        got = run(SOLVE, str(args.n), mode)
        solve.rows.append([mode, f"{got['copies']:.2f}", f"{got['seconds']:.1f}"])
    print(render_text(solve), flush=True)
    with tempfile.TemporaryDirectory(prefix="layer-solve-") as tmp:
        folder = Path(tmp) / args.shape
        sizes = dict(SHAPES[args.shape], num_hidden_layers=args.layers)
        write_random_checkpoint(folder, sizes)
        heap = Table(
            f"RSS (MB) after each freed layer, {args.shape} shape, 2 windows of 512 tokens",
            ["allocator", *[f"layer {i}" for i in range(args.layers)]],
            [],
        )
        for setting in ("glibc default", "mmap threshold 1 MiB"):
            after = run(HEAP, str(folder), setting)
            heap.rows.append([setting, *[f"{b / 2**20:,.0f}" for b in after]])
    print(render_text(heap))


if __name__ == "__main__":
    main()
