"""The ``slimformer`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from slimformer.errors import SlimformerError

logger = logging.getLogger("slimformer")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in [0, 1)")
    return value


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a budget in (0, 1]")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV, TSV, JSON lines or Parquet file")
    parser.add_argument("--eval-data", help="file to evaluate on (default: a held-out fifth of --data)")
    parser.add_argument("--text-column", help="column with the text (default: text, sentence, ...)")
    parser.add_argument("--text-pair-column", help="column with the second text of sentence pairs")
    parser.add_argument("--label-column", help="column with labels (default: label, when present)")
    parser.add_argument("--max-samples", type=int, help="use at most this many training rows")
    parser.add_argument("--eval-samples", type=int, default=2000, help="evaluate on at most this many rows")
    parser.add_argument("--task", choices=["text-classification", "text-generation", "feature-extraction"])
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument("--onnx", action="store_true", help="also export model.onnx, checked with onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def _add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heads", type=_fraction, default=0.0, help="fraction of attention heads to remove")
    parser.add_argument("--ffn", type=_fraction, default=0.0, help="fraction of FFN neurons to remove")
    parser.add_argument("--whole-mlps", type=int, default=0, help="number of whole MLPs to remove")
    parser.add_argument("--macs-budget", type=_budget, help="keep at most this fraction of the MACs")
    parser.add_argument("--layout", choices=["per_layer", "uniform"], default="per_layer")
    parser.add_argument("--ranking", choices=["global", "per_layer"], default="global")
    parser.add_argument("--importance", choices=["michel", "magnitude", "random"], default="michel")
    parser.add_argument("--schedule", choices=["one_shot", "iterative"], default="one_shot")
    parser.add_argument("--step", type=_fraction, default=0.1, help="iterative: fraction of what remains per step")
    parser.add_argument("--metric-floor", type=_budget, default=0.9,
                        help="iterative: stop before the metric falls below this fraction of the original")
    parser.add_argument("--calibration-samples", type=int, default=512)


def _add_distill_arguments(parser: argparse.ArgumentParser, *, student: bool) -> None:
    if student:
        group = parser.add_mutually_exclusive_group(required=True)
        group.add_argument("--student-layers", type=int, help="keep this many of the teacher's layers")
        group.add_argument("--student", help="a smaller model (folder or Hub id) with the teacher's tokenizer")
        parser.add_argument("--layer-selection", choices=["even", "importance"], default="even")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the gold-label loss")
    parser.add_argument("--hidden-loss", choices=["cosine", "mse"])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--learning-rate", type=float, default=5e-5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimformer", description="Make transformers smaller and faster.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="score and remove heads / FFN neurons / MLPs of a model, locally")
    prune.add_argument("model", help="local model folder or Hub id")
    _add_data_arguments(prune)
    _add_prune_arguments(prune)

    distill = sub.add_parser("distill", help="distil a model into a smaller student, locally")
    distill.add_argument("model", metavar="TEACHER", help="local model folder or Hub id")
    _add_data_arguments(distill)
    _add_distill_arguments(distill, student=True)

    compress = sub.add_parser("compress", help="run a job spec (YAML or JSON) locally")
    compress.add_argument("spec", help="job spec file (see docs/job-spec.md)")
    compress.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    compress.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    _add_server_commands(sub)
    return parser


def _add_server_commands(sub) -> None:
    """``serve``, ``worker``, ``keys``, ``migrate``: the service side (needs the ``service`` extra)."""
    serve = sub.add_parser("serve", help="run the API (and, by default, one worker process)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; SLIMFORMER_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000; SLIMFORMER_PORT)")
    serve.add_argument("--data-dir", help="job store, queue and artifacts folder (default ./data; SLIMFORMER_DATA_DIR)")
    serve.add_argument("--no-worker", action="store_true", help="API only; run `slimformer worker` elsewhere")

    worker = sub.add_parser("worker", help="run a worker that takes jobs from the queue")
    worker.add_argument("--data-dir", help="as for serve (SLIMFORMER_DATA_DIR)")
    worker.add_argument("--queues", help="comma-separated queues (default: gpu,cpu with CUDA, else cpu)")
    worker.add_argument("--concurrency", type=int, help="jobs at once (default SLIMFORMER_WORKER_CONCURRENCY or 1)")
    worker.add_argument("--hostname", help="Celery node name (default celery@HOST)")

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys.add_argument("--data-dir", help="as for serve (SLIMFORMER_DATA_DIR)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="the key sees every key's jobs")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the id shown by `keys list`")

    migrate = sub.add_parser("migrate", help="create or upgrade the job store's schema (Alembic)")
    migrate.add_argument("--data-dir", help="as for serve (SLIMFORMER_DATA_DIR)")


def _run_server_command(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from service import commands
    except ImportError as err:
        raise SystemExit(f"error: `slimformer {args.command}` needs the service extra: pip install "
                         f"'slimformer[service]' ({err})") from None
    try:
        return getattr(commands, args.command)(args)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except commands.StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _progress_printer():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.fields[stage]:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
    )
    task = progress.add_task("", total=1.0, stage="starting")

    def update(stage: str, fraction: float, message: str) -> None:
        progress.update(task, completed=fraction, description=message, stage=stage)

    return progress, update


def _print_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    evaluation = report["evaluation"]
    before, after = evaluation["original"], evaluation["compressed"]
    table = Table(title=f"{report['base_model']['id']} ({report['base_model']['task']}, {report['spec']['method']})")
    for column, justify in (("", "left"), ("original", "right"), ("compressed", "right"), ("change", "right")):
        table.add_column(column, justify=justify)
    for key in ("parameters", "macs"):
        table.add_row(key, f"{before[key]:,}", f"{after[key]:,}", f"{after[key] / before[key]:.1%}")
    for name, value in before["metrics"].items():
        other = after["metrics"].get(name)
        table.add_row(name, f"{value:.4f}", f"{other:.4f}", f"{other - value:+.4f}")
    if evaluation.get("agreement") is not None:
        table.add_row("agreement", "", f"{evaluation['agreement']:.4f}", "")
    if before.get("latency") and after.get("latency"):
        table.add_row("latency p50 b1 (ms)", f"{before['latency']['batch1_p50_ms']:.2f}",
                      f"{after['latency']['batch1_p50_ms']:.2f}", f"{evaluation['ratios']['latency_speedup']:.2f}x")
    pruning = report.get("pruning")
    if pruning:
        table.add_row("heads", str(sum(pruning["original_heads_per_layer"])), str(sum(pruning["heads_per_layer"])), "")
        table.add_row("FFN neurons", str(sum(pruning["original_neurons_per_layer"])),
                      str(sum(pruning["neurons_per_layer"])), "")
    Console().print(table)


def _dataset(args: argparse.Namespace) -> dict:
    return {
        "path": args.data, "eval_path": args.eval_data, "text_column": args.text_column,
        "text_pair_column": args.text_pair_column, "label_column": args.label_column, "max_samples": args.max_samples,
    }


def _common(args: argparse.Namespace, method: str) -> dict:
    return {
        "model": {"id": args.model, "task": args.task},
        "dataset": _dataset(args),
        "method": method,
        "evaluation": {"max_samples": args.eval_samples, "latency": not args.no_latency, "onnx": args.onnx},
        "seed": args.seed,
    }


def _run_spec(spec, out: str, overwrite: bool) -> int:
    import tempfile

    from slimformer.pipeline import run

    progress, update = _progress_printer()
    with tempfile.TemporaryDirectory(prefix="slimformer-") as workdir, progress:
        result = run(spec, workdir, on_progress=update, out_dir=out, overwrite=overwrite)
    _print_summary(result.report)
    remote = result.report["artifacts"]["per_layer"]
    print(f"wrote {out}" + (" (load with trust_remote_code=True)" if remote else "") + "; card: README.md")
    return 0


def _validated(data: dict):
    from pydantic import ValidationError

    from slimformer.errors import InvalidSpec
    from slimformer.spec import JobSpec

    try:
        return JobSpec.model_validate(data, context={"local_files": True})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise InvalidSpec(f"{where}: {first['msg']}" + (f" (and {err.error_count() - 1} more problems)"
                                                        if err.error_count() > 1 else "")) from None


def _run_prune(args: argparse.Namespace) -> int:
    spec = _validated(_common(args, "prune") | {"prune": {
        "heads": args.heads, "ffn": args.ffn, "whole_mlps": args.whole_mlps, "macs_budget": args.macs_budget,
        "layout": args.layout, "ranking": args.ranking, "importance": args.importance, "schedule": args.schedule,
        "step": args.step, "metric_floor": args.metric_floor, "calibration_samples": args.calibration_samples,
    }})
    return _run_spec(spec, args.out, args.overwrite)


def _run_distill(args: argparse.Namespace) -> int:
    student = {"layers": args.student_layers, "layer_selection": args.layer_selection} if args.student_layers \
        else {"id": args.student}
    spec = _validated(_common(args, "distill") | {"distill": {
        "student": student, "temperature": args.temperature, "alpha": args.alpha, "hidden_loss": args.hidden_loss,
        "epochs": args.epochs, "max_steps": args.max_steps, "max_minutes": args.max_minutes,
        "learning_rate": args.learning_rate,
    }})
    return _run_spec(spec, args.out, args.overwrite)


def _run_compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from slimformer.errors import InvalidSpec

    path = Path(args.spec)
    if not path.is_file():
        raise InvalidSpec(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as err:
        raise InvalidSpec(f"{path.name} is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{path.name} must hold a mapping (model, dataset, method, ...)")
    # relative data paths are relative to the spec file
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        for key in ("path", "eval_path"):
            if isinstance(dataset.get(key), str) and not Path(dataset[key]).is_absolute():
                dataset[key] = str((path.parent / dataset[key]).resolve())
    return _run_spec(_validated(data), args.out, args.overwrite)


COMMANDS = {"prune": _run_prune, "distill": _run_distill, "compress": _run_compress}
SERVER_COMMANDS = ("serve", "worker", "keys", "migrate")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SERVER_COMMANDS:
        return _run_server_command(args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        return COMMANDS[args.command](args)
    except SlimformerError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
