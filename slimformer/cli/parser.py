"""The ``slimformer`` argument parser, its shared argument types and the one error guard."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from slimformer.cli import flags, server
from slimformer.errors import SlimformerError

Handler = Callable[[argparse.Namespace], int]


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
    flags.add_flags(parser, flags.MODEL_ORIGIN)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    data, eval_data = flags.data_flags(uploaded=False)
    flags.add_flag(parser, data, required=True)
    flags.add_flag(parser, eval_data)
    flags.add_flags(parser, (*flags.COLUMNS, flags.EVALUATION[0], flags.TASK))
    flags.add_flags(parser, (*flags.EVALUATION[1:], *flags.EXPORT))
    flags.add_flag(parser, flags.SEED)
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder"
    )


def _add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_flags(parser, flags.PRUNE)


def _add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    flags.add_flags(parser.add_mutually_exclusive_group(required=True), flags.STUDENT)
    flags.add_flags(parser, (flags.LAYER_SELECTION, *flags.DISTILL))


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
    flags.add_flags(submit, (flags.REVISION, flags.TASK))
    data, eval_data = flags.data_flags(uploaded=True)
    source = submit.add_mutually_exclusive_group()
    flags.add_flags(source, (data, flags.HUB_DATASET))
    flags.add_flags(submit, (eval_data, *flags.HUB_SPLITS, *flags.COLUMNS))
    flags.add_flag(
        submit,
        flags.METHOD,
        help="Default: distill with --student-layers/--student, else prune.",
    )
    flags.add_flags(submit, flags.PRUNE)
    flags.add_flags(submit.add_mutually_exclusive_group(), flags.STUDENT)
    flags.add_flags(submit, (flags.LAYER_SELECTION, *flags.DISTILL))
    flags.add_flags(submit, (*flags.EVALUATION, *flags.EXPORT, *flags.PUBLISH, flags.SEED))
    submit.add_argument(
        "--hub-token-env",
        metavar="VAR",
        help="environment variable holding a Hub token (private models, publishing)",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar until it ends"
    )
