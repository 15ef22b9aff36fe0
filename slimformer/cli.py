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
    _add_client_commands(sub)
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


# -- client commands: talk to a running service (httpx and rich only; never torch or transformers) ----------
def _add_client_commands(sub) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--server", help="service URL (default: SLIMFORMER_SERVER, the config file written by "
                                             "`slimformer login`, else http://127.0.0.1:8000)")
    connection.add_argument("--api-key", help="API key (default: SLIMFORMER_API_KEY, else the config file)")
    connection.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show tracebacks")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")

    login = sub.add_parser("login", parents=[connection], help="save the server URL and API key for later commands")
    login.add_argument("--no-verify", action="store_true", help="save without asking the server first")

    submit = sub.add_parser("submit", parents=[connection, as_json],
                            help="submit a job to the service (a spec file, or flags)",
                            description="Submit a compression job. Give a job spec file (docs/job-spec.md), or "
                                        "--model with --data/--hub-dataset and targets; flags override the file. "
                                        "Local data files are uploaded for you.")
    submit.add_argument("spec", nargs="?", help="job spec file (YAML or JSON)")
    submit.add_argument("--model", help="Hub model id")
    submit.add_argument("--revision", help="branch, tag or commit of the model")
    submit.add_argument("--task", choices=["text-classification", "sentence-similarity", "feature-extraction",
                                           "text-generation"])
    source = submit.add_mutually_exclusive_group()
    source.add_argument("--data", help="local CSV, TSV, JSON lines or Parquet file (uploaded)")
    source.add_argument("--hub-dataset", help="Hub dataset id")
    submit.add_argument("--eval-data", help="local evaluation file (uploaded; with --data)")
    submit.add_argument("--hub-config", help="dataset configuration (with --hub-dataset)")
    submit.add_argument("--split", help="training split (with --hub-dataset; default train)")
    submit.add_argument("--eval-split", help="evaluation split (with --hub-dataset; default validation)")
    submit.add_argument("--text-column")
    submit.add_argument("--text-pair-column")
    submit.add_argument("--label-column")
    submit.add_argument("--max-samples", type=int, help="use at most this many training rows")
    submit.add_argument("--method", choices=["prune", "distill", "prune_distill"],
                        help="default: distill with --student-layers/--student, else prune")
    submit.add_argument("--heads", type=_fraction, help="fraction of attention heads to remove")
    submit.add_argument("--ffn", type=_fraction, help="fraction of FFN neurons to remove")
    submit.add_argument("--whole-mlps", type=int, help="number of whole MLPs to remove")
    submit.add_argument("--macs-budget", type=_budget, help="keep at most this fraction of the MACs")
    submit.add_argument("--layout", choices=["per_layer", "uniform"])
    submit.add_argument("--ranking", choices=["global", "per_layer"])
    submit.add_argument("--importance", choices=["michel", "magnitude", "random"])
    submit.add_argument("--schedule", choices=["one_shot", "iterative"])
    submit.add_argument("--step", type=_fraction)
    submit.add_argument("--metric-floor", type=_budget)
    submit.add_argument("--calibration-samples", type=int)
    student = submit.add_mutually_exclusive_group()
    student.add_argument("--student-layers", type=int, help="distil into this many of the teacher's layers")
    student.add_argument("--student", help="distil into this smaller Hub model")
    submit.add_argument("--max-minutes", type=float, help="stop distilling after this many minutes")
    submit.add_argument("--epochs", type=float)
    submit.add_argument("--eval-samples", type=int, help="evaluate on at most this many rows")
    submit.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    submit.add_argument("--onnx", action="store_true", help="also export model.onnx")
    submit.add_argument("--publish", metavar="REPO", help="publish the result to this Hub repo (org/name)")
    submit.add_argument("--public", action="store_true", help="make the published repo public")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--hub-token-env", metavar="VAR",
                        help="environment variable holding a Hub token (private models, publishing)")
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")

    jobs = sub.add_parser("jobs", parents=[connection, as_json], help="list your jobs on the service")
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (1-100; default 20)")
    jobs.add_argument("--cursor", help="next page: the cursor printed under the previous one")

    for name, text in (("status", "show one job"), ("watch", "follow a job with a progress bar until it ends"),
                       ("cancel", "cancel a queued or running job"),
                       ("card", "print a finished job's evaluation card (Markdown)")):
        command = sub.add_parser(name, parents=[connection, as_json], help=text)
        command.add_argument("job_id", metavar="ID")
        if name == "card":
            command.add_argument("--html", action="store_true", help="the card rendered as HTML")

    download = sub.add_parser("download", parents=[connection, as_json],
                              help="download a finished job's model (resumable; sizes and SHA-256 verified)")
    download.add_argument("job_id", metavar="ID")
    download.add_argument("--out", help="folder (default ./ID; with --tar, the current folder)")
    download.add_argument("--tar", action="store_true", help="one streamed .tar.gz instead of the files")


