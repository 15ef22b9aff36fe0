"""Local commands: ``prune``, ``distill`` and ``compress`` run the pipeline on this machine.

The Hub token comes from huggingface_hub's own resolution (``HF_TOKEN``, the token ``hf auth login``
saved, ``HF_TOKEN_PATH``); it goes to the Hub calls only and is printed nowhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from slimformer.cli import flags
from slimformer.cli.parser import Handler
from slimformer.cli.progress import duration, progress_for
from slimformer.cli.specfile import load_spec_file
from slimformer.errors import InvalidSpec, SlimformerError, Unauthorized
from slimformer.formatting import (  # the card's formatting: the summary reads like the card
    format_agreement,
    format_change,
    format_metric,
    format_ms,
    format_number,
    format_relative,
    format_speedup,
)
from slimformer.spec import JobSpec, stages_for

REDACTED = "hf_***"


def quiet_libraries() -> None:
    """Silence transformers' warnings and progress bars (not with ``--debug``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers  # heavy (torch): imported only when a local command runs

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class _WarningLines(logging.Handler):
    """slimformer's warnings as ``warning: ...`` lines on standard error, secrets removed.

    Writes to ``sys.stderr`` as it is at each call, so a live progress bar (which swaps it) keeps
    its place below the line.
    """

    def __init__(self, secret: str | None) -> None:
        super().__init__(logging.WARNING)
        self.secret = secret

    def emit(self, record: logging.LogRecord) -> None:
        text = _redact(record.getMessage(), self.secret)
        print(f"warning: {text}", file=sys.stderr, flush=True)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text


def hub_token() -> str | None:
    """The Hub token huggingface_hub would use: ``HF_TOKEN``, else the saved login
    (``HF_TOKEN_PATH``)."""
    from huggingface_hub import get_token

    return get_token()


def _print_summary(report: dict) -> None:
    evaluation = report["evaluation"]
    before, after = evaluation["original"], evaluation["compressed"]
    base = report["base_model"]
    table = Table(title=f"{base['id']} ({base['task']}, {report['spec']['method']})")
    for column, justify in (
        ("", "left"),
        ("original", "right"),
        ("compressed", "right"),
        ("change", "right"),
    ):
        table.add_column(column, justify=justify)
    for name, value in before["metrics"].items():
        other = after["metrics"].get(name)
        table.add_row(
            name,
            format_metric(value, name),
            format_metric(other, name),
            format_change(value, other, name),
        )
    if evaluation.get("agreement") is not None:
        agreement = format_agreement(evaluation["agreement"], evaluation["task"])
        table.add_row("agreement", "", agreement, "")
    sizes = [("parameters", before["parameters"], after["parameters"])]
    if before.get("embedding_parameters") is not None:  # reports before it lack the count
        sizes.append(
            (
                "non-embedding parameters",
                before["parameters"] - before["embedding_parameters"],
                after["parameters"] - after["embedding_parameters"],
            )
        )
    sizes.append(("MACs", before["macs"], after["macs"]))
    for label, was, now in sizes:
        table.add_row(label, format_number(was), format_number(now), format_relative(was, now))
    if before.get("latency") and after.get("latency"):
        table.add_row(
            "latency p50 b1 (ms)",
            format_ms(before["latency"]["batch1_p50_ms"]),
            format_ms(after["latency"]["batch1_p50_ms"]),
            format_speedup(evaluation["ratios"]["latency_speedup"]),
        )
    pruning = report.get("pruning")
    if pruning:
        for label, total, kept in (
            ("heads", "original_heads_per_layer", "heads_per_layer"),
            ("FFN neurons", "original_neurons_per_layer", "neurons_per_layer"),
        ):
            table.add_row(
                label,
                format_number(sum(pruning[total])),
                format_number(sum(pruning[kept])),
                format_relative(sum(pruning[total]), sum(pruning[kept])),
            )
    Console().print(table)


# the spec flags of the local commands (slimformer/cli/flags.py)
COMMON_FLAGS = (
    *flags.MODEL_ORIGIN,
    flags.TASK,
    *flags.data_flags(uploaded=False),
    *flags.COLUMNS,
    *flags.EVALUATION,
    *flags.EXPORT,
    flags.SEED,
)
PRUNE_FLAGS = (*COMMON_FLAGS, *flags.PRUNE)
DISTILL_FLAGS = (*COMMON_FLAGS, *flags.STUDENT, flags.LAYER_SELECTION, *flags.DISTILL)


