"""Distillation on minilm-l6-sst2, run the way a user runs it: the defaults, through the pipeline.

Students of the fine-tuned MiniLM (6 layers x 12 heads, FFN 1536; 87.96% on SST-2 validation):

1. layer-dropped: the job spec of ``slimformer distill MODEL --data train.tsv --eval-data
   validation.tsv --student-layers 3 --max-minutes M`` (built by the command's own spec builder),
   run by ``slimformer.pipeline.run``: 3 of the 6 layers (1, 3, 5), the layer-dropped recipe of
   ``slimformer/distill/recipes.py``. Targets: >= 97% of the teacher's accuracy, about half its
   latency;
2. pruned: the spec of ``slimformer compress`` with ``method: prune_distill``, 50% heads + 50% FFN
   neurons (Michel scores on the job's 512 calibration rows), the pruned recipe. Target: >= 99% of
   the teacher's; the same spec with ``method: prune`` gives the pruned student before training
   (what ``slimformer prune`` gives, the pruning sweep's 50% + 50% row);
3. baseline (``--no-baselines`` skips it): the same two students fine-tuned on the gold labels
   alone (no teacher) with the same recipe, data split and time budget, through
   ``slimformer.distill.finetune``.

No setting here is the benchmark's own: every run takes the recipe, the held-out slice (500
shuffled training sentences that choose the best checkpoint) and the time budget (``--minutes``,
wall-clock, evaluations included; the schedule is fitted to the steps that fit) exactly as a
user's job does. Accuracy is the pipeline's side-by-side evaluation on all of validation.tsv,
which no run sees while training. Latency: ``slimformer.evaluation.measure_latency`` on random
tokens at batch 32 x 128 and 1 x 128, the models timed in turns, relative to the teacher in the
same round.

Prints the tables and writes ``distillation.json``, ``distillation.md`` and ``distillation.png``
under ``--out`` (default ``bench/results``). ``--quick`` is a smoke check: 10 steps per run
(``--max-steps 10`` instead of a time budget, so it trains however slow the machine), one latency
round.

    python bench/distillation.py [--minutes 10] [--quick] [--no-baselines] [--out bench/results]
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

from slimformer.cli.local import distill_spec
from slimformer.cli.parser import build_parser
from slimformer.data import load_text_file, make_batches
from slimformer.distill import finetune, make_layer_dropped_student
from slimformer.evaluation import measure_latency, task_metric
from slimformer.loading import load_model
from slimformer.models import count_parameters
from slimformer.pipeline import run as run_pipeline
from slimformer.recipe.distilling import distill_recipe, held_out_split
from slimformer.recipe.job_data import seeded_order
from slimformer.spec import JobSpec

logger = logging.getLogger("distillation_bench")


THREADS = 2
MAX_LENGTH = 128
STUDENT_LAYERS = 3
SEED = 0
TEACHER_ACCURACY = 87.96  # reference (%), README of the model
TARGETS = {
    "layer-dropped": 0.97,
    "pruned": 0.99,
}  # share of the teacher's accuracy, distilled students
LATENCY_TARGET = 0.5  # layer-dropped student vs teacher, batch 32 x 128 ("about half")


# ---------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help="time budget of each training run, as --max-minutes (default 10)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 10 steps per run instead of a time budget, one latency round",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the fine-tuned (no teacher) baselines"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results", help="folder for json, md and png"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.steps = 10 if args.quick else None
    # rounds x (warm-up + timed runs) forward passes per model, the models taking turns
    args.latency = (
        {"rounds": 1, "b32": (1, 2), "b1": (2, 5)}
        if args.quick
        else {"rounds": 3, "b32": (1, 5), "b1": (3, 20)}
    )
    return args


def specs(minutes: float, out: Path, steps: int | None = None) -> dict[str, JobSpec]:
    """The users' job specs: the distill command's, and compress specs for prune_distill and prune.

    ``steps`` (``--quick``) replaces the time budget with a step budget.
    """
    budget = ["--max-steps", str(steps)] if steps else ["--max-minutes", f"{minutes:g}"]
    command = [
        "distill",
        str(MODEL),
        "--data",
        str(TRAIN),
        "--eval-data",
        str(VALIDATION),
        "--student-layers",
        str(STUDENT_LAYERS),
        *budget,
        "--no-latency",
        "--seed",
        str(SEED),
        "--out",
        str(out),
    ]
    distill_budget = {"max_steps": steps} if steps else {"max_minutes": minutes}
    pruned = {
        "model": {"id": str(MODEL)},
        "dataset": {"path": str(TRAIN), "eval_path": str(VALIDATION)},
        "prune": {"heads": 0.5, "ffn": 0.5},
        "evaluation": {"latency": False},
        "seed": SEED,
    }
    return {
        "layer-dropped": distill_spec(build_parser({}).parse_args(command)),
        "pruned": JobSpec.model_validate(
            pruned | {"method": "prune_distill", "distill": distill_budget},
            context={"local_files": True},
        ),
        "pruned, before": JobSpec.model_validate(
            pruned | {"method": "prune"}, context={"local_files": True}
        ),
    }


def run_job(name: str, spec: JobSpec, work: Path) -> dict:
    """``slimformer.pipeline.run`` as the command runs it: the report, wall time and folder."""
    last = [0.0]

    def report(stage: str, fraction: float, message: str) -> None:
        if time.perf_counter() - last[0] > 30:  # a line every 30 s is enough for a 10-minute run
            last[0] = time.perf_counter()
            logger.info("  %s %s: %3.0f%% %s", name, stage, 100 * fraction, message)

    start = time.perf_counter()
    result = run_pipeline(spec, work / name.replace(", ", "-"), on_progress=report)
    seconds = time.perf_counter() - start
    accuracy = 100 * result.report["evaluation"]["compressed"]["metrics"]["accuracy"]
    logger.info("%s: %.2f%% on validation, %.1f min in all", name, accuracy, seconds / 60)
    return {
        "report": result.report,
        "folder": result.folder,
        "seconds": seconds,
        "accuracy": accuracy,
    }


def finetuned_baseline(name: str, spec: JobSpec, student, tokenizer, validation) -> dict:
    """The student trained on gold labels alone, with the job's recipe, held-out rows, budget."""
    data = load_text_file(TRAIN)
    train, dev = held_out_split(data.subset(seeded_order(len(data), spec.seed)))
    config = distill_recipe(spec, "text-classification").config
    start = time.perf_counter()
    result = finetune(copy.deepcopy(student), tokenizer, train, dev, config)
    seconds = time.perf_counter() - start
    batches = make_batches(
        tokenizer,
        validation,
        task="text-classification",
        config=student.config,
        batch_size=32,
        max_length=MAX_LENGTH,
    )
    accuracy = 100 * task_metric(result.student, batches)[1]
    logger.info(
        "%s, fine-tuned: %.2f%% on validation after %d steps (%s), %.1f min",
        name,
        accuracy,
        result.steps,
        result.stopped_because,
        seconds / 60,
    )
    return {
        "student": name,
        "method": "fine-tuned",
        "validation_accuracy": accuracy,
        "seconds": seconds,
        "steps": result.steps,
        "stopped_because": result.stopped_because,
        "best_step": result.best_step,
        "held_out_best": 100 * result.best_metric,
        "learning_rate": config.learning_rate,
        "plan": result.plan,
        "health": result.health,
        "history": result.history,
    }