def _client(args: argparse.Namespace):
    from slimformer.client import Client, resolve_connection

    connection = resolve_connection(args.server, args.api_key)
    return Client(connection.server, api_key=connection.api_key)


def _print_json(data) -> None:
    import json

    print(json.dumps(data, indent=2))


def _stdout_console():
    """A console for tables; piped output gets room for whole ids instead of the 80 columns rich assumes."""
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _metrics_line(view: dict) -> str:
    metrics = view.get("metrics") or {}
    parts = []
    metric = metrics.get("metric")
    if metric and metrics.get("original") is not None and metrics.get("compressed") is not None:
        parts.append(f"{metric} {metrics['original']:.4f} -> {metrics['compressed']:.4f}")
    ratios = metrics.get("ratios") or {}
    if ratios.get("parameters") is not None:
        parts.append(f"parameters {ratios['parameters']:.1%} of the original")
    if ratios.get("latency_speedup"):
        parts.append(f"{ratios['latency_speedup']:.2f}x faster at batch 1")
    return "; ".join(parts)


def _finish(view: dict) -> int:
    """The exit code of a job that ended, with one line about how it ended."""
    job_id, status = view["id"], view["status"]
    if status == "succeeded":
        took = ""
        seconds = sum((view.get("stage_seconds") or {}).values())
        if seconds:
            took = f" in {_duration(seconds)}"
        line = _metrics_line(view)
        print(f"job {job_id} succeeded{took}" + (f": {line}" if line else ""), file=sys.stderr)
        print(f"download it with `slimformer download {job_id}`", file=sys.stderr)
        return 0
    if status == "failed":
        error = view.get("error") or {}
        print(f"error: job {job_id} failed: {error.get('message') or view.get('message') or 'no reason given'}",
              file=sys.stderr)
        return 1
    print(f"error: job {job_id} was cancelled", file=sys.stderr)
    return 1