def _spec_data(args: argparse.Namespace, method: str, spec_flags: tuple) -> dict[str, Any]:
    data = {"model": {"id": args.model}, "method": method}
    return flags.merge(data, flags.spec_values(args, spec_flags))


def _validated(data: dict, spec_flags: tuple = ()) -> JobSpec:
    """The job spec, or one clear error: the first problem, named by its flag where a flag set
    it (``--heads: ...``), else by its path in the spec."""
    try:
        return JobSpec.model_validate(data, context={"local_files": True})
    except ValidationError as err:
        first = err.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        flag = flags.flag_for(path, spec_flags)
        where = f"{flag} ({path})" if flag and path else flag or path or "spec"
        more = err.error_count() - 1
        message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing
        raise InvalidSpec(
            f"{where}: {message}" + (f" (and {more} more problems)" if more else "")
        ) from None


def _check_before_running(spec: JobSpec, token: str | None) -> None:
    """What can be known wrong in a second is said before a model loads."""
    from slimformer.data import check_data_file

    for path in (spec.dataset.path, spec.dataset.eval_path):
        if path:
            check_data_file(path)
    if spec.publish is not None and not token:
        raise Unauthorized(
            f"publishing to {spec.publish.repo_id} needs a Hub token with write access: set "
            "HF_TOKEN, or log in once with `hf auth login`",
            details={"repo_id": spec.publish.repo_id},
        )


def _run_spec(spec: JobSpec, args: argparse.Namespace) -> int:
    token = hub_token()
    try:
        return _run_with_token(spec, args, token)
    except SlimformerError as err:
        # no message of ours holds the token; a library's might, so it never reaches the screen
        if token and token in str(err):
            err.message = _redact(str(err), token)
            err.args = (err.message,)
            err.details = {}
        raise


def _run_with_token(spec: JobSpec, args: argparse.Namespace, token: str | None) -> int:
    _check_before_running(spec, token)
    from slimformer.pipeline import run  # heavy (torch, transformers)

    handler = None
    library_logger = logging.getLogger("slimformer")
    if not args.debug:
        handler = _WarningLines(token)
        library_logger.addHandler(handler)
        library_logger.propagate = False
    progress = progress_for(stages_for(spec))

    def update(stage: str, fraction: float, message: str) -> None:
        progress.update(stage, fraction, _redact(message, token))

    try:
        with tempfile.TemporaryDirectory(prefix="slimformer-") as workdir, progress:
            result = run(
                spec,
                workdir,
                on_progress=update,
                out_dir=args.out,
                overwrite=args.overwrite,
                token=token,
            )
    finally:
        if handler is not None:
            library_logger.removeHandler(handler)
            library_logger.propagate = True
    _print_summary(result.report)
    remote = result.report["artifacts"]["per_layer"]
    took = duration(result.report["seconds"].get("total"))
    print(
        f"wrote {args.out} in {took}"
        + (" (load with trust_remote_code=True)" if remote else "")
        + "; card: README.md"
    )
    if result.published:
        where = result.published.get("pr_url") or result.published["commit_url"]
        print(f"published to {spec.publish.repo_id}: {where}")
    return 0


def prune(args: argparse.Namespace) -> int:
    """``slimformer prune``."""
    spec = _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)
    return _run_spec(spec, args)


def distill_spec(args: argparse.Namespace) -> JobSpec:
    """The job spec of ``slimformer distill``: settings not given stay null, so the student's
    recipe fills them (``bench/distillation.py`` builds its specs here too).
    """
    data = _spec_data(args, "distill", DISTILL_FLAGS)
    student = data["distill"]["student"]
    if "id" in student:  # the layer selection is a layer-dropped student's
        student.pop("layer_selection", None)
    return _validated(data, DISTILL_FLAGS)


def distill(args: argparse.Namespace) -> int:
    """``slimformer distill``."""
    return _run_spec(distill_spec(args), args)


def compress(args: argparse.Namespace) -> int:
    """``slimformer compress SPEC``: relative data paths in the spec start at the spec's folder."""
    data, path = load_spec_file(args.spec)
    dataset = data.get("dataset")
    if isinstance(dataset, dict):
        for key in ("path", "eval_path"):
            value = dataset.get(key)
            if isinstance(value, str) and not Path(value).is_absolute():
                dataset[key] = str((path.parent / value).resolve())
    return _run_spec(_validated(data), args)


HANDLERS: dict[str, Handler] = {"prune": prune, "distill": distill, "compress": compress}