def distilled_run(name: str, job: dict) -> dict:
    d = job["report"]["distillation"]
    return {
        "student": name,
        "method": "distilled",
        "validation_accuracy": job["accuracy"],
        "seconds": d["seconds"],
        "job_seconds": job["seconds"],
        "steps": d["steps"],
        "stopped_because": d["stopped_because"],
        "best_step": d["best_step"],
        "held_out_best": 100 * d["best_metric"],
        "learning_rate": d["recipe"]["values"]["learning_rate"],
        "recipe": d["recipe"],
        "plan": d["plan"],
        "health": d["health"],
        "history": d["evaluations"],
        "spec": job["report"]["spec"],
    }


# ---------------------------------------------------------------- latency


def latency(
    models: dict[str, torch.nn.Module], rounds: int, b32: tuple[int, int], b1: tuple[int, int]
) -> dict:
    """p50 latency per model at batch 32 and 1 (x 128 tokens), and its ratio to the teacher's.

    The models are timed in turns, so a machine that slows down during the benchmark slows all
    of them alike;
    a model's p50 is the median of its round p50s, its ratio the median of the per-round ratios.
    """
    out = {}
    for batch, (warmup, runs) in (("b32", b32), ("b1", b1)):
        size = 32 if batch == "b32" else 1
        per_round: dict[str, list[float]] = {name: [] for name in models}
        for r in range(rounds):
            for name, model in models.items():
                timing = measure_latency(
                    model, batch_size=size, seq_len=MAX_LENGTH, runs=runs, warmup=warmup
                )
                per_round[name].append(timing.p50_ms)
            logger.info(
                "latency batch %d round %d/%d: %s",
                size,
                r + 1,
                rounds,
                ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in per_round.items()),
            )
        teacher = per_round["teacher"]
        out[batch] = {
            name: {
                "p50_ms": statistics.median(p50s),
                "ratio": statistics.median(t / b for t, b in zip(p50s, teacher, strict=True)),
                "rounds": p50s,
            }
            for name, p50s in per_round.items()
        }
    return out


