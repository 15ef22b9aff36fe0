"""The ``slimformer`` argument parser, its shared argument types and the one error guard."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from slimformer.cli import server
from slimformer.errors import SlimformerError

Handler = Callable[[argparse.Namespace], int]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in [0, 1)")
    return value


def _gguf_types(text: str) -> list[str]:
    types = [t.strip().lower() for t in text.split(",") if t.strip()]
    wrong = [t for t in types if t not in ("f16", "q8_0", "q4_k_m")]
    if wrong or not types:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give GGUF types from f16, q8_0, q4_k_m, separated by commas"
        )
    return types


TARGETS = ("transformers", "vllm", "llama.cpp", "onnx")


def _targets(text: str) -> list[str]:
    targets = [t.strip().lower() for t in text.split(",") if t.strip()]
    wrong = [t for t in targets if t not in TARGETS]
    if wrong or not targets:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give targets from {', '.join(TARGETS)}, separated by commas"
        )
    return targets


LAYOUT_HELP = (
    "per_layer (transformers, trust_remote_code), uniform (stock config, loads anywhere) or "
    "nemotron_nas (Llama: per-layer shapes vLLM and llama.cpp serve). Default: per_layer; when "
    "--targets names vllm or llama.cpp, nemotron_nas for FFN-only pruning of a Llama, else uniform"
)


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a budget in (0, 1]")
    return value


def run_guarded(handler: Handler, args: argparse.Namespace) -> int:
    """Run a command: library errors become one ``error: ...`` line and exit 2.

    With ``--debug`` they are raised (a traceback); Ctrl-C prints ``interrupted`` and exits 130.
    """
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


def build_parser(
    server_commands: Mapping[str, server.ServerCommand | None] | None = None,
) -> argparse.ArgumentParser:
    """The whole parser; ``server_commands`` (see ``server.load_commands``) defaults to all."""
    if server_commands is None:
        server_commands = server.load_commands()
    parser = argparse.ArgumentParser(
        prog="slimformer", description="Make transformers smaller and faster."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_local_commands(sub)
    server.add_commands(sub, server_commands)
    _add_client_commands(sub)
    return parser


# -- local commands: prune, distill, compress ------------------------------------------------------
def _add_local_commands(sub: argparse._SubParsersAction) -> None:
    prune = sub.add_parser(
        "prune", help="score and remove heads / FFN neurons / MLPs of a model, locally"
    )
    prune.add_argument("model", help="local model folder or Hub id")
    _add_model_arguments(prune)
    _add_data_arguments(prune)
    _add_prune_arguments(prune)

    distill = sub.add_parser("distill", help="distil a model into a smaller student, locally")
    distill.add_argument("model", metavar="TEACHER", help="local model folder or Hub id")
    _add_model_arguments(distill)
    _add_data_arguments(distill)
    _add_distill_arguments(distill)

    compress = sub.add_parser("compress", help="run a job spec (YAML or JSON) locally")
    compress.add_argument("spec", help="job spec file (see docs/job-spec.md)")
    compress.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    compress.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder"
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-model",
        metavar="HUB_ID",
        help="the Hub id a local model folder came from, for the card (found by "
        "itself for a Hugging Face cache folder)",
    )
    parser.add_argument(
        "--allow-new-head",
        action="store_true",
        help="go ahead when the checkpoint has no head for --task (the head is "
        "then random and untrained; the card says so)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="CSV, TSV, JSON lines, Parquet or plain text (.txt) file"
    )
    parser.add_argument(
        "--eval-data", help="file to evaluate on (default: a held-out fifth of --data)"
    )
    parser.add_argument("--text-column", help="column with the text (default: text, sentence, ...)")
    parser.add_argument("--text-pair-column", help="column with the second text of sentence pairs")
    parser.add_argument("--label-column", help="column with labels (default: label, when present)")
    parser.add_argument("--max-samples", type=int, help="use at most this many training rows")
    parser.add_argument(
        "--eval-samples",
        type=int,
        help="evaluate on at most this many rows (default 2000; causal LMs: 64 windows)",
    )
    parser.add_argument(
        "--task", choices=["text-classification", "text-generation", "feature-extraction"]
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.add_argument(
        "--onnx", action="store_true", help="also export model.onnx, checked with onnxruntime"
    )
    parser.add_argument(
        "--onnx-int8",
        action="store_true",
        help="also write model.int8.onnx (onnxruntime dynamic int8; implies --onnx)",
    )
    parser.add_argument(
        "--gguf",
        type=_gguf_types,
        help="also write GGUF files for llama.cpp, e.g. f16,q8_0,q4_k_m (needs `make engines`)",
    )
    parser.add_argument(
        "--targets",
        type=_targets,
        help="where the result must load, checked there: transformers,vllm,llama.cpp,onnx "
        "(default transformers; vllm and llama.cpp need `make engines`)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder"
    )


def _add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heads", type=_fraction, default=0.0, help="fraction of attention heads to remove"
    )
    parser.add_argument(
        "--ffn", type=_fraction, default=0.0, help="fraction of FFN neurons to remove"
    )
    parser.add_argument("--whole-mlps", type=int, default=0, help="number of whole MLPs to remove")
    parser.add_argument(
        "--macs-budget", type=_budget, help="keep at most this fraction of the MACs"
    )
    parser.add_argument(
        "--layout", choices=["per_layer", "uniform", "nemotron_nas"], help=LAYOUT_HELP
    )
    parser.add_argument(
        "--ranking",
        choices=["global", "per_layer", "adaptive"],
        help="default: global; adaptive for causal LMs (docs/pruning.md)",
    )
    parser.add_argument(
        "--importance",
        choices=["michel", "activations", "flap", "obs", "magnitude", "random"],
        help="default: michel; obs for causal LMs (docs/pruning.md)",
    )
    parser.add_argument(
        "--layers",
        type=float,
        default=0.0,
        help="whole layers to drop: a fraction (< 1) or a count",
    )
    parser.add_argument(
        "--depth-importance", choices=["block_influence", "metric_drop"], default="block_influence"
    )
    parser.add_argument(
        "--keep-first-layers",
        type=int,
        help="the first N layers keep their shape (default: 0; causal LMs: 1)",
    )
    parser.add_argument(
        "--keep-last-layers",
        type=int,
        help="the last N layers keep their shape (default: 0; causal LMs: 1)",
    )
    parser.add_argument(
        "--bias-compensation",
        choices=["on", "off"],
        help="fold removed units' mean output into a bias (default: flap only)",
    )
    parser.add_argument(
        "--reconstruction",
        choices=["on", "off"],
        help="refit pruned layers' output projections by least squares (default: obs only)",
    )
    parser.add_argument("--schedule", choices=["one_shot", "iterative"], default="one_shot")
    parser.add_argument(
        "--step", type=_fraction, default=0.1, help="iterative: fraction of what remains per step"
    )
    parser.add_argument(
        "--metric-floor",
        type=_budget,
        default=0.9,
        help="iterative: stop before the metric falls below this fraction of the original",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        help="calibration rows (default 512); causal LMs: windows of packed text",
    )


def _add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--student-layers", type=int, help="keep this many of the teacher's layers")
    group.add_argument(
        "--student", help="a smaller model (folder or Hub id) with the teacher's tokenizer"
    )
    parser.add_argument("--layer-selection", choices=["even", "importance"], default="even")
    recipe = " (default: the student's recipe, docs/distillation.md)"
    parser.add_argument("--temperature", type=float, help="soft-target temperature" + recipe)
    parser.add_argument("--alpha", type=float, help="weight of the gold-label loss" + recipe)
    parser.add_argument(
        "--hidden-loss",
        choices=["cosine", "mse", "none"],
        help="alignment of the student's layers with the teacher's" + recipe,
    )
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget of the distilling stage, its evaluations included "
        "(the final side-by-side evaluation comes after it)",
    )
    parser.add_argument("--learning-rate", type=float, help="peak learning rate" + recipe)


# -- client commands: talk to a running service ----------------------------------------------------
def _add_client_commands(sub: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--server",
        help="service URL (default: SLIMFORMER_SERVER, the config file "
        "written by `slimformer login`, else http://127.0.0.1:8000)",
    )
    connection.add_argument(
        "--api-key", help="API key (default: SLIMFORMER_API_KEY, else the config file)"
    )
    connection.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON (for scripts)")

    login = sub.add_parser(
        "login", parents=[connection], help="save the server URL and API key for later commands"
    )
    login.add_argument(
        "--no-verify", action="store_true", help="save without asking the server first"
    )

    _add_submit_command(sub, [connection, as_json])

    jobs = sub.add_parser(
        "jobs", parents=[connection, as_json], help="list your jobs on the service"
    )
    jobs.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20, help="at most this many (1-100; default 20)")
    jobs.add_argument("--cursor", help="next page: the cursor printed under the previous one")

    for name, text in (
        ("status", "show one job"),
        ("watch", "follow a job with a progress bar until it ends"),
        ("cancel", "cancel a queued or running job"),
        ("card", "print a finished job's evaluation card (Markdown)"),
    ):
        command = sub.add_parser(name, parents=[connection, as_json], help=text)
        command.add_argument("job_id", metavar="ID")
        if name == "card":
            command.add_argument("--html", action="store_true", help="the card rendered as HTML")

    download = sub.add_parser(
        "download",
        parents=[connection, as_json],
        help="download a finished job's model (resumable; sizes and SHA-256 verified)",
    )
    download.add_argument("job_id", metavar="ID")
    download.add_argument("--out", help="folder (default ./ID; with --tar, the current folder)")
    download.add_argument(
        "--tar", action="store_true", help="one streamed .tar.gz instead of the files"
    )


def _add_submit_command(
    sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    submit = sub.add_parser(
        "submit",
        parents=parents,
        help="submit a job to the service (a spec file, or flags)",
        description="Submit a compression job. Give a job spec file (docs/job-spec.md), or "
        "--model with --data/--hub-dataset and targets; flags override the file. "
        "Local data files are uploaded for you.",
    )
    submit.add_argument("spec", nargs="?", help="job spec file (YAML or JSON)")
    submit.add_argument("--model", help="Hub model id")
    submit.add_argument("--revision", help="branch, tag or commit of the model")
    submit.add_argument(
        "--task",
        choices=[
            "text-classification",
            "sentence-similarity",
            "feature-extraction",
            "text-generation",
        ],
    )
    source = submit.add_mutually_exclusive_group()
    source.add_argument("--data", help="local CSV, TSV, JSON lines or Parquet file (uploaded)")
    source.add_argument("--hub-dataset", help="Hub dataset id")
    submit.add_argument("--eval-data", help="local evaluation file (uploaded; with --data)")
    submit.add_argument("--hub-config", help="dataset configuration (with --hub-dataset)")
    submit.add_argument("--split", help="training split (with --hub-dataset; default train)")
    submit.add_argument(
        "--eval-split", help="evaluation split (with --hub-dataset; default validation)"
    )
    submit.add_argument("--text-column")
    submit.add_argument("--text-pair-column")
    submit.add_argument("--label-column")
    submit.add_argument("--max-samples", type=int, help="use at most this many training rows")
    submit.add_argument(
        "--method",
        choices=["prune", "distill", "prune_distill"],
        help="default: distill with --student-layers/--student, else prune",
    )
    submit.add_argument("--heads", type=_fraction, help="fraction of attention heads to remove")
    submit.add_argument("--ffn", type=_fraction, help="fraction of FFN neurons to remove")
    submit.add_argument("--whole-mlps", type=int, help="number of whole MLPs to remove")
    submit.add_argument(
        "--macs-budget", type=_budget, help="keep at most this fraction of the MACs"
    )
    submit.add_argument(
        "--layout", choices=["per_layer", "uniform", "nemotron_nas"], help=LAYOUT_HELP
    )
    submit.add_argument("--ranking", choices=["global", "per_layer", "adaptive"])
    submit.add_argument(
        "--importance", choices=["michel", "activations", "flap", "obs", "magnitude", "random"]
    )
    submit.add_argument("--schedule", choices=["one_shot", "iterative"])
    submit.add_argument("--step", type=_fraction)
    submit.add_argument("--metric-floor", type=_budget)
    submit.add_argument("--calibration-samples", type=int)
    submit.add_argument("--keep-first-layers", type=int)
    submit.add_argument("--keep-last-layers", type=int)
    submit.add_argument("--layers", type=float, help="whole layers to drop: a fraction or a count")
    submit.add_argument("--depth-importance", choices=["block_influence", "metric_drop"])
    submit.add_argument("--bias-compensation", choices=["on", "off"])
    submit.add_argument("--reconstruction", choices=["on", "off"])
    student = submit.add_mutually_exclusive_group()
    student.add_argument(
        "--student-layers", type=int, help="distil into this many of the teacher's layers"
    )
    student.add_argument("--student", help="distil into this smaller Hub model")
    submit.add_argument("--max-minutes", type=float, help="stop distilling after this many minutes")
    submit.add_argument("--epochs", type=float)
    submit.add_argument("--eval-samples", type=int, help="evaluate on at most this many rows")
    submit.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    submit.add_argument("--onnx", action="store_true", help="also export model.onnx")
    submit.add_argument("--gguf", type=_gguf_types, help="also write GGUF files: f16,q8_0,q4_k_m")
    submit.add_argument(
        "--targets",
        type=_targets,
        help="where the result must load: transformers,vllm,llama.cpp,onnx",
    )
    submit.add_argument(
        "--onnx-int8", action="store_true", help="also write model.int8.onnx (dynamic int8)"
    )
    submit.add_argument(
        "--publish", metavar="REPO", help="publish the result to this Hub repo (org/name)"
    )
    submit.add_argument("--public", action="store_true", help="make the published repo public")
    submit.add_argument("--seed", type=int)
    submit.add_argument(
        "--hub-token-env",
        metavar="VAR",
        help="environment variable holding a Hub token (private models, publishing)",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends"
    )
