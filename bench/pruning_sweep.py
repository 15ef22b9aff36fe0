"""Pruning sweep on minilm-l6-sst2: accuracy after pruning heads / FFN neurons, Michel vs baselines.

Measures, on the fine-tuned MiniLM (6 layers x 12 heads, FFN 1536) and SST-2:

1. importance scoring on 512 calibration sentences (Michel, weight magnitude, random with 3 seeds),
   with the wall time of the Michel scoring;
2. validation accuracy after one-shot physical pruning of 10%..90% of the heads, of the FFN neurons,
   and of both, for every method (random: mean and sample std over the seeds);
3. the iterative schedule (step 0.1, floor 0.9, Michel re-scoring each step) towards 50% heads +
   50% FFN and towards 50% heads, next to one-shot pruning at the fraction it reached;
4. CPU latency (batch 32 x 128 tokens, 2 threads) and MACs of the original and of Michel-pruned
   models;
5. the command: ``slimformer prune MODEL --data train.tsv --eval-data validation.tsv --heads 0.5
   --ffn 0.5`` run through ``slimformer.pipeline.run`` with its defaults, whose accuracy must equal
   the sweep's 50% + 50%.

The calibration rows are the job's (``slimformer.recipe.job_data.seeded_order`` and
``calibration_sample``): the first 512 training sentences in the ``random.Random(0)`` order,
exactly the rows the command scores on.

Prints the tables and writes ``pruning_sweep.json``, ``pruning_sweep.md`` and ``pruning_sweep.png``
under ``--out`` (default ``bench/results``). ``--quick`` is a smoke check (0.5 only, one random
seed).

    python bench/pruning_sweep.py [--quick] [--fractions 0.1,0.5,0.9] [--out bench/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tables import (
    MODEL,
    ROOT,
    TRAIN,
    VALIDATION,
    Table,
    check_shared_inputs,
    environment,
    render_markdown,
    render_text,
)

from slimformer.data import load_text_file, make_batches
from slimformer.evaluation import measure_latency, task_metric
from slimformer.importance import Importance, gated, score_importance
from slimformer.loading import load_model
from slimformer.models import count_macs, count_parameters
from slimformer.pipeline import run as run_pipeline
from slimformer.pruning import PruningTarget, iterative_prune, plan_pruning, prune_model
from slimformer.recipe.job_data import calibration_sample, seeded_order
from slimformer.spec import JobSpec

logger = logging.getLogger("pruning_sweep")


CALIBRATION_SENTENCES = 512  # PruneSpec.calibration_samples' default
SEED = 0  # the job spec's default seed
BATCH_SIZE = 32
MAX_LENGTH = 128
THREADS = 2
RANDOM_SEEDS = (0, 1, 2)
METHODS = ("michel", "magnitude", "random")
MODES = {
    "heads": (1, 0),
    "ffn": (0, 1),
    "both": (1, 1),
}  # mode -> (heads, ffn) multipliers of the fraction
DEFAULT_FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 10))
LATENCY_CONFIGS = (  # (label, heads, ffn) of the Michel-pruned models timed
    ("heads+FFN 30%", 0.3, 0.3),
    ("heads+FFN 50%", 0.5, 0.5),
    ("heads+FFN 70%", 0.7, 0.7),
    ("heads 50%", 0.5, 0.0),
    ("FFN 50%", 0.0, 0.5),
)
ITERATIVE_TARGETS = (("heads+FFN 50%", 0.5, 0.5), ("heads 50%", 0.5, 0.0))
LATENCY_RATIO_TARGET = 0.8

# Measured by gating units to zero after Michel scoring on 512 training sentences (accuracy, %).
REFERENCE = {
    "full": 87.96,
    "scoring_seconds": 28.0,
    "one_shot": {  # mode -> method -> {fraction: accuracy}
        "heads": {"michel": {0.5: 86.93}, "random": {0.5: 81.4}},
        "ffn": {"michel": {0.5: 87.39}, "random": {0.5: 80.4}},
        "both": {"michel": {0.5: 86.12}},
    },
}


@dataclass
class Inputs:
    model: torch.nn.Module
    calibration: list[dict]
    validation: list[dict]
    validation_sentences: int


# ---------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fractions",
        type=parse_fractions,
        default=None,
        help="comma-separated fractions to prune (default 0.1,...,0.9; 0.5 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: fraction 0.5 only, one random seed, iterative step 0.5, one latency "
        "round",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only Michel scoring time and the MACs-vs-latency table (one-shot models), written to "
        "pruning_latency.{json,md}: to re-measure on an idle machine without the accuracy sweep",
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        dest="rounds_override",
        help="rounds of the latency table (default 5; 1 with --quick)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="folder for json, md and png"
    )
    args = parser.parse_args(argv)
    if args.fractions is None:
        args.fractions = [0.5] if args.quick else list(DEFAULT_FRACTIONS)
    args.seeds = RANDOM_SEEDS[:1] if args.quick else RANDOM_SEEDS
    args.iterative_step = 0.5 if args.quick else 0.1
    # rounds x (warm-up + timed runs) forward passes per model, the models taking turns
    args.latency_rounds, args.latency_warmup, args.latency_runs = (
        (1, 1, 2) if args.quick else (5, 1, 3)
    )
    if args.rounds_override:
        args.latency_rounds = args.rounds_override
    return args


def parse_fractions(text: str) -> list[float]:
    try:
        values = sorted({round(float(v), 4) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"fractions must be numbers separated by commas, got {text!r}"
        ) from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must lie in (0, 1), got {text!r}")
    return values


def load_inputs() -> Inputs:
    """The model, the job's 512 calibration sentences and all of validation.tsv.

    The calibration rows come from the pipeline's own functions, so they are the rows
    ``slimformer prune`` scores on with the same seed.
    """
    loaded = load_model(str(MODEL))
    model, tokenizer = loaded.model, loaded.tokenizer
    train = load_text_file(TRAIN)
    rows = calibration_sample(train.subset(seeded_order(len(train), SEED)), CALIBRATION_SENTENCES)
    calibration = make_batches(
        tokenizer,
        rows,
        task=loaded.task,
        config=model.config,
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
    )
    validation = load_text_file(VALIDATION)
    # Batches of similar lengths pad less: evaluation is about twice as fast; accuracy ignores
    # order.
    lengths = [
        len(ids)
        for ids in tokenizer(validation.texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    ]
    by_length = sorted(range(len(validation)), key=lambda i: lengths[i])
    validation_batches = make_batches(
        tokenizer,
        validation.subset(by_length),
        task=loaded.task,
        config=model.config,
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
    )
    return Inputs(model, calibration, validation_batches, len(validation))


# ---------------------------------------------------------------- measuring


def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    """Validation accuracy in percent."""
    name, value = task_metric(model, batches)
    assert name == "accuracy", name
    return 100.0 * value


def pruned_copy(
    model: torch.nn.Module, importance: Importance, heads: float, ffn: float
) -> torch.nn.Module:
    """A deep copy of ``model`` with the least important heads / FFN neurons removed physically."""
    plan = plan_pruning(model, importance, PruningTarget(heads=heads, ffn=ffn))
    clone = copy.deepcopy(model)
    prune_model(clone, plan, layout="per_layer")
    return clone


def score_all(inputs: Inputs, seeds: tuple[int, ...]) -> tuple[dict[str, list[Importance]], float]:
    """One score per method on the full model (random: one per seed), and the Michel wall time."""
    start = time.perf_counter()
    michel = score_importance(inputs.model, inputs.calibration, method="michel")
    michel_seconds = time.perf_counter() - start
    logger.info("Michel scoring on %d batches: %.1f s", len(inputs.calibration), michel_seconds)
    scores = {
        "michel": [michel],
        "magnitude": [score_importance(inputs.model, inputs.calibration, method="magnitude")],
        "random": [
            score_importance(inputs.model, inputs.calibration, method="random", seed=s)
            for s in seeds
        ],
    }
    return scores, michel_seconds


def one_shot_sweep(
    inputs: Inputs, scores: dict[str, list[Importance]], fractions: list[float]
) -> dict:
    """mode -> [{fraction, macs_kept, <method>: {mean, std, runs}}] of one-shot physical pruning."""
    full_macs = count_macs(inputs.model, seq_len=MAX_LENGTH)
    sweep = {}
    for mode, (h, f) in MODES.items():
        points = []
        for fraction in fractions:
            point = {"fraction": fraction}
            for method in METHODS:
                runs = []
                for importance in scores[method]:
                    clone = pruned_copy(inputs.model, importance, h * fraction, f * fraction)
                    runs.append(accuracy(clone, inputs.validation))
                    if method == "michel":
                        point["macs_kept"] = count_macs(clone, seq_len=MAX_LENGTH) / full_macs
                point[method] = summarize(runs)
            logger.info(
                "one-shot %-5s %.0f%%: %s",
                mode,
                100 * fraction,
                ", ".join(f"{m} {point[m]['mean']:.2f}" for m in METHODS),
            )
            points.append(point)
        sweep[mode] = points
    return sweep


def summarize(runs: list[float]) -> dict:
    return {
        "mean": statistics.fmean(runs),
        "std": statistics.stdev(runs) if len(runs) > 1 else 0.0,
        "runs": runs,
    }


def gating_check(inputs: Inputs, michel: Importance) -> list[dict]:
    """Physical removal against gating the same units to zero (how the reference was measured)."""
    rows = []
    for label, heads, ffn in (
        ("heads 50%", 0.5, 0.0),
        ("FFN 50%", 0.0, 0.5),
        ("heads+FFN 50%", 0.5, 0.5),
    ):
        plan = plan_pruning(inputs.model, michel, PruningTarget(heads=heads, ffn=ffn))
        clone = copy.deepcopy(inputs.model)
        prune_model(clone, plan, layout="per_layer")
        physical = accuracy(clone, inputs.validation)
        with gated(inputs.model, heads=plan.heads, neurons=plan.neurons, mlps=plan.mlps):
            gated_accuracy = accuracy(inputs.model, inputs.validation)
        rows.append({"config": label, "physical": physical, "gated": gated_accuracy})
    return rows


def iterative_runs(inputs: Inputs, michel: Importance, step: float) -> list[dict]:
    """The iterative schedule (Michel re-scoring each step) per target, and one-shot pruning to the
    fraction it reached."""

    def rescore(model: torch.nn.Module) -> Importance:
        return score_importance(model, inputs.calibration, method="michel")

    def evaluate(model: torch.nn.Module) -> float:
        return task_metric(model, inputs.validation)[1]

    runs = []
    for label, heads, ffn in ITERATIVE_TARGETS:
        start = time.perf_counter()
        result = iterative_prune(
            copy.deepcopy(inputs.model),
            rescore,
            evaluate,
            PruningTarget(heads=heads, ffn=ffn),
            step=step,
            metric_floor=0.9,
        )
        seconds = time.perf_counter() - start
        kept = [p for p in result.record.curve if p["kept"]]
        final = kept[-1]
        reached_heads, reached_ffn = final["heads_removed"], final["ffn_removed"]
        one_shot = accuracy(
            pruned_copy(inputs.model, michel, reached_heads, reached_ffn), inputs.validation
        )
        runs.append(
            {
                "target": label,
                "target_heads": heads,
                "target_ffn": ffn,
                "step": step,
                "steps_kept": len(kept) - 1,
                "stopped_by_floor": len(kept) < len(result.record.curve),
                "reached_heads": reached_heads,
                "reached_ffn": reached_ffn,
                "accuracy": 100.0 * final["metric"],
                "one_shot_same_fraction": one_shot,
                "seconds": seconds,
                "curve": result.record.curve,
                "model": result.model,
            }
        )
        logger.info(
            "iterative %s: %.2f%% at heads %.1f%% / FFN %.1f%% (one-shot %.2f%%), %.0f s",
            label,
            100 * final["metric"],
            100 * reached_heads,
            100 * reached_ffn,
            one_shot,
            seconds,
        )
    return runs


def efficiency(
    inputs: Inputs,
    michel: Importance,
    extra: dict[str, torch.nn.Module],
    rounds: int,
    warmup: int,
    runs: int,
) -> dict:
    """CPU latency and MACs of the original and of pruned models, relative to the original.

    The models are timed in turns: each round times every model (``warmup`` + ``runs`` forward
    passes), so a machine that slows down or speeds up during the benchmark affects all of them
    alike. A model's p50 is the median of its per-round p50s; its latency reduction is the median
    over the rounds of the reduction against the original's p50 in the same round; the spread is the
    range of its round p50s.
    """
    models = {"original": inputs.model}
    models.update(
        {label: pruned_copy(inputs.model, michel, h, f) for label, h, f in LATENCY_CONFIGS}
    )
    models.update(extra)
    per_round: dict[str, list[dict]] = {label: [] for label in models}
    for r in range(rounds):
        for label, model in models.items():
            latency = measure_latency(
                model, batch_size=BATCH_SIZE, seq_len=MAX_LENGTH, runs=runs, warmup=warmup
            )
            per_round[label].append(asdict(latency))
        logger.info(
            "latency round %d/%d: original p50 %.0f ms",
            r + 1,
            rounds,
            per_round["original"][-1]["p50_ms"],
        )
    base_rounds = [x["p50_ms"] for x in per_round["original"]]
    base_macs = count_macs(inputs.model, seq_len=MAX_LENGTH)
    rows = []
    for label, model in models.items():
        p50s = [x["p50_ms"] for x in per_round[label]]
        macs = count_macs(model, seq_len=MAX_LENGTH)
        mac_reduction = 1 - macs / base_macs
        latency_reduction = statistics.median(
            1 - t / b for t, b in zip(p50s, base_rounds, strict=True)
        )
        row = {
            "config": label,
            "macs": macs,
            "parameters": count_parameters(model),
            "accuracy": accuracy(model, inputs.validation),
            "p50_ms": statistics.median(p50s),
            "p50_min_ms": min(p50s),
            "p50_max_ms": max(p50s),
            "rounds": per_round[label],
            "mac_reduction": mac_reduction,
            "latency_reduction": latency_reduction,
            "ratio": latency_reduction / mac_reduction if mac_reduction > 0 else None,
        }
        rows.append(row)
        logger.info(
            "latency %s: p50 %.0f ms (%.1f%% less), MACs %.1f%% less",
            label,
            row["p50_ms"],
            100 * latency_reduction,
            100 * mac_reduction,
        )
    return {
        "rows": rows,
        "rounds": rounds,
        "warmup": warmup,
        "runs": runs,
        "threads": torch.get_num_threads(),
    }


def command_check() -> dict:
    """``slimformer prune ... --heads 0.5 --ffn 0.5``, other settings at their defaults, run by
    the pipeline.

    The spec is what the command builds (PruneSpec defaults: Michel, 512 calibration rows, global
    ranking, per_layer layout; seed 0); its accuracy is the pipeline's side-by-side evaluation on
    validation.tsv.
    """
    spec = JobSpec.model_validate(
        {
            "model": {"id": str(MODEL)},
            "dataset": {"path": str(TRAIN), "eval_path": str(VALIDATION)},
            "method": "prune",
            "prune": {"heads": 0.5, "ffn": 0.5},
            "evaluation": {"latency": False},
            "seed": SEED,
        },
        context={"local_files": True},
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pruning-sweep-") as work:
        report = run_pipeline(spec, work).report
    accuracy_ = 100 * report["evaluation"]["compressed"]["metrics"]["accuracy"]
    logger.info(
        "slimformer prune --heads 0.5 --ffn 0.5: %.2f%% (%.0f s)",
        accuracy_,
        time.perf_counter() - start,
    )
    return {
        "accuracy": accuracy_,
        "calibration_rows": report["data"]["calibration_rows"],
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------- tables


def reference_value(mode: str, method: str, fraction: float) -> float | None:
    return REFERENCE["one_shot"].get(mode, {}).get(method, {}).get(round(fraction, 4))


def pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def sweep_table(mode: str, points: list[dict], full: float, seeds: int) -> Table:
    names = {
        "heads": "attention heads",
        "ffn": "FFN neurons",
        "both": "heads and FFN neurons (same fraction)",
    }
    rows = [["0%", "100.0", pct(full), pct(full), pct(full), "", ""]]
    for p in points:
        r = p["random"]
        rows.append(
            [
                f"{100 * p['fraction']:.0f}%",
                f"{100 * p['macs_kept']:.1f}",
                pct(p["michel"]["mean"]),
                pct(p["magnitude"]["mean"]),
                f"{r['mean']:.2f} ± {r['std']:.2f}" if seeds > 1 else pct(r["mean"]),
                pct(reference_value(mode, "michel", p["fraction"])),
                pct(reference_value(mode, "random", p["fraction"]), 1),
            ]
        )
    return Table(
        title=f"One-shot pruning of {names[mode]}: validation accuracy (%)",
        headers=[
            "pruned",
            "MACs kept %",
            "michel",
            "magnitude",
            f"random ({seeds} seed{'s' * (seeds > 1)})",
            "ref michel",
            "ref random",
        ],
        rows=rows,
        notes=[
            f"full model {full:.2f}% (reference {REFERENCE['full']:.2f}%); random is mean ± sample "
            "std"
        ]
        if seeds > 1
        else [f"full model {full:.2f}% (reference {REFERENCE['full']:.2f}%)"],
    )


def iterative_table(runs: list[dict], sweep: dict, full: float) -> Table:
    rows = []
    for run in runs:
        mode = "both" if run["target_ffn"] else "heads"
        at_target = next(
            (p["michel"]["mean"] for p in sweep[mode] if abs(p["fraction"] - 0.5) < 1e-9), None
        )
        rows.append(
            [
                run["target"],
                f"{100 * run['reached_heads']:.1f}% / {100 * run['reached_ffn']:.1f}%",
                str(run["steps_kept"]) + (" (floor)" if run["stopped_by_floor"] else ""),
                pct(run["accuracy"]),
                pct(run["one_shot_same_fraction"]),
                pct(at_target),
                f"{run['seconds']:.0f}",
            ]
        )
    step = runs[0]["step"] if runs else 0.1
    return Table(
        title=f"Iterative schedule (step {step:g} of what remains, floor 0.9 x {full:.2f}%, Michel "
        "re-scoring)",
        headers=[
            "target",
            "reached heads / FFN",
            "steps",
            "iterative acc",
            "one-shot same fraction",
            "one-shot 50% (sweep)",
            "time s",
        ],
        rows=rows,
        notes=[
            "'one-shot same fraction' prunes the full model once, with its Michel scores, to the "
            "fraction "
            "the schedule reached; '(floor)' means a step fell below the floor and was undone"
        ],
    )


def efficiency_table(eff: dict) -> Table:
    rows = []
    for r in eff["rows"]:
        original = r["config"] == "original"
        ratio = r["ratio"]
        rows.append(
            [
                r["config"],
                f"{r['macs'] / 1e9:.2f}",
                f"{r['parameters'] / 1e6:.2f}",
                pct(r["accuracy"]),
                f"{r['p50_ms']:.0f}",
                f"{r['p50_min_ms']:.0f}-{r['p50_max_ms']:.0f}",
                "" if original else f"{100 * r['mac_reduction']:.1f}",
                "" if original else f"{100 * r['latency_reduction']:.1f}",
                "" if ratio is None else f"{ratio:.2f}",
                "" if ratio is None else ("yes" if ratio >= LATENCY_RATIO_TARGET else "NO"),
            ]
        )
    return Table(
        title=f"MACs vs CPU latency (batch {BATCH_SIZE} x {MAX_LENGTH} tokens, {eff['threads']} "
        "threads, "
        f"{eff['rounds']} round{'s' * (eff['rounds'] > 1)} of {eff['warmup']} warm-up + "
        f"{eff['runs']} timed "
        "runs per model)",
        headers=[
            "model (Michel)",
            "GMACs/seq",
            "params M",
            "acc %",
            "p50 ms",
            "round p50 range",
            "MAC red. %",
            "latency red. %",
            "ratio",
            f">= {LATENCY_RATIO_TARGET}",
        ],
        rows=rows,
        notes=[
            "ratio = latency reduction / MAC reduction; models are timed in turns, and the latency "
            "reduction "
            "is the median over rounds of the reduction against the original in the same round"
        ],
    )


def scoring_table(
    michel_seconds: float,
    scores: dict[str, list[Importance]],
    gate_rows: list[dict],
    command: dict | None = None,
    sweep: dict | None = None,
) -> Table:
    michel = scores["michel"][0]
    rows = [
        [
            "Michel scoring wall time",
            f"{michel_seconds:.1f} s on {torch.get_num_threads()} threads "
            f"({michel.batches} batches, {michel.extra.get('examples')} sentences)",
            f"about {REFERENCE['scoring_seconds']:.0f} s on 2 cores",
        ],
        ["magnitude scoring", f"{scores['magnitude'][0].seconds:.2f} s", ""],
    ]
    for g in gate_rows:
        same = "identical" if abs(g["physical"] - g["gated"]) < 1e-9 else "DIFFERENT"
        rows.append(
            [
                f"{g['config']}: removed vs gated",
                f"{g['physical']:.2f} vs {g['gated']:.2f} ({same})",
                "",
            ]
        )
    if command is not None:
        both = next((p for p in (sweep or {}).get("both", []) if p["fraction"] == 0.5), None)
        sweep_value = both["michel"]["mean"] if both else None
        agree = (
            ""
            if sweep_value is None
            else (
                " (agrees with the sweep)"
                if abs(command["accuracy"] - sweep_value) < 1e-9
                else " (DIFFERS from the sweep)"
            )
        )
        rows.append(
            [
                "`slimformer prune --heads 0.5 --ffn 0.5` (defaults)",
                f"{command['accuracy']:.2f}{agree}",
                f"sweep heads+FFN 50%: {pct(sweep_value)}",
            ]
        )
    return Table(
        title="Scoring and consistency",
        headers=["what", "this run", "reference"],
        rows=rows,
        notes=[
            "'removed vs gated': validation accuracy after physical removal and after gating the "
            "same "
            "Michel-chosen units to zero (the way the reference figures were measured)"
        ],
    )


# ---------------------------------------------------------------- outputs


def plot(path: Path, sweep: dict, full: float, iterative: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {
        "heads": "attention heads",
        "ffn": "FFN neurons",
        "both": "heads + FFN (same fraction)",
    }
    colors = {"michel": "tab:blue", "magnitude": "tab:orange", "random": "tab:gray"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (mode, points) in zip(axes, sweep.items(), strict=True):
        x = [0.0] + [p["fraction"] for p in points]
        for method in METHODS:
            mean = [full] + [p[method]["mean"] for p in points]
            ax.plot(x, mean, marker="o", markersize=3, color=colors[method], label=method)
            if method == "random":
                std = [0.0] + [p[method]["std"] for p in points]
                low = [m - s for m, s in zip(mean, std, strict=True)]
                high = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(x, low, high, color=colors[method], alpha=0.25, linewidth=0)
        ax.axhline(
            full, color="black", linestyle="--", linewidth=1, label=f"full model ({full:.2f}%)"
        )
        for method, marker in (("michel", "*"), ("random", "X")):
            for fraction, value in REFERENCE["one_shot"].get(mode, {}).get(method, {}).items():
                ax.scatter(
                    [fraction],
                    [value],
                    marker=marker,
                    s=120,
                    color=colors[method],
                    edgecolor="black",
                    zorder=5,
                    label=f"reference {method} (gated)",
                )
        for run in iterative:
            if ("both" if run["target_ffn"] else "heads") == mode:
                ax.scatter(
                    [run["reached_heads"]],
                    [run["accuracy"]],
                    marker="D",
                    s=50,
                    color="tab:green",
                    edgecolor="black",
                    zorder=5,
                    label="iterative (Michel)",
                )
        ax.set_title(f"pruning {titles[mode]}")
        ax.set_xlabel("fraction pruned")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("SST-2 validation accuracy (%)")
    fig.suptitle("minilm-l6-sst2: one-shot physical pruning, Michel vs magnitude vs random")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(
    out: Path, results: dict, tables: list[Table], sweep: dict, full: float, iterative: list[dict]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "pruning_sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    header = (
        f"# Pruning sweep: minilm-l6-sst2\n\n`{env['command']}`, {env['date']}, "
        f"{env['threads']} threads, torch {env['torch']}.\n"
    )
    (out / "pruning_sweep.md").write_text(
        header + "\n" + "\n\n".join(render_markdown(t) for t in tables) + "\n"
    )
    plot(out / "pruning_sweep.png", sweep, full, iterative)
    logger.info("wrote %s/pruning_sweep.{json,md,png}", out)


def latency_only(inputs: Inputs, args: argparse.Namespace, started: float) -> int:
    """Scoring time and the latency table alone, for a re-measurement on an idle machine."""
    start = time.perf_counter()
    michel = score_importance(inputs.model, inputs.calibration, method="michel")
    michel_seconds = time.perf_counter() - start
    eff = efficiency(
        inputs, michel, {}, args.latency_rounds, args.latency_warmup, args.latency_runs
    )
    table = efficiency_table(eff)
    print(f"Michel scoring: {michel_seconds:.1f} s on {THREADS} threads\n\n" + render_text(table))
    env = environment()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "environment": env,
        "michel_seconds": michel_seconds,
        "efficiency": eff,
        "total_seconds": time.perf_counter() - started,
    }
    (args.out / "pruning_latency.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "pruning_latency.md").write_text(
        f"# Pruning latency: minilm-l6-sst2\n\n`{env['command']}`, {env['date']}, {env['threads']} "
        "threads, "
        f"torch {env['torch']}. Michel scoring: {michel_seconds:.1f} s.\n\n"
        + render_markdown(table)
        + "\n"
    )
    logger.info("wrote %s/pruning_latency.{json,md}", args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_shared_inputs("pruning_sweep")
    # An FFN whose every neuron is pruned becomes a zero-width Linear; torch warns about it.
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()

    inputs = load_inputs()
    if args.latency_only:
        return latency_only(inputs, args, started)
    full = accuracy(inputs.model, inputs.validation)
    logger.info("full model: %.2f%% on %d validation sentences", full, inputs.validation_sentences)
    scores, michel_seconds = score_all(inputs, args.seeds)
    michel = scores["michel"][0]
    gate_rows = gating_check(inputs, michel)
    sweep = one_shot_sweep(inputs, scores, args.fractions)
    iterative = iterative_runs(inputs, michel, args.iterative_step)
    extra = {f"iterative {run['target']}": run.pop("model") for run in iterative}
    eff = efficiency(
        inputs, michel, extra, args.latency_rounds, args.latency_warmup, args.latency_runs
    )
    command = command_check() if 0.5 in args.fractions else None

    tables = [
        scoring_table(michel_seconds, scores, gate_rows, command, sweep),
        *(sweep_table(mode, points, full, len(args.seeds)) for mode, points in sweep.items()),
        iterative_table(iterative, sweep, full),
        efficiency_table(eff),
    ]
    for table in tables:
        print("\n" + render_text(table))
    results = {
        "environment": environment(),
        "settings": {
            "model": str(MODEL),
            "train": str(TRAIN),
            "validation": str(VALIDATION),
            "calibration_sentences": CALIBRATION_SENTENCES,
            "batch_size": BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "fractions": args.fractions,
            "random_seeds": list(args.seeds),
            "layout": "per_layer",
            "ranking": PruningTarget().ranking,
            "quick": args.quick,
        },
        "reference": {
            **REFERENCE,
            "one_shot": {
                m: {k: {str(f): v for f, v in d.items()} for k, d in x.items()}
                for m, x in REFERENCE["one_shot"].items()
            },
        },
        "full_accuracy": full,
        "validation_sentences": inputs.validation_sentences,
        "scoring": {
            "michel_seconds": michel_seconds,
            **{m: [s.to_dict() for s in scores[m]] for m in ("michel", "magnitude")},
        },
        "gating_check": gate_rows,
        "command_check": command,
        "one_shot": sweep,
        "iterative": iterative,
        "efficiency": eff,
        "total_seconds": time.perf_counter() - started,
    }
    save(args.out, results, tables, sweep, full, iterative)
    logger.info("done in %.0f s", results["total_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