# ---------------------------------------------------------------- tables and outputs


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def results_table(
    teacher_acc: float,
    teacher_params: int,
    students: dict[str, dict],
    runs: list[dict],
    lat: dict,
    validation_sentences: int,
) -> Table:
    rows = [
        [
            "teacher (6 layers)",
            pct(teacher_acc),
            "100.0",
            "-",
            "-",
            f"{teacher_params / 1e6:.1f}",
            pct(lat["b32"]["teacher"]["p50_ms"], 0),
            "1.00",
            pct(lat["b1"]["teacher"]["p50_ms"], 1),
            "1.00",
            "-",
            "-",
        ]
    ]
    for name, student in students.items():
        for run in (r for r in runs if r["student"] == name):
            share = run["validation_accuracy"] / teacher_acc
            target = TARGETS[name] if run["method"] == "distilled" else None
            verdict = (
                "-"
                if target is None
                else f">= {100 * target:.0f}%: {'met' if share >= target else 'missed'}"
            )
            b32, b1 = lat["b32"][name], lat["b1"][name]
            rows.append(
                [
                    f"{name}, {run['method']}",
                    pct(run["validation_accuracy"]),
                    f"{100 * share:.1f}",
                    verdict,
                    pct(student["before"]),
                    f"{student['parameters'] / 1e6:.1f}",
                    pct(b32["p50_ms"], 0),
                    f"{b32['ratio']:.2f}",
                    pct(b1["p50_ms"], 1),
                    f"{b1['ratio']:.2f}",
                    str(run["steps"]),
                    f"{run['seconds'] / 60:.1f}",
                ]
            )
    ratio = lat["b32"]["layer-dropped"]["ratio"]
    notes = [
        f"accuracy on {validation_sentences} SST-2 validation sentences (the pipeline's "
        "side-by-side evaluation for "
        f"distilled students); the teacher's reference is {TEACHER_ACCURACY}%",
        "'before': the student straight after layer dropping / pruning, before any training "
        "(for the pruned "
        "student: what `slimformer prune --heads 0.5 --ffn 0.5` gives)",
        "minutes: the distilling stage (its evaluations included), the budget --max-minutes bounds",
        f"latency: p50 of a forward pass on random tokens, 128 tokens, {THREADS} threads; "
        "'x': relative to the "
        "teacher in the same round",
        f"layer-dropped latency target about {LATENCY_TARGET:.0%} of the teacher's at batch 32: "
        f"{ratio:.0%} ({'met' if ratio <= LATENCY_TARGET + 0.05 else 'missed'})",
        "pruned students use the per_layer layout (trust_remote_code=True to reload); "
        "layer-dropped ones are "
        "stock BertConfig with 3 layers",
    ]
    return Table(
        title="Distilled and fine-tuned students of minilm-l6-sst2",
        headers=[
            "model",
            "accuracy %",
            "% of teacher",
            "target",
            "before %",
            "params M",
            "b32 ms",
            "x",
            "b1 ms",
            "x",
            "steps",
            "minutes",
        ],
        rows=rows,
        notes=notes,
    )


