"""Distillation on minilm-l6-sst2: smaller students distilled from the teacher, against fine-tuning alone.

Students of the fine-tuned MiniLM (6 layers x 12 heads, FFN 1536; 87.96% on SST-2 validation):

1. layer-dropped: 3 of the 6 layers (every other one, ending with the last: 1, 3, 5), distilled for at most
   ``--minutes`` with soft targets (T=2, alpha=0.5) and cosine alignment of each kept layer with the teacher
   layer it came from. Targets: >= 97% of the teacher's accuracy, about half its latency;
2. pruned: 50% of the heads and 50% of the FFN neurons removed (Michel scores on 512 training sentences,
   per-layer layout), then distilled for at most ``--minutes``. Target: >= 99% of the teacher's accuracy;
3. baseline: the same two students fine-tuned on the gold labels alone (no teacher), same budget.

Training reads ../shared/data/sst2/train.tsv less 500 held-out sentences, on which each run evaluates and
keeps its best checkpoint; the accuracy reported is on validation.tsv, which no run sees while training.
Each run's step budget (the length of its learning-rate schedule) is fitted to the time budget from a
short timing run. Latency: ``slimformer.evaluation.measure_latency`` on random tokens at batch 32 x 128
and 1 x 128, the models timed in turns, relative to the teacher in the same round.

Prints the tables and writes ``distillation.json``, ``distillation.md`` and ``distillation.png`` under
``--out`` (default ``bench/results``). ``--quick`` is a smoke check: a step budget sized for 0.5 minutes per run
(at least 10 steps, however slow the machine) and one latency round.

    python bench/distillation.py [--minutes 10] [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
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

from slimformer.data import TextData, load_text_file, make_batches
from slimformer.distill import (
    DistillConfig,
    DistillResult,
    distill,
    finetune,
    make_layer_dropped_student,
)
from slimformer.evaluation import measure_latency, task_metric
from slimformer.hub import load_model
from slimformer.importance import score_importance
from slimformer.models import count_parameters
from slimformer.pruning import PruningTarget, plan_pruning, prune_model

logger = logging.getLogger("distillation_bench")


THREADS = 2
BATCH_SIZE = 32
MAX_LENGTH = 128
HELD_OUT = 500  # training sentences kept aside to choose each run's best checkpoint
CALIBRATION_SENTENCES = 512
STUDENT_LAYERS = 3
PRUNE = PruningTarget(heads=0.5, ffn=0.5)
EVALUATIONS = 10  # per run, on the held-out sentences
MAX_EPOCHS = 10  # a run that is faster than its time budget stops here
TEACHER_ACCURACY = 87.96  # reference (%), README of the model
TARGETS = {"layer-dropped": 0.97, "pruned": 0.99}  # share of the teacher's accuracy, distilled students
LATENCY_TARGET = 0.5  # layer-dropped student vs teacher, batch 32 x 128 ("about half")

# Layer-dropped students start far from their teacher and take a larger step size than pruned ones. A
# 150-step probe of the layer-dropped student (1 thread) reached 82.7% validation accuracy at 5e-5, 85.0% at
# 1e-4 and 86.0% at 2e-4; 1e-4 is the middle ground for runs of ~1000 steps.
BASE = DistillConfig(temperature=2.0, alpha=0.5, batch_size=BATCH_SIZE, max_length=MAX_LENGTH, warmup_ratio=0.1,
                     weight_decay=0.01, seed=0, epochs=MAX_EPOCHS, checkpoint_every=10**9)
STUDENT_SETTINGS = {
    "layer-dropped": replace(BASE, learning_rate=1e-4, hidden_loss="cosine", hidden_weight=1.0),
    "pruned": replace(BASE, learning_rate=5e-5, hidden_loss="cosine", hidden_weight=1.0),
}


@dataclass
class Student:
    name: str
    model: torch.nn.Module
    description: str
    layer_map: list[int] | None
    before: float  # validation accuracy (%) before any training


# ---------------------------------------------------------------- set-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="time budget of each training run (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: about 0.5 minutes (at least 10 steps) per run, one latency round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for json, md and png")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if args.quick:
        args.minutes = 0.5
    # rounds x (warm-up + timed runs) forward passes per model, the models taking turns
    args.latency = {"rounds": 1, "b32": (1, 2), "b1": (2, 5)} if args.quick else {"rounds": 3, "b32": (1, 5),
                                                                                   "b1": (3, 20)}
    return args


def by_length_batches(tokenizer, data: TextData, config) -> list[dict]:
    """Evaluation batches of similar lengths (less padding, about twice as fast; accuracy ignores order)."""
    lengths = [len(ids) for ids in tokenizer(data.texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    order = sorted(range(len(data)), key=lambda i: lengths[i])
    return make_batches(tokenizer, data.subset(order), task="text-classification", config=config,
                        batch_size=BATCH_SIZE, max_length=MAX_LENGTH)


def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    """Accuracy in percent."""
    name, value = task_metric(model, batches)
    assert name == "accuracy", name
    return 100.0 * value


def make_students(teacher, tokenizer, train: TextData, validation: list[dict]) -> list[Student]:
    """The 3-layer layer-dropped copy and the 50% heads + 50% FFN pruned copy of the teacher."""
    dropped, kept = make_layer_dropped_student(teacher, STUDENT_LAYERS, "even")
    calibration = make_batches(tokenizer, train.head(CALIBRATION_SENTENCES), task="text-classification",
                               config=teacher.config, batch_size=BATCH_SIZE, max_length=MAX_LENGTH)
    start = time.perf_counter()
    importance = score_importance(teacher, calibration)
    plan = plan_pruning(teacher, importance, PRUNE)
    pruned = copy.deepcopy(teacher)
    prune_model(pruned, plan, layout="per_layer")
    logger.info("Michel scoring and pruning: %.0f s", time.perf_counter() - start)
    heads = sum(len(v) for v in plan.heads.values())
    neurons = sum(len(v) for v in plan.neurons.values())
    students = [
        Student("layer-dropped", dropped, f"layers {kept} of 6", kept, accuracy(dropped, validation)),
        Student("pruned", pruned, f"-{heads} heads, -{neurons} FFN neurons (per_layer)", None,
                accuracy(pruned, validation)),
    ]
    for s in students:
        logger.info("%s student (%s): %.2f%% before training, %.1fM parameters", s.name, s.description, s.before,
                    count_parameters(s.model) / 1e6)
    return students


# ---------------------------------------------------------------- training


def train_once(method: str, teacher, student: Student, tokenizer, train: TextData, dev: TextData,
               config: DistillConfig) -> DistillResult:
    model = copy.deepcopy(student.model)
    last = [0.0]

    def report(stage: str, fraction: float, message: str) -> None:
        if time.perf_counter() - last[0] > 30:  # a line every 30 s is enough for a 10-minute run
            last[0] = time.perf_counter()
            logger.info("  %s %s %s: %3.0f%% %s", method, student.name, stage, 100 * fraction, message)

    if method == "distilled":
        return distill(teacher, model, tokenizer, train, dev, config, layer_map=student.layer_map,
                       on_progress=report)
    return finetune(model, tokenizer, train, dev, config, on_progress=report)


def fit_steps(method: str, teacher, student: Student, tokenizer, train: TextData, dev: TextData,
              config: DistillConfig, minutes: float, quick: bool) -> tuple[DistillConfig, dict]:
    """The config whose step budget (and so learning-rate schedule) fills ``minutes`` on this machine.

    Times steps 3 to 6 of a short run (the first steps warm up), and one evaluation on the held-out sentences.
    ``quick``: the step budget alone bounds the run (at least 10 steps), so a slow machine still trains.
    """
    probe = replace(config, max_steps=6, eval_every=10**9)
    result = train_once(method, teacher, student, tokenizer, train, None, probe)
    per_step = (result.history[6]["seconds"] - result.history[2]["seconds"]) / 4
    model = student.model
    start = time.perf_counter()
    task_metric(model, make_batches(tokenizer, dev, task="text-classification", config=model.config,
                                    batch_size=BATCH_SIZE, max_length=MAX_LENGTH))
    per_eval = time.perf_counter() - start
    # the set-up before the first step: data checks, first-batch losses, the teacher's held-out metric
    overhead = result.history[0]["seconds"] + (per_eval if method == "distilled" else 0.0)
    budget = 0.95 * minutes * 60 - overhead - (EVALUATIONS + 1) * per_eval
    steps = max(10, int(budget / per_step))
    fitted = replace(config, max_steps=steps, max_minutes=None if quick else minutes,
                     eval_every=max(1, steps // EVALUATIONS))
    timing = {"seconds_per_step": per_step, "seconds_per_evaluation": per_eval, "overhead_seconds": overhead,
              "max_steps": steps}
    logger.info("%s %s: %.2f s/step, %.1f s/evaluation -> %d steps in %.1f minutes", method, student.name,
                per_step, per_eval, steps, minutes)
    return fitted, timing


def run_all(teacher, tokenizer, students: list[Student], train: TextData, dev: TextData, validation: list[dict],
            minutes: float, quick: bool) -> list[dict]:
    runs = []
    for student in students:
        for method in ("distilled", "fine-tuned"):
            config, timing = fit_steps(method, teacher, student, tokenizer, train, dev,
                                       STUDENT_SETTINGS[student.name], minutes, quick)
            start = time.perf_counter()
            result = train_once(method, teacher, student, tokenizer, train, dev, config)
            seconds = time.perf_counter() - start
            score = accuracy(result.student, validation)
            logger.info("%s %s: %.2f%% on validation after %d steps (%s), %.1f min; best held-out %.2f%% at step %s",
                        method, student.name, score, result.steps, result.stopped_because, seconds / 60,
                        100 * result.best_metric, result.best_step)
            for finding in result.health:
                if finding["level"] != "info":
                    logger.info("  health %s: %s", finding["check"], finding["message"])
            runs.append({
                "student": student.name,
                "method": method,
                "validation_accuracy": score,
                "held_out_best": 100 * result.best_metric,
                "best_step": result.best_step,
                "steps": result.steps,
                "stopped_because": result.stopped_because,
                "seconds": seconds,
                "config": asdict(config),
                "timing": timing,
                "health": result.health,
                "history": result.history,
            })
    return runs


# ---------------------------------------------------------------- latency


def latency(models: dict[str, torch.nn.Module], rounds: int, b32: tuple[int, int], b1: tuple[int, int]) -> dict:
    """p50 latency per model at batch 32 and 1 (x 128 tokens), and its ratio to the teacher's in each round.

    The models are timed in turns, so a machine that slows down during the benchmark slows all of them alike;
    a model's p50 is the median of its round p50s, its ratio the median of the per-round ratios.
    """
    out = {}
    for batch, (warmup, runs) in (("b32", b32), ("b1", b1)):
        size = 32 if batch == "b32" else 1
        per_round: dict[str, list[float]] = {name: [] for name in models}
        for r in range(rounds):
            for name, model in models.items():
                timing = measure_latency(model, batch_size=size, seq_len=MAX_LENGTH, runs=runs, warmup=warmup)
                per_round[name].append(timing.p50_ms)
            logger.info("latency batch %d round %d/%d: %s", size, r + 1, rounds,
                        ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in per_round.items()))
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


def results_table(teacher_acc: float, teacher_params: int, students: list[Student], runs: list[dict],
                  lat: dict, validation_sentences: int) -> Table:
    rows = [["teacher (6 layers)", pct(teacher_acc), "100.0", "-", "-", f"{teacher_params / 1e6:.1f}",
             pct(lat["b32"]["teacher"]["p50_ms"], 0), "1.00", pct(lat["b1"]["teacher"]["p50_ms"], 1), "1.00",
             "-", "-"]]
    for student in students:
        params = count_parameters(student.model)
        for run in (r for r in runs if r["student"] == student.name):
            share = run["validation_accuracy"] / teacher_acc
            target = TARGETS[student.name] if run["method"] == "distilled" else None
            verdict = "-" if target is None else f">= {100 * target:.0f}%: {'met' if share >= target else 'missed'}"
            b32, b1 = lat["b32"][student.name], lat["b1"][student.name]
            rows.append([
                f"{student.name}, {run['method']}", pct(run["validation_accuracy"]), f"{100 * share:.1f}", verdict,
                pct(student.before), f"{params / 1e6:.1f}", pct(b32["p50_ms"], 0), f"{b32['ratio']:.2f}",
                pct(b1["p50_ms"], 1), f"{b1['ratio']:.2f}", str(run["steps"]), f"{run['seconds'] / 60:.1f}",
            ])
    ratio = lat["b32"]["layer-dropped"]["ratio"]
    notes = [
        f"accuracy on {validation_sentences} SST-2 validation sentences; the teacher's reference is "
        f"{TEACHER_ACCURACY}%",
        "'before': the student's accuracy straight after layer dropping / pruning, before any training",
        f"latency: p50 of a forward pass on random tokens, 128 tokens, {THREADS} threads; 'x': relative to the "
        "teacher in the same round",
        f"layer-dropped latency target about {LATENCY_TARGET:.0%} of the teacher's at batch 32: "
        f"{ratio:.0%} ({'met' if ratio <= LATENCY_TARGET + 0.05 else 'missed'})",
        "pruned students use the per_layer layout (trust_remote_code=True to reload); layer-dropped ones are "
        "stock BertConfig with 3 layers",
    ]
    return Table(
        title="Distilled and fine-tuned students of minilm-l6-sst2",
        headers=["model", "accuracy %", "% of teacher", "target", "before %", "params M", "b32 ms", "x",
                 "b1 ms", "x", "steps", "minutes"],
        rows=rows,
        notes=notes,
    )


def training_table(runs: list[dict]) -> Table:
    rows = []
    for run in runs:
        warnings_ = [f["check"] for f in run["health"] if f["level"] != "info"]
        rows.append([
            f"{run['student']}, {run['method']}", f"{run['config']['learning_rate']:g}",
            str(run["config"]["max_steps"]), f"{run['timing']['seconds_per_step']:.2f}", run["stopped_because"],
            str(run["best_step"]), pct(run["held_out_best"]), ", ".join(sorted(set(warnings_))) or "-",
        ])
    return Table(
        title="Training runs",
        headers=["run", "lr", "step budget", "s/step", "stopped by", "best step", "held-out best %",
                 "health warnings"],
        rows=rows,
        notes=[f"held-out: {HELD_OUT} training sentences kept out of training, used to keep the best checkpoint; "
               "the teacher was most likely fine-tuned on them, so held-out accuracy runs above validation accuracy"],
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
        left.plot([h["seconds"] / 60 for h in points], [100 * h["metric"] for h in points], marker="o",
                  markersize=3, linestyle=styles[run["method"]], color=colors[run["student"]],
                  label=f"{run['student']}, {run['method']}")
    left.set_xlabel("training time (minutes)")
    left.set_ylabel(f"held-out accuracy (%, {HELD_OUT} training sentences)")
    left.set_title("accuracy during training")
    left.grid(alpha=0.3)
    left.legend(fontsize=8, loc="best")

    right.scatter([lat["b32"]["teacher"]["p50_ms"]], [teacher_acc], marker="*", s=200, color="black",
                  label="teacher")
    for run in runs:
        right.scatter([lat["b32"][run["student"]]["p50_ms"]], [run["validation_accuracy"]], s=70,
                      color=colors[run["student"]], marker="o" if run["method"] == "distilled" else "x",
                      label=f"{run['student']}, {run['method']}")
    for name, share in TARGETS.items():
        right.axhline(share * teacher_acc, color=colors[name], linestyle=":", linewidth=1,
                      label=f"{name} target ({100 * share:.0f}% of teacher)")
    right.set_xlabel(f"latency, batch 32 x {MAX_LENGTH} (ms, p50, {THREADS} threads)")
    right.set_ylabel("SST-2 validation accuracy (%)")
    right.set_title("accuracy against latency")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle("minilm-l6-sst2 students: distilled vs fine-tuned on gold labels")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save(out: Path, results: dict, tables: list[Table], runs: list[dict], teacher_acc: float, lat: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "distillation.json").write_text(json.dumps(results, indent=2) + "\n")
    env = results["environment"]
    header = (f"# Distillation: minilm-l6-sst2\n\n`{env['command']}`, {env['date']}, "
              f"{env['threads']} threads, torch {env['torch']}.\n")
    (out / "distillation.md").write_text(header + "\n" + "\n\n".join(render_markdown(t) for t in tables) + "\n")
    plot(out / "distillation.png", runs, teacher_acc, lat)
    logger.info("wrote %s/distillation.{json,md,png}", out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    check_shared_inputs("distillation benchmark")
    # An FFN whose every neuron is pruned becomes a zero-width Linear, and torch warns about initialising it.
    warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()

    loaded = load_model(str(MODEL))
    teacher, tokenizer = loaded.model, loaded.tokenizer
    data = load_text_file(TRAIN)
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    dev, train = data.subset(order[:HELD_OUT]), data.subset(order[HELD_OUT:])
    validation_data = load_text_file(VALIDATION)
    validation = by_length_batches(tokenizer, validation_data, teacher.config)
    teacher_acc = accuracy(teacher, validation)
    logger.info("teacher: %.2f%% on %d validation sentences (reference %.2f%%)", teacher_acc, len(validation_data),
                TEACHER_ACCURACY)

    students = make_students(teacher, tokenizer, train, validation)
    runs = run_all(teacher, tokenizer, students, train, dev, validation, args.minutes, args.quick)
    lat = latency({"teacher": teacher, **{s.name: s.model for s in students}}, args.latency["rounds"],
                  args.latency["b32"], args.latency["b1"])

    tables = [
        results_table(teacher_acc, count_parameters(teacher), students, runs, lat, len(validation_data)),
        training_table(runs),
    ]
    for table in tables:
        print("\n" + render_text(table))
    results = {
        "environment": environment(),
        "settings": {
            "model": str(MODEL), "train": str(TRAIN), "validation": str(VALIDATION), "held_out": HELD_OUT,
            "train_sentences": len(train), "minutes_per_run": args.minutes, "quick": args.quick,
            "student_layers": STUDENT_LAYERS, "prune": asdict(PRUNE), "calibration_sentences": CALIBRATION_SENTENCES,
            "targets": TARGETS, "latency_target": LATENCY_TARGET, "latency": args.latency,
        },
        "teacher": {"validation_accuracy": teacher_acc, "reference": TEACHER_ACCURACY,
                    "parameters": count_parameters(teacher)},
        "students": [{"name": s.name, "description": s.description, "layer_map": s.layer_map,
                      "before_accuracy": s.before, "parameters": count_parameters(s.model)} for s in students],
        "runs": runs,
        "latency": lat,
        "total_seconds": time.perf_counter() - started,
    }
    save(args.out, results, tables, runs, teacher_acc, lat)
    logger.info("done in %.1f minutes", results["total_seconds"] / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
