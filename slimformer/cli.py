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
    parser.add_argument("--eval-data", help="file to measure the metric on (default: the calibration sample)")
    parser.add_argument("--text-column", help="column with the text (default: text, sentence, ...)")
    parser.add_argument("--text-pair-column", help="column with the second text of sentence pairs")
    parser.add_argument("--label-column", help="column with labels (default: label, when present)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per input (default 128)")
    parser.add_argument("--batch-size", type=int, default=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimformer", description="Make transformers smaller and faster.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    prune = sub.add_parser("prune", help="score and remove heads / FFN neurons of a model, locally")
    prune.add_argument("model", help="local model folder or Hub id")
    _add_data_arguments(prune)
    prune.add_argument("--heads", type=_fraction, default=0.0, help="fraction of attention heads to remove")
    prune.add_argument("--ffn", type=_fraction, default=0.0, help="fraction of FFN neurons to remove")
    prune.add_argument("--whole-mlps", type=int, default=0, help="number of whole MLPs to remove")
    prune.add_argument("--macs-budget", type=_budget, help="keep at most this fraction of the MACs")
    prune.add_argument("--params-budget", type=_budget, help="keep at most this fraction of the parameters")
    prune.add_argument("--layout", choices=["per_layer", "uniform"], default="per_layer")
    prune.add_argument("--ranking", choices=["global", "per_layer"], default="global")
    prune.add_argument("--importance", choices=["michel", "magnitude", "random"], default="michel")
    prune.add_argument("--schedule", choices=["one_shot", "iterative"], default="one_shot")
    prune.add_argument("--step", type=_fraction, default=0.1, help="iterative: fraction of what remains per step")
    prune.add_argument("--metric-floor", type=_budget, default=0.9,
                       help="iterative: stop before the metric falls below this fraction of the original")
    prune.add_argument("--calibration-samples", type=int, default=512)
    prune.add_argument("--task", choices=["text-classification", "text-generation", "feature-extraction"])
    prune.add_argument("--onnx", action="store_true", help="also export model.onnx, checked with onnxruntime")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


def _progress_printer():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("{task.description}"), TimeElapsedColumn(), transient=True,
    )
    task = progress.add_task("", total=1.0, stage="starting")

    def update(stage: str, fraction: float, message: str) -> None:
        progress.update(task, completed=fraction, description=message, stage=stage)

    return progress, update


def _print_prune_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    before, after, metric = report["original"], report["pruned"], report["metric"]
    table = Table(title=f"{report['model']} ({report['task']})")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("pruned", justify="right")
    table.add_column("change", justify="right")
    for key, fmt in (("parameters", "{:,}"), ("macs", "{:,}")):
        table.add_row(key, fmt.format(before[key]), fmt.format(after[key]), f"{after[key] / before[key]:.1%}")
    table.add_row(metric, f"{before[metric]:.4f}", f"{after[metric]:.4f}", f"{after[metric] - before[metric]:+.4f}")
    pruning = report["pruning"]
    table.add_row("heads", str(sum(pruning["original_heads_per_layer"])), str(sum(pruning["heads_per_layer"])), "")
    table.add_row(
        "FFN neurons", str(sum(pruning["original_neurons_per_layer"])), str(sum(pruning["neurons_per_layer"])), ""
    )
    Console().print(table)


def _run_prune(args: argparse.Namespace) -> int:
    from slimformer.pipeline import PruneRequest, prune_local
    from slimformer.pruning import PruningTarget

    request = PruneRequest(
        model=args.model, data=args.data, out=args.out, eval_data=args.eval_data,
        target=PruningTarget(
            heads=args.heads, ffn=args.ffn, whole_mlps=args.whole_mlps, macs_budget=args.macs_budget,
            params_budget=args.params_budget, ranking=args.ranking,
        ),
        text_column=args.text_column, text_pair_column=args.text_pair_column, label_column=args.label_column,
        task=args.task, layout=args.layout, schedule=args.schedule, step=args.step, metric_floor=args.metric_floor,
        importance=args.importance, calibration_samples=args.calibration_samples, batch_size=args.batch_size,
        max_length=args.max_length, onnx=args.onnx, seed=args.seed, overwrite=args.overwrite,
    )
    request.validate()  # bad arguments fail before the model loads
    progress, update = _progress_printer()
    with progress:
        report = prune_local(request, on_progress=update)
    _print_prune_summary(report)
    print(f"wrote {args.out}" + (" (load with trust_remote_code=True)" if args.layout == "per_layer" else ""))
    return 0


COMMANDS = {"prune": _run_prune}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