def training_table(runs: list[dict]) -> Table:
    rows = []
    for run in runs:
        warnings_ = [f["check"] for f in run["health"] if f["level"] != "info"]
        plan = run["plan"]
        rows.append(
            [
                f"{run['student']}, {run['method']}",
                f"{run['learning_rate']:g}",
                str(plan["total_steps"]),
                str(plan["warmup_steps"]),
                f"{plan['seconds_per_step']:.2f}",
                f"{plan['seconds_per_evaluation']:.1f}",
                run["stopped_because"],
                str(run["best_step"]),
                pct(run["held_out_best"]),
                ", ".join(sorted(set(warnings_))) or "-",
            ]
        )
    return Table(
        title="Training runs",
        headers=[
            "run",
            "lr",
            "planned steps",
            "warm-up",
            "s/step",
            "s/eval",
            "stopped by",
            "best step",
            "held-out best %",
            "health warnings",
        ],
        rows=rows,
        notes=[
            "lr and the hidden-state loss come from the student's recipe "
            "(slimformer/distill/recipes.py); planned steps: the schedule as fitted to the time "
            "budget from the measured step and evaluation "
            "times",
            "held-out: 500 training sentences kept out of training (the pipeline's held-out "
            "slice), used to keep the best checkpoint; the teacher was most likely fine-tuned on "
            "them, so held-out accuracy runs above "
            "validation accuracy",
        ],
    )