def _follow(client, job_id: str, *, as_json: bool) -> int:
    """Follow a job to its end: a live bar on a terminal, a line per stage elsewhere, NDJSON with --json."""
    import json

    from slimformer.client import TERMINAL

    last = None
    console = _stderr_console()
    try:
        if as_json:
            for view in client.follow(job_id):
                print(json.dumps(view), flush=True)
                last = view
        elif console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("[bold]{task.fields[stage]:<12}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TextColumn("{task.fields[eta]}"), TimeElapsedColumn(), TextColumn("{task.description}"))
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task("", total=1.0, stage="queued", eta="")
                for view in client.follow(job_id):
                    last = view
                    eta = f"ETA {_duration(view['eta_seconds'])}" if view.get("eta_seconds") is not None else ""
                    progress.update(task, completed=view["progress"], stage=view.get("stage") or view["status"],
                                    eta=eta, description=(view.get("message") or "")[:60])
        else:
            shown = None
            for view in client.follow(job_id):
                last = view
                key = (view["status"], view.get("stage"))
                if key != shown:
                    shown = key
                    eta = f", ETA {_duration(view['eta_seconds'])}" if view.get("eta_seconds") is not None else ""
                    print(f"{view['status']:<9} {view.get('stage') or '':<12} {view['progress']:>4.0%}{eta}  "
                          f"{view.get('message') or ''}".rstrip(), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"stopped watching; the job goes on (`slimformer watch {job_id}`)", file=sys.stderr)
        return 130
    if last is None or last["status"] not in TERMINAL:
        last = client.job(job_id)
    return _finish(last)


def _load_spec_file(path_text: str):
    from pathlib import Path

    import yaml

    from slimformer.errors import InvalidSpec

    path = Path(path_text)
    if not path.is_file():
        raise InvalidSpec(f"spec file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())  # JSON is YAML too
    except yaml.YAMLError as err:
        raise InvalidSpec(f"{path.name} is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"{path.name} must hold a mapping (model, dataset, method, ...)")
    return data, path.resolve().parent


def _submit_spec(args: argparse.Namespace) -> tuple[dict, object]:
    """The spec from the file (if any) with the flags laid over it, and the folder its relative paths start from."""
    from pathlib import Path

    from slimformer.errors import InvalidSpec

    if args.spec:
        data, base = _load_spec_file(args.spec)
    else:
        data, base = {}, Path.cwd()

    def section(name: str) -> dict:
        value = data.get(name)
        if not isinstance(value, dict):
            value = data[name] = {}
        return value

    def put(target: dict, key: str, value) -> None:
        if value is not None:
            target[key] = value

    if args.model:
        section("model")["id"] = args.model
    put(section("model"), "revision", args.revision)
    put(section("model"), "task", args.task)
    if not data["model"]:
        del data["model"]
    dataset = section("dataset")
    if args.data or args.hub_dataset:
        for key in ("path", "eval_path", "hub_id", "upload_id", "eval_upload_id", "config"):
            dataset.pop(key, None)
    if args.data:
        dataset["path"] = str(Path(args.data).resolve())
    if args.eval_data:
        dataset["eval_path"] = str(Path(args.eval_data).resolve())
    put(dataset, "hub_id", args.hub_dataset)
    put(dataset, "config", args.hub_config)
    put(dataset, "split", args.split)
    put(dataset, "eval_split", args.eval_split)
    for key in ("text_column", "text_pair_column", "label_column", "max_samples"):
        put(dataset, key, getattr(args, key))
    if not dataset:
        del data["dataset"]
    if "model" not in data or "dataset" not in data:
        raise InvalidSpec("give a spec file, or --model and a data source (--data FILE or --hub-dataset ID)")

    wants_student = args.student_layers is not None or args.student is not None
    if args.method:
        data["method"] = args.method
    elif not args.spec:
        data["method"] = "distill" if wants_student else "prune"
    prune = {k: getattr(args, k) for k in ("heads", "ffn", "whole_mlps", "macs_budget", "layout", "ranking",
                                           "importance", "schedule", "step", "metric_floor", "calibration_samples")}
    if any(v is not None for v in prune.values()):
        section("prune").update({k: v for k, v in prune.items() if v is not None})
    if wants_student:
        section("distill")["student"] = ({"layers": args.student_layers} if args.student_layers is not None
                                         else {"id": args.student})
    if args.max_minutes is not None:
        section("distill")["max_minutes"] = args.max_minutes
    if args.epochs is not None:
        section("distill")["epochs"] = args.epochs
    if args.eval_samples is not None:
        section("evaluation")["max_samples"] = args.eval_samples
    if args.no_latency:
        section("evaluation")["latency"] = False
    if args.onnx:
        section("evaluation")["onnx"] = True
    if args.publish:
        data["publish"] = {"repo_id": args.publish, "private": not args.public}
    if args.seed is not None:
        data["seed"] = args.seed
    return data, base


def _upload_local_files(client, data: dict, base) -> None:
    """Upload ``dataset.path`` / ``eval_path`` and put their upload ids in their place."""
    from pathlib import Path

    dataset = data.get("dataset")
    if not isinstance(dataset, dict):
        return
    for local, remote in (("path", "upload_id"), ("eval_path", "eval_upload_id")):
        value = dataset.get(local)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path(base) / path
        upload = client.upload(path)
        columns = ", ".join(upload["columns"])
        print(f"uploaded {path.name}: {upload['rows']} rows, columns {columns} ({upload['upload_id']})",
              file=sys.stderr)
        del dataset[local]
        dataset[remote] = upload["upload_id"]


def _cmd_submit(args: argparse.Namespace) -> int:
    from slimformer.client import ClientError

    data, base = _submit_spec(args)
    token = None
    if args.hub_token_env:
        token = os.environ.get(args.hub_token_env)
        if not token:
            raise ClientError(f"--hub-token-env {args.hub_token_env}: that environment variable is not set")
    with _client(args) as client:
        _upload_local_files(client, data, base)
        view = client.submit(data, hub_token=token)
        if args.json and not args.wait:
            _print_json(view)
            return 0
        print(view["id"], flush=True)
        if not args.wait:
            print(f"submitted job {view['id']} ({view['status']}); follow it with `slimformer watch {view['id']}`",
                  file=sys.stderr)
            return 0
        return _follow(client, view["id"], as_json=args.json)


def _cmd_login(args: argparse.Namespace) -> int:
    from slimformer.client import (
        Client,
        ClientError,
        config_path,
        read_config,
        resolve_connection,
        write_config,
    )

    saved = read_config()
    connection = resolve_connection(args.server, args.api_key, config=saved)
    api_key = connection.api_key
    if args.api_key is None and os.environ.get("SLIMFORMER_API_KEY") is None and sys.stdin.isatty():
        import getpass

        typed = getpass.getpass(f"API key for {connection.server} (empty: none, or keep the saved one): ").strip()
        api_key = typed or api_key
    if not args.no_verify:
        with Client(connection.server, api_key=api_key) as client:
            try:
                client.jobs(limit=1)
            except ClientError as err:
                if err.status == 401:
                    raise ClientError(f"the server at {connection.server} refused the key: {err.message}") from None
                raise
    path = write_config({"server": connection.server, "api_key": api_key or ""}, config_path())
    key_note = "with an API key" if api_key else "without an API key"
    print(f"saved {connection.server} ({key_note}) to {path}", file=sys.stderr)
    return 0


def _jobs_table(listing: dict):
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("ID", "left"), ("STATUS", "left"), ("STAGE", "left"), ("PROGRESS", "right"),
                            ("MODEL", "left"), ("METHOD", "left"), ("CREATED", "left")):
        table.add_column(column, justify=justify, no_wrap=column in ("ID", "CREATED"))
    colours = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "queued": "blue"}
    for job in listing["items"]:
        spec = job.get("spec") or {}
        status = job["status"]
        table.add_row(job["id"], f"[{colours.get(status, 'white')}]{status}[/]", job.get("stage") or "",
                      f"{job['progress']:.0%}", (spec.get("model") or {}).get("id", ""), spec.get("method", ""),
                      job["created_at"][:19].replace("T", " "))
    return table


def _cmd_jobs(args: argparse.Namespace) -> int:
    from slimformer.client import ClientError

    if not 1 <= args.limit <= 100:
        raise ClientError(f"--limit {args.limit}: give a number from 1 to 100")
    with _client(args) as client:
        listing = client.jobs(status=args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _print_json(listing)
        return 0
    if not listing["items"]:
        print("no jobs" + (f" with status {args.status}" if args.status else ""), file=sys.stderr)
        return 0
    _stdout_console().print(_jobs_table(listing))
    if listing.get("next_cursor"):
        print(f"more: slimformer jobs --cursor {listing['next_cursor']}", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _client(args) as client:
        view = client.job(args.job_id)
    if args.json:
        _print_json(view)
        return 0
    spec = view.get("spec") or {}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [("id", view["id"]), ("status", view["status"]), ("stage", view.get("stage") or ""),
            ("progress", f"{view['progress']:.0%}" + (f", ETA {_duration(view['eta_seconds'])}"
                                                       if view.get("eta_seconds") is not None else "")),
            ("message", view.get("message") or ""),
            ("model", (spec.get("model") or {}).get("id", "")), ("method", spec.get("method", "")),
            ("attempts", f"{view['attempts']} of {view['max_attempts']}"),
            ("created", view["created_at"]), ("started", view.get("started_at") or ""),
            ("finished", view.get("finished_at") or "")]
    stages = view.get("stage_seconds") or {}
    if stages:
        rows.append(("stages", ", ".join(f"{k} {_duration(v)}" for k, v in stages.items())))
    line = _metrics_line(view)
    if line:
        rows.append(("result", line))
    if view.get("published"):
        rows.append(("published", str(view["published"].get("url") or view["published"])))
    if view.get("error"):
        rows.append(("error", f"{view['error']['message']} ({view['error']['code']})"))
    for key, value in rows:
        if value:
            table.add_row(key, str(value))
    _stdout_console().print(table)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.job_id, as_json=args.json)


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        view = client.cancel(args.job_id)
    if args.json:
        _print_json(view)
    elif view["status"] == "cancelled":
        print(f"cancelled job {view['id']}", file=sys.stderr)
    else:
        print(f"cancel requested: job {view['id']} stops at its next check", file=sys.stderr)
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    with _client(args) as client:
        text = client.card(args.job_id, format="html" if args.html else "markdown")
    if args.json:
        _print_json({"job_id": args.job_id, "format": "html" if args.html else "markdown", "card": text})
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from pathlib import Path

    console = _stderr_console()
    with _client(args) as client:
        if args.tar:
            target = client.download_tarball(args.job_id, Path(args.out or "."))
            if args.json:
                _print_json({"job_id": args.job_id, "archive": str(target), "size": target.stat().st_size})
            else:
                print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
            return 0
        out = Path(args.out or args.job_id)
        if console.is_terminal and not args.json:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            with Progress(TextColumn("{task.description:<28}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          console=console, transient=True) as progress:
                tasks = {}

                def on_file(path: str, size: int, have: int) -> None:
                    tasks[path] = progress.add_task(path[-28:], total=size, completed=have)

                def on_bytes(path: str, n: int) -> None:
                    progress.advance(tasks[path], n)

                results = client.download(args.job_id, out, on_file=on_file, on_bytes=on_bytes)
        else:
            results = client.download(args.job_id, out)
    if args.json:
        _print_json({"job_id": args.job_id, "out": str(out), "files": [
            {"path": r.path, "size": r.size, "fetched": r.fetched, "resumed_from": r.resumed_from} for r in results]})
        return 0
    for r in results:
        if r.resumed_from and not r.skipped:
            print(f"resumed {r.path} at byte {r.resumed_from:,} of {r.size:,}", file=sys.stderr)
    skipped = sum(r.skipped for r in results)
    total = sum(r.size for r in results)
    print(f"downloaded {len(results)} files ({total / 1e6:.1f} MB) to {out}"
          + (f"; {skipped} were already complete" if skipped else "") + ", sizes and SHA-256 verified", file=sys.stderr)
    return 0


CLIENT_HANDLERS = {"login": _cmd_login, "submit": _cmd_submit, "jobs": _cmd_jobs, "status": _cmd_status,
                   "watch": _cmd_watch, "cancel": _cmd_cancel, "download": _cmd_download, "card": _cmd_card}


def _run_guarded(handler, args: argparse.Namespace) -> int:
    """Run a command: library errors become one ``error: ...`` line and exit 2 (tracebacks with --debug)."""
    try:
        return handler(args)
    except SlimformerError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run_client_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    return _run_guarded(CLIENT_HANDLERS[args.command], args)


COMMANDS = {"prune": _run_prune, "distill": _run_distill, "compress": _run_compress}
SERVER_COMMANDS = ("serve", "worker", "keys", "migrate")
CLIENT_COMMANDS = ("login", "submit", "jobs", "status", "watch", "cancel", "download", "card")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in SERVER_COMMANDS:
        return _run_server_command(args)
    if args.command in CLIENT_COMMANDS:
        return _run_client_command(args)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    return _run_guarded(COMMANDS[args.command], args)

if __name__ == "__main__":
    sys.exit(main())
