"""Decoder-LLM pruning on SmolLM2-135M: our methods against the papers' baselines, width and depth.

On the SmolLM2-135M-Instruct fixture (``../shared/models/make-smollm2``; Llama, 30 layers, 9 query /
3 KV heads, FFN 1536, tied 49k vocabulary), calibrated on ``wikitext2/validation.txt`` (the job's
seeded document order, 512-token windows) and evaluated on the first ``--eval-windows`` 512-token
windows of ``wikitext2/test.txt``:

1. **width**: perplexity and next-token accuracy after removing 10, 20, 30 and 50% of the
   non-embedding parameters (the same fraction of KV groups and of FFN neurons), for
   * ours, as a user gets them (``prune.importance`` with the causal-LM defaults: adaptive ranking,
     first and last layer kept): ``obs`` (the default, with least-squares reconstruction),
     ``activations``, ``flap``, ``michel``; and ``reconstruction`` (activations' choice of units
     with the least-squares refit: what the refit alone is worth, run with ``--methods``);
   * baselines written here from their papers: ``magnitude`` (L2 norms of each head's and neuron's
     weights, the same share per layer), ``wanda-sp`` (FLAP paper's structured Wanda:
     ``sum_i |W_ij| * ||X_j||`` over a unit's output-projection columns, the same share per layer),
     ``llm-pruner`` (LLM-Pruner's element-wise first-order Taylor ``sum |w * dL/dw|`` over every
     weight of the unit's coupled group, the same share per layer, first and last layer kept, as
     the paper skips the ends), ``flap-paper`` (FLAP: fluctuation metric, standardised scores
     ranked across all layers, bias compensation, no layer kept);
2. **depth**: 10, 20 and 30% of the layers (3, 6, 9 of 30) dropped by block influence (ShortGPT,
   the paper's metric) and by the loss increase when the layer is skipped (``metric_drop``);
3. **recovery**: ``method: prune_distill`` through ``slimformer.pipeline.run`` with the defaults
   (30% heads + 30% FFN, KL distillation from the original for ``--recovery-minutes``), then the
   saved folder reloaded by transformers alone in a fresh process and measured on the same windows.

Each method runs in a child process of its own, so its wall time and peak RSS (``ru_maxrss``) are
its own: scoring once, then every ratio pruned from a fresh copy and evaluated.

Prints the tables and writes ``llm_pruning.json``, ``llm_pruning.md`` and ``llm_pruning.png`` under
``--out`` (default ``bench/results``).

    python bench/llm_pruning.py [--quick] [--eval-windows 16] [--recovery-minutes 30]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tables import ROOT, SHARED, Table, environment, render_markdown, render_text

WIKITEXT = SHARED / "data" / "wikitext2"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"  # another domain than WikiText
MAKE_SMOLLM2 = SHARED / "models" / "make-smollm2"
WIDTH = (0.1, 0.2, 0.3, 0.5)
DEPTH = (0.1, 0.2, 0.3)
SEED = 0
OURS = ("obs", "activations", "flap", "michel")
BASELINES = ("magnitude", "wanda-sp", "llm-pruner", "flap-paper")
DEPTH_METHODS = ("shortgpt", "metric_drop")
TAYLOR_WINDOWS = 8  # LLM-Pruner scores on 10 samples; 8 windows of 512 tokens here

logger = logging.getLogger("llm_pruning")


def fixture() -> Path:
    """The SmolLM2 folder (built on first use), or exit saying what is missing."""
    missing = [p for p in (MAKE_SMOLLM2, WIKITEXT / "validation.txt", WIKITEXT / "test.txt")]
    missing = [p for p in missing if not p.exists()]
    if missing:
        sys.exit(
            "llm_pruning: reads the SmolLM2 builder and WikiText-2 from ../shared, missing:\n  "
            + "\n  ".join(map(str, missing))
        )
    out = subprocess.run(
        [str(MAKE_SMOLLM2), sys.executable], check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, tokenizer


def windows(tokenizer, split: str, count: int, shuffled: bool):
    """Packed 512-token windows of a WikiText-2 split: the job's calibration (documents in the
    seeded order) or the first windows of the test text."""
    from slimformer.recipe.job_data import seeded_order
    from slimformer.text import pack_texts, read_documents

    docs = read_documents(WIKITEXT / f"{split}.txt")
    if shuffled:
        docs = [docs[i] for i in seeded_order(len(docs), SEED)]
    return pack_texts(tokenizer, docs, max_windows=count, source=f"wikitext2/{split}.txt")


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for p in model.model.layers.parameters())


def measure(model, batches) -> dict:
    from slimformer.evaluation import score_next_tokens

    start = time.perf_counter()
    scores = score_next_tokens(model, batches)
    return {
        "perplexity": scores.perplexity,
        "accuracy": scores.accuracy,
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


# --- baselines, from their papers -----------------------------------------------------------


def _per_head(rows: torch.Tensor, heads: int) -> torch.Tensor:
    return rows.reshape(heads, -1).sum(1)


def wanda_sp(model, batches):
    """Structured Wanda (FLAP paper, Sec. 5): a unit's score is ``sum_i |W_ij| * ||X_j||_2`` over
    its output-projection columns ``j``, with ``||X_j||`` over the calibration tokens."""
    from slimformer.architectures import ModelAdapter
    from slimformer.importance import Importance
    from slimformer.importance.base import RealTokens, calibration_pass, mlp_nan

    adapter = ModelAdapter(model)
    sizes = adapter.all_sizes()
    tokens = RealTokens()
    squares = {}
    handles = []
    for i in range(adapter.num_layers):
        for part in ("attention", "mlp"):
            module = adapter.output_projection(i, part)
            squares[(i, part)] = torch.zeros(module.weight.shape[1], dtype=torch.float64)

            def hook(m, a, key=(i, part)):
                squares[key] += tokens.select(a[0]).double().pow(2).sum(0)

            handles.append(module.register_forward_pre_hook(hook))
    for _ in calibration_pass(model, batches, what="wanda-sp", tokens=tokens):
        pass
    for h in handles:
        h.remove()
    heads, neurons = [], []
    for i, s in enumerate(sizes):
        att = adapter.output_weight(i, "attention").abs().sum(0) * squares[(i, "attention")].sqrt()
        heads.append(_per_head(att.float(), s.heads))
        mlp = adapter.output_weight(i, "mlp").abs().sum(0) * squares[(i, "mlp")].sqrt()
        neurons.append(mlp.float())
    mlps = torch.stack([n.sum() for n in neurons]) + mlp_nan(sizes)
    return Importance(heads, neurons, mlps, method="wanda-sp")


def llm_pruner_taylor(model, batches):
    """LLM-Pruner's element-wise first-order Taylor importance: ``|w * dL/dw|`` summed over every
    weight of a unit's coupled group (a query head: its q rows, its share of its KV head's k and v
    rows, its o columns; a neuron: its gate and up rows and its down column), the gradient of the
    next-token loss summed over the calibration windows."""
    from slimformer.architectures import ModelAdapter
    from slimformer.importance import Importance
    from slimformer.importance.base import mlp_nan
    from slimformer.text import next_token_loss

    model.zero_grad(set_to_none=True)
    for batch in batches:
        next_token_loss(model, batch).backward()
    adapter = ModelAdapter(model)
    heads, neurons = [], []
    for i, layer in enumerate(adapter.layers):
        s = adapter.sizes(i)
        attn, mlp = layer.self_attn, layer.mlp

        def salience(module):
            return (module.weight * module.weight.grad).abs().double()

        group = s.heads // s.kv_heads
        kv = _per_head(salience(attn.k_proj).sum(1), s.kv_heads)
        kv = kv + _per_head(salience(attn.v_proj).sum(1), s.kv_heads)
        head = _per_head(salience(attn.q_proj).sum(1), s.heads)
        head = head + _per_head(salience(attn.o_proj).sum(0), s.heads)
        heads.append((head + kv.repeat_interleave(group) / group).float())
        neuron = salience(mlp.gate_proj).sum(1) + salience(mlp.up_proj).sum(1)
        neurons.append((neuron + salience(mlp.down_proj).sum(0)).float())
    model.zero_grad(set_to_none=True)
    sizes = adapter.all_sizes()
    mlps = torch.stack([n.sum() for n in neurons]) + mlp_nan(sizes)
    return Importance(heads, neurons, mlps, method="llm-pruner")


# --- one method in a child process ----------------------------------------------------------


def width_settings(method: str) -> dict:
    """The scoring method and the :class:`PruningTarget` fields of each width method."""
    ours = {"ranking": "adaptive", "keep_first_layers": 1, "keep_last_layers": 1}
    uniform = {"ranking": "per_layer", "keep_first_layers": 0, "keep_last_layers": 0}
    return {
        "obs": {"score": "obs", "target": ours},
        "activations": {"score": "activations", "target": ours},
        "reconstruction": {"score": "activations", "target": ours, "reconstruct": True},
        "flap": {"score": "flap", "target": ours},
        "michel": {"score": "michel", "target": ours},
        "magnitude": {"score": "magnitude", "target": uniform},
        "wanda-sp": {"score": "wanda-sp", "target": uniform},
        "llm-pruner": {
            "score": "llm-pruner",
            "target": uniform | {"keep_first_layers": 1, "keep_last_layers": 1},
        },
        "flap-paper": {
            "score": "flap",
            "target": {"ranking": "adaptive", "keep_first_layers": 0, "keep_last_layers": 0},
        },
    }[method]


def run_width(method: str, folder: Path, args) -> dict:
    from slimformer.importance import score_importance
    from slimformer.importance.grams import input_grams
    from slimformer.pruning import PruningTarget, plan_pruning, remove_units

    torch.manual_seed(SEED)
    model, tokenizer = load(folder)
    calibration = windows(tokenizer, "validation", args.calibration_windows, shuffled=True)
    test = windows(tokenizer, "test", args.eval_windows, shuffled=False).batches(4)
    settings = width_settings(method)
    start = time.perf_counter()
    if settings["score"] == "wanda-sp":
        importance = wanda_sp(model, calibration.batches(4))
    elif settings["score"] == "llm-pruner":
        importance = llm_pruner_taylor(model, calibration.head(TAYLOR_WINDOWS).batches(1))
    else:
        batches = calibration.batches(1 if settings["score"] == "michel" else 4)
        importance = score_importance(model, batches, method=settings["score"])
    scoring = time.perf_counter() - start
    scoring_peak = peak_mb()
    before = non_embedding_parameters(model)
    rows = []
    for ratio in args.width:
        target = PruningTarget(heads=ratio, ffn=ratio, **settings["target"])
        start = time.perf_counter()
        plan = plan_pruning(model, importance, target)
        pruned = copy.deepcopy(model)
        if settings.get("reconstruct"):
            keys = [(i, "attention") for i, h in plan.heads.items() if h]
            keys += [(i, "mlp") for i, n in plan.neurons.items() if n]
            plan.grams = input_grams(model, calibration.batches(4), keys)
        remove_units(pruned, plan)
        seconds = time.perf_counter() - start
        row = {
            "ratio": ratio,
            "removed": 1 - non_embedding_parameters(pruned) / before,
            "prune_seconds": round(seconds, 1),
        }
        row |= measure(pruned, test)
        logger.info("%s %.0f%%: %s", method, 100 * ratio, row)
        rows.append(row)
        del pruned, plan
    return {
        "method": method,
        "kind": "width",
        "scoring_seconds": round(scoring, 1),
        "scoring_peak_mb": round(scoring_peak),
        "peak_mb": round(peak_mb()),
        "rows": rows,
    }


def run_depth(method: str, folder: Path, args) -> dict:
    from slimformer.importance import score_depth
    from slimformer.pruning import drop_layers, plan_depth

    model, tokenizer = load(folder)
    calibration = windows(tokenizer, "validation", args.calibration_windows, shuffled=True)
    test = windows(tokenizer, "test", args.eval_windows, shuffled=False).batches(4)
    start = time.perf_counter()
    name = "block_influence" if method == "shortgpt" else method
    scores = score_depth(model, calibration.batches(4), method=name)
    scoring = time.perf_counter() - start
    scoring_peak = peak_mb()
    before = non_embedding_parameters(model)
    rows = []
    for ratio in args.depth:
        pruned = copy.deepcopy(model)
        # ShortGPT may drop any layer; ours keeps the first and last (the causal-LM default)
        keep = 0 if method == "shortgpt" else 1
        drop = plan_depth(scores, ratio, keep_first_layers=keep, keep_last_layers=keep)
        drop_layers(pruned, drop)
        row = {
            "ratio": ratio,
            "removed": 1 - non_embedding_parameters(pruned) / before,
            "layers": drop,
        }
        row |= measure(pruned, test)
        logger.info("%s %.0f%%: %s", method, 100 * ratio, row)
        rows.append(row)
        del pruned
    return {
        "method": method,
        "kind": "depth",
        "scoring_seconds": round(scoring, 1),
        "scoring_peak_mb": round(scoring_peak),
        "peak_mb": round(peak_mb()),
        "rows": rows,
    }


def run_original(folder: Path, args) -> dict:
    model, tokenizer = load(folder)
    test = windows(tokenizer, "test", args.eval_windows, shuffled=False)
    out = {"method": "original", "kind": "original", "protocol": test.protocol()}
    out |= measure(model, test.batches(4))
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["non_embedding_parameters"] = non_embedding_parameters(model)
    out["peak_mb"] = round(peak_mb())
    return out


def run_recovery(folder: Path, args) -> dict:
    """``prune_distill`` with the defaults through the pipeline, then the saved folder measured by
    transformers alone in a fresh process."""
    from slimformer.pipeline import run as run_pipeline
    from slimformer.spec import JobSpec

    work = Path(tempfile.mkdtemp(prefix="llm-recovery-"))
    targets = [int(t) for t in args.recovery_tokens.split(",") if t]
    budget = {"max_minutes": args.recovery_minutes}
    if targets:
        budget = {"max_steps": _steps_for_tokens(folder, max(targets))}
    spec = {
        "model": {"id": str(folder)},
        "dataset": {
            "path": str(WIKITEXT / "validation.txt"),
            "eval_path": str(WIKITEXT / "test.txt"),
        },
        "prune": {"heads": 0.3, "ffn": 0.3},
        "distill": budget,
        "evaluation": {"latency": False, "max_samples": args.eval_windows},
        "seed": SEED,
    }
    results = {}
    for method in args.recovery_runs.split(","):
        job = JobSpec.model_validate(spec | {"method": method}, context={"local_files": True})
        start = time.perf_counter()
        result = run_pipeline(job, work / method)
        seconds = time.perf_counter() - start
        fresh = subprocess.run(
            [
                sys.executable,
                __file__,
                "--reload",
                str(result.folder),
                "--eval-windows",
                str(args.eval_windows),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        evaluation = result.report["evaluation"]
        other = {
            name: _reload(path, args.eval_windows, SHAKESPEARE)
            for name, path in (("original", folder), ("compressed", result.folder))
        }
        results[method] = {
            "other_domain": other,
            "seconds": round(seconds, 1),
            "card": evaluation["compressed"]["metrics"],
            "card_original": evaluation["original"]["metrics"],
            "fresh_process": json.loads(fresh.stdout.strip().splitlines()[-1]),
            "distillation": (result.report.get("distillation") or {}).get("summary"),
        }
        if targets:
            results[method]["by_tokens"] = _by_tokens(result.report["distillation"], targets)
        logger.info("recovery %s: %s", method, results[method])
    return {"method": "recovery", "kind": "recovery", "runs": results, "peak_mb": round(peak_mb())}


def _reload(folder: Path, eval_windows: int, text: Path) -> dict:
    """:func:`reload_and_measure` in a fresh process, on ``text``."""
    command = [sys.executable, __file__, "--reload", str(folder), "--reload-text", str(text)]
    done = subprocess.run(
        command + ["--eval-windows", str(eval_windows)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _steps_for_tokens(folder: Path, tokens: int) -> int:
    """Optimizer steps that train on about ``tokens`` input tokens: the training rows' mean
    length, cut at the recipe's max_length, times the recipe's batch size."""
    from transformers import AutoTokenizer

    from slimformer.distill.config import DistillConfig
    from slimformer.distill.recipes import TASK_SETTINGS
    from slimformer.text import read_documents

    batch = TASK_SETTINGS["text-generation"]["batch_size"]
    max_length = DistillConfig().max_length
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [t for t in read_documents(WIKITEXT / "validation.txt") if t.strip()]
    lengths = [min(max_length, len(tokenizer(t)["input_ids"])) for t in rows]
    return math.ceil(tokens / (batch * sum(lengths) / len(lengths)))


def _by_tokens(distillation: dict, targets: list[int]) -> list[dict]:
    """The distillation's evaluation nearest each token count: tokens trained on, the held-out
    perplexity and its ratio to the teacher's on the same tokens, minutes."""
    evaluations = [e for e in distillation["evaluations"] if "tokens" in e]
    teacher = distillation["teacher_metric"]
    rows = []
    for target in targets:
        e = min(evaluations, key=lambda x: abs(x["tokens"] - target))
        rows.append(
            {
                "target": target,
                "tokens": e["tokens"],
                "step": e["step"],
                "perplexity": e["metric"],
                "ratio": e["metric"] / teacher if teacher else None,
                "minutes": e["seconds"] / 60,
            }
        )
    return rows