def plot(path: Path, runs: list[dict], teacher_acc: float, lat: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"layer-dropped": "tab:blue", "pruned": "tab:orange"}
    styles = {"distilled": "-", "fine-tuned": "--"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for run in runs:
        points = [h for h in run["history"] if h.get("metric") is not None]
        left.plot(
            [h["seconds"] / 60 for h in points],
            [100 * h["metric"] for h in points],
            marker="o",
            markersize=3,
            linestyle=styles[run["method"]],
            color=colors[run["student"]],
            label=f"{run['student']}, {run['method']}",
        )
    left.set_xlabel("training time (minutes)")
    left.set_ylabel("held-out accuracy (%, 500 training sentences)")
    left.set_title("accuracy during training")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="best")

    right.scatter(
        [lat["b32"]["teacher"]["p50_ms"]],
        [teacher_acc],
        marker="*",
        s=200,
        color="black",
        label="teacher",
    )
    for run in runs:
        right.scatter(
            [lat["b32"][run["student"]]["p50_ms"]],
            [run["validation_accuracy"]],
            s=70,
            color=colors[run["student"]],
            marker="o" if run["method"] == "distilled" else "x",
            label=f"{run['student']}, {run['method']}",
        )
    for name, share in TARGETS.items():
        right.axhline(
            share * teacher_acc,
            color=colors[name],
            linestyle=":",
            linewidth=1,
            label=f"{name} target ({100 * share:.0f}% of teacher)",
        )
    right.set_xlabel(f"latency, batch 32 x {MAX_LENGTH} (ms, p50, {THREADS} threads)")
    right.set_ylabel("SST-2 validation accuracy (%)")
    right.set_title("accuracy against latency")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle("minilm-l6-sst2 students: distilled vs fine-tuned on gold labels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(
    out: Path, results: dict, tables: list[Table], runs: list[dict], teacher_acc: float, lat: dict
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "distillation.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    header = (
        f"# Distillation: minilm-l6-sst2\n\n`{env['command']}`, {env['date']}, "
        f"{env['threads']} threads, torch {env['torch']}.\n"
    )
    (out / "distillation.md").write_text(
        header + "\n" + "\n\n".join(render_markdown(t) for t in tables) + "\n"
    )
    plot(out / "distillation.png", runs, teacher_acc, lat)
    logger.info("wrote %s/distillation.{json,md,png}", out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_shared_inputs("distillation benchmark")
    # An FFN whose every neuron is pruned becomes a zero-width Linear; torch warns about it.
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    torch.set_num_threads(THREADS)
    started = time.perf_counter()

    loaded = load_model(str(MODEL))
    teacher, tokenizer = loaded.model, loaded.tokenizer
    validation = load_text_file(VALIDATION)
    with tempfile.TemporaryDirectory(prefix="distillation-bench-") as tmp:
        work = Path(tmp)
        jobs = specs(args.minutes, work / "out", args.steps)
        before = run_job("pruned, before", jobs["pruned, before"], work)
        distilled = {name: run_job(name, jobs[name], work) for name in ("layer-dropped", "pruned")}
        teacher_acc = (
            100
            * distilled["layer-dropped"]["report"]["evaluation"]["original"]["metrics"]["accuracy"]
        )
        logger.info(
            "teacher: %.2f%% on %d validation sentences (reference %.2f%%)",
            teacher_acc,
            len(validation),
            TEACHER_ACCURACY,
        )
        dropped, kept = make_layer_dropped_student(teacher, STUDENT_LAYERS, "even")
        pruned_before = load_model(str(before["folder"])).model.eval()
        students = {
            "layer-dropped": {
                "model": dropped,
                "description": f"layers {kept} of 6",
                "layer_map": kept,
            },
            "pruned": {
                "model": pruned_before,
                "description": "50% heads, 50% FFN neurons (Michel, per_layer)",
                "layer_map": None,
                "before": before["accuracy"],
            },
        }
        batches = make_batches(
            tokenizer,
            validation,
            task="text-classification",
            config=teacher.config,
            batch_size=32,
            max_length=MAX_LENGTH,
        )
        students["layer-dropped"]["before"] = 100 * task_metric(dropped, batches)[1]
        for student in students.values():
            student["parameters"] = count_parameters(student["model"])
        runs = []
        for name in ("layer-dropped", "pruned"):
            runs.append(distilled_run(name, distilled[name]))
            if not args.no_baselines:
                runs.append(
                    finetuned_baseline(
                        name, jobs[name], students[name]["model"], tokenizer, validation
                    )
                )
        models = {
            "teacher": teacher,
            **{
                name: load_model(str(job["folder"])).model.eval() for name, job in distilled.items()
            },
        }
        lat = latency(models, args.latency["rounds"], args.latency["b32"], args.latency["b1"])

    tables = [
        results_table(teacher_acc, count_parameters(teacher), students, runs, lat, len(validation)),
        training_table(runs),
    ]
    for table in tables:
        print("\n" + render_text(table))
    results = {
        "environment": environment(),
        "settings": {
            "model": str(MODEL),
            "train": str(TRAIN),
            "validation": str(VALIDATION),
            "minutes_per_run": None if args.quick else args.minutes,
            "steps_per_run": args.steps,
            "quick": args.quick,
            "baselines": not args.no_baselines,
            "student_layers": STUDENT_LAYERS,
            "targets": TARGETS,
            "latency_target": LATENCY_TARGET,
            "latency": args.latency,
            "specs": {name: spec.model_dump(mode="json") for name, spec in jobs.items()},
        },
        "teacher": {
            "validation_accuracy": teacher_acc,
            "reference": TEACHER_ACCURACY,
            "parameters": count_parameters(teacher),
        },
        "students": [
            {
                "name": name,
                "description": s["description"],
                "layer_map": s["layer_map"],
                "before_accuracy": s["before"],
                "parameters": s["parameters"],
            }
            for name, s in students.items()
        ],
        "runs": runs,
        "latency": lat,
        "total_seconds": time.perf_counter() - started,
    }
    save(args.out, results, tables, runs, teacher_acc, lat)
    logger.info("done in %.1f minutes", results["total_seconds"] / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
