"""Local commands: ``prune``, ``distill`` and ``compress`` run the pipeline on this machine."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from slimformer.cli.parser import Handler
from slimformer.cli.specfile import load_spec_file
from slimformer.errors import InvalidSpec
from slimformer.spec import JobSpec


def quiet_libraries() -> None:
    """Silence transformers' warnings and progress bars (not with ``--debug``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers  # heavy (torch): imported only when a local command runs

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _progress_printer():
    progress = Progress(
        TextColumn("[bold]{task.fields[stage]:<12}"), BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.description}"),
        TimeElapsedColumn(), transient=True,
    )
    task = progress.add_task("", total=1.0, stage="starting")

    def update(stage: str, fraction: float, message: str) -> None:
        progress.update(task, completed=fraction, description=message, stage=stage)

    return progress, update


def _print_summary(report: dict) -> None:
    evaluation = report["evaluation"]
    before, after = evaluation["original"], evaluation["compressed"]
    base = report["base_model"]
    table = Table(title=f"{base['id']} ({base['task']}, {report['spec']['method']})")
    for column, justify in (("", "left"), ("original", "right"), ("compressed", "right"),
                            ("change", "right")):
        table.add_column(column, justify=justify)
    for key in ("parameters", "macs"):
        table.add_row(key, f"{before[key]:,}", f"{after[key]:,}",
                      f"{after[key] / before[key]:.1%}")
    for name, value in before["metrics"].items():
        other = after["metrics"].get(name)
        table.add_row(name, f"{value:.4f}", f"{other:.4f}", f"{other - value:+.4f}")
    if evaluation.get("agreement") is not None:
        table.add_row("agreement", "", f"{evaluation['agreement']:.4f}", "")
    if before.get("latency") and after.get("latency"):
        table.add_row("latency p50 b1 (ms)", f"{before['latency']['batch1_p50_ms']:.2f}",
                      f"{after['latency']['batch1_p50_ms']:.2f}",
                      f"{evaluation['ratios']['latency_speedup']:.2f}x")
    pruning = report.get("pruning")
    if pruning:
        table.add_row("heads", str(sum(pruning["original_heads_per_layer"])),
                      str(sum(pruning["heads_per_layer"])), "")
        table.add_row("FFN neurons", str(sum(pruning["original_neurons_per_layer"])),
                      str(sum(pruning["neurons_per_layer"])), "")
    Console().print(table)


def _dataset(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "path": args.data, "eval_path": args.eval_data, "text_column": args.text_column,
        "text_pair_column": args.text_pair_column, "label_column": args.label_column,
        "max_samples": args.max_samples,
    }


def _common(args: argparse.Namespace, method: str) -> dict[str, Any]:
    return {
        "model": {"id": args.model, "task": args.task},
        "dataset": _dataset(args),
        "method": method,
        "evaluation": {"max_samples": args.eval_samples, "latency": not args.no_latency,
                       "onnx": args.onnx},
        "seed": args.seed,
    }


def _validated(data: dict) -> JobSpec:
    try:
        return JobSpec.model_validate(data, context={"local_files": True})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        more = err.error_count() - 1
        raise InvalidSpec(f"{where}: {first['msg']}"
                          + (f" (and {more} more problems)" if more else "")) from None


def _run_spec(spec: JobSpec, out: str, overwrite: bool) -> int:
    from slimformer.pipeline import run  # heavy (torch, transformers)

    progress, update = _progress_printer()
    with tempfile.TemporaryDirectory(prefix="slimformer-") as workdir, progress:
        result = run(spec, workdir, on_progress=update, out_dir=out, overwrite=overwrite)
    _print_summary(result.report)
    remote = result.report["artifacts"]["per_layer"]
    print(f"wrote {out}" + (" (load with trust_remote_code=True)" if remote else "")
          + "; card: README.md")
    return 0


def prune(args: argparse.Namespace) -> int:
    """``slimformer prune``."""
    spec = _validated(_common(args, "prune") | {"prune": {
        "heads": args.heads, "ffn": args.ffn, "whole_mlps": args.whole_mlps,
        "macs_budget": args.macs_budget, "layout": args.layout, "ranking": args.ranking,
        "importance": args.importance, "schedule": args.schedule, "step": args.step,
        "metric_floor": args.metric_floor, "calibration_samples": args.calibration_samples,
    }})
    return _run_spec(spec, args.out, args.overwrite)


def distill(args: argparse.Namespace) -> int:
    """``slimformer distill``."""
    if args.student_layers:
        student = {"layers": args.student_layers, "layer_selection": args.layer_selection}
    else:
        student = {"id": args.student}
    spec = _validated(_common(args, "distill") | {"distill": {
        "student": student, "temperature": args.temperature, "alpha": args.alpha,
        "hidden_loss": args.hidden_loss, "epochs": args.epochs, "max_steps": args.max_steps,
        "max_minutes": args.max_minutes, "learning_rate": args.learning_rate,
    }})
    return _run_spec(spec, args.out, args.overwrite)


def compress(args: argparse.Namespace) -> int:
    """``slimformer compress SPEC``: relative data paths in the spec start at the spec's folder."""
    data, path = load_spec_file(args.spec)
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        for key in ("path", "eval_path"):
            value = dataset.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                dataset[key] = str((path.parent / value).resolve())
    return _run_spec(_validated(data), args.out, args.overwrite)


HANDLERS: dict[str, Handler] = {"prune": prune, "distill": distill, "compress": compress}