def reload_and_measure(folder: Path, eval_windows: int, text: Path | None = None) -> dict:
    """transformers alone (``trust_remote_code`` for the per-layer layout), no slimformer code;
    on WikiText-2 test, or on ``text`` (another domain: what distillation on WikiText did not
    teach)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=True
    ).eval()
    # the card's protocol: documents are blocks of lines separated by lines that are empty or only
    # whitespace, tokenised without special tokens and joined with EOS
    blocks, current, ids = [], [], []
    for line in (text or WIKITEXT / "test.txt").read_text(encoding="utf-8").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current).strip())
            current = []
    for block in blocks + (["\n".join(current).strip()] if current else []):
        ids += tokenizer(block, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) >= 512 * eval_windows + 1:
            break
    nll, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for w in range(eval_windows):
            x = torch.tensor([ids[512 * w : 512 * (w + 1)]])
            logits = model(input_ids=x).logits[0, :-1]
            target = x[0, 1:]
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            hits += int((logits.argmax(-1) == target).sum())
            count += len(target)
    return {"perplexity": math.exp(nll / count), "accuracy": hits / count, "tokens": count}


# --- the parent: children, tables, plot -----------------------------------------------------


def child(kind: str, method: str, folder: Path, args, work: Path) -> dict:
    out = work / f"{kind}-{method}.json"
    command = [sys.executable, __file__, "--child", kind, method, "--model", str(folder)]
    command += ["--eval-windows", str(args.eval_windows), "--out", str(out)]
    command += ["--calibration-windows", str(args.calibration_windows)]
    command += [
        "--width",
        ",".join(map(str, args.width)),
        "--depth",
        ",".join(map(str, args.depth)),
    ]
    command += ["--recovery-minutes", str(args.recovery_minutes)]
    command += ["--recovery-tokens", args.recovery_tokens]
    command += ["--recovery-runs", args.recovery_runs]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(out.read_text())
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tables(results: dict) -> list[Table]:
    base = results["original"]
    ppl0, protocol = base["perplexity"], base["protocol"]
    kept = base["non_embedding_parameters"] / base["parameters"]
    out = []
    for kind, ratios in (("width", results["width_ratios"]), ("depth", results["depth_ratios"])):
        rows = []
        runs = [r for r in results["methods"] if r["kind"] == kind]
        if not runs:
            continue
        best = {}
        for ratio in ratios:
            values = [row["perplexity"] for r in runs for row in r["rows"] if row["ratio"] == ratio]
            best[ratio] = min(values) if values else None
        for r in runs:
            cells = [
                r["method"]
                + (" (ours)" if r["method"] in OURS + ("reconstruction", "metric_drop") else "")
            ]
            for row in r["rows"]:
                mark = "**" if row["perplexity"] == best[row["ratio"]] else ""
                cells.append(
                    f"{mark}{row['perplexity']:.1f} (×{row['perplexity'] / ppl0:.2f}){mark}"
                    f" / {100 * row['accuracy']:.1f}% [{100 * row['removed']:.0f}%]"
                )
            cells += [
                f"{r['scoring_seconds']:.0f}",
                f"{r['wall_seconds']:.0f}",
                f"{r['peak_mb']:,}",
            ]
            rows.append(cells)
        removed = [f"{100 * ratio:.0f}%" for ratio in ratios]
        out.append(
            Table(
                title=f"SmolLM2-135M, {kind} pruning: WikiText-2 test perplexity (× original) / "
                "next-token accuracy",
                headers=["method", *removed, "scoring s", "wall s", "peak RSS MB"],
                rows=rows,
                notes=[
                    f"original: perplexity {ppl0:.2f}, next-token accuracy "
                    f"{100 * base['accuracy']:.1f}%, {protocol['windows']} windows of "
                    f"{protocol['seq_len']} tokens ({protocol['predicted_tokens']:,} predicted "
                    "tokens)",
                    "column: share of the non-embedding parameters asked for "
                    f"({kept:.2f} times that share of all parameters: the embeddings, "
                    f"{1 - kept:.0%} of the weights, are not pruned); [share removed]"
                    + (
                        ": the same-share-per-layer baselines round each layer's 3 KV groups, so "
                        "they remove more or less than asked"
                        if kind == "width"
                        else ""
                    ),
                    "bold: the best perplexity at that ratio",
                    "wall s: the whole child process (load, scoring, every ratio pruned and "
                    "evaluated); peak RSS of that process",
                ],
            )
        )
    recovery = results.get("recovery")
    if recovery:
        rows = []
        for name, run in recovery["runs"].items():
            fresh, card = run["fresh_process"], run["card"]
            other = run.get("other_domain")
            shifted = "-"
            if other:
                mine, theirs = other["compressed"]["perplexity"], other["original"]["perplexity"]
                shifted = f"{mine:.2f} (×{mine / theirs:.2f})"
            rows.append(
                [
                    name,
                    f"{card['perplexity']:.2f} (×{card['perplexity'] / ppl0:.2f})",
                    f"{fresh['perplexity']:.2f}",
                    shifted,
                    f"{100 * card['next_token_accuracy']:.1f}%",
                    f"{run['seconds'] / 60:.1f}",
                ]
            )
        by_tokens = [
            [
                name,
                f"{row['target']:,}",
                f"{row['tokens']:,}",
                str(row["step"]),
                f"{row['perplexity']:.2f}",
                f"×{row['ratio']:.2f}" if row["ratio"] else "-",
                f"{row['minutes']:.1f}",
            ]
            for name, run in recovery["runs"].items()
            for row in run.get("by_tokens", [])
        ]
        if by_tokens:
            out.append(
                Table(
                    title="Recovery in distillation tokens (30% heads + 30% FFN, the defaults)",
                    headers=[
                        "method",
                        "tokens asked",
                        "tokens trained",
                        "step",
                        "held-out ppl",
                        "vs teacher",
                        "minutes",
                    ],
                    rows=by_tokens,
                    notes=[
                        "held-out ppl: the distillation's own evaluation (the first 2048 tokens "
                        "of the evaluation text), the one nearest each token count; vs teacher: "
                        "against the original on the same tokens; tokens: inputs trained on, "
                        "padding not counted",
                    ],
                )  # fmt: skip
            )
        out.append(
            Table(
                title="Recovery: 30% heads + 30% FFN, the defaults, through the pipeline",
                headers=[
                    "method",
                    "card perplexity",
                    "fresh process",
                    "tinyshakespeare",
                    "accuracy",
                    "minutes",
                ],
                rows=rows,
                notes=[
                    "fresh process: the saved folder reloaded by transformers alone, same windows",
                    "tinyshakespeare: the same, on text of another domain than the WikiText the "
                    "job trained on (against the original there)",
                ],  # fmt: skip
            )
        )
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ppl0 = results["original"]["perplexity"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, kind in zip(axes, ("width", "depth"), strict=True):
        for r in results["methods"]:
            if r["kind"] != kind:
                continue
            ours = r["method"] in OURS + ("reconstruction", "metric_drop")
            xs = [100 * row["removed"] for row in r["rows"]]
            ys = [row["perplexity"] / ppl0 for row in r["rows"]]
            ax.plot(xs, ys, marker="o", linestyle="-" if ours else "--", label=r["method"])
        ax.set_yscale("log")
        ax.set_ylim(0.9, 30)  # magnitude pruning (x250 and worse) is off the top
        ax.axhline(1.4, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("non-embedding parameters removed (%)")
        ax.set_title(f"SmolLM2-135M, {kind} (solid: ours; dashed: papers' baselines)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("perplexity / original (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20%% width and 10%% depth only")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--calibration-windows", type=int, default=32)
    parser.add_argument("--recovery-minutes", type=float, default=30.0)
    parser.add_argument(
        "--recovery-tokens",
        default="",
        help="recovery measured in distillation tokens, e.g. 50000,100000,200000: one run to the "
        "largest (max_steps from the training rows' mean length), its evaluations read at each",
    )
    parser.add_argument("--no-recovery", action="store_true")
    parser.add_argument(
        "--recovery-runs",
        default="prune,prune_distill",
        help="recovery jobs to run (prune alone repeats the width table's 30%% row)",
    )
    parser.add_argument("--methods", default=",".join(OURS + BASELINES + DEPTH_METHODS))
    parser.add_argument("--width", default=",".join(map(str, WIDTH)))
    parser.add_argument("--depth", default=",".join(map(str, DEPTH)))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--model", help="the SmolLM2 folder (default: built by make-smollm2)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--reload", help=argparse.SUPPRESS)
    parser.add_argument("--reload-text", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(os.cpu_count() or 1)
    if args.reload:
        text = Path(args.reload_text) if args.reload_text else None
        print(json.dumps(reload_and_measure(Path(args.reload), args.eval_windows, text)))
        return
    args.width = [float(v) for v in args.width.split(",") if v]
    args.depth = [float(v) for v in args.depth.split(",") if v]
    if args.child:
        kind, method = args.child
        run = {
            "width": run_width,
            "depth": run_depth,
            "original": lambda m, f, a: run_original(f, a),
            "recovery": lambda m, f, a: run_recovery(f, a),
        }[kind]
        result = (
            run(method, Path(args.model), args)
            if kind in ("width", "depth")
            else run(method, Path(args.model), args)
        )
        Path(args.out).write_text(json.dumps(result, indent=1))
        return
    if args.quick:
        args.width, args.depth, args.eval_windows = [0.2], [0.1], min(args.eval_windows, 4)
    folder = Path(args.model) if args.model else fixture()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    results = {
        "environment": environment(),
        "model": str(folder),
        "width_ratios": args.width,
        "depth_ratios": args.depth,
        "calibration_windows": args.calibration_windows,
        "methods": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["original"] = child("original", "original", folder, args, work)
        for method in methods:
            kind = "depth" if method in DEPTH_METHODS else "width"
            results["methods"].append(child(kind, method, folder, args, work))
            (out / "llm_pruning.json").write_text(json.dumps(results, indent=1))
        if not args.no_recovery:
            results["recovery"] = child("recovery", "recovery", folder, args, work)
    (out / "llm_pruning.json").write_text(json.dumps(results, indent=1))
    rendered = tables(results)
    for table in rendered:
        print(render_text(table), end="\n\n")
    (out / "llm_pruning.md").write_text("\n\n".join(render_markdown(t) for t in rendered) + "\n")
    if results["methods"]:
        plot(results, out / "llm_pruning.png")
    print(f"wrote {out / 'llm_pruning.json'}, .md and .png")


if __name__ == "__main__":
    main()
