"""Client commands: talk to a running service (httpx and rich only; never torch or transformers).

``login``, ``submit``, ``jobs``, ``status``, ``watch``, ``cancel``, ``download`` and ``card``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from slimformer.cli import flags
from slimformer.cli.parser import Handler
from slimformer.cli.progress import duration as _duration
from slimformer.cli.specfile import load_spec_file
from slimformer.client import (
    TERMINAL,
    Client,
    ClientError,
    config_path,
    read_config,
    resolve_connection,
    write_config,
)
from slimformer.errors import InvalidSpec
from slimformer.formatting import format_metric, format_speedup


def _client(args: argparse.Namespace) -> Client:
    connection = resolve_connection(args.server, args.api_key)
    return Client(connection.server, api_key=connection.api_key)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _stdout_console() -> Console:
    """A console for tables; piped output gets room for whole ids, not rich's 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=200)
    return console


def _stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _eta(view: dict, prefix: str) -> str:
    if view.get("eta_seconds") is None:
        return ""
    return f"{prefix}ETA {_duration(view['eta_seconds'])}"


def _metrics_line(view: dict) -> str:
    """The job's primary metric, share of parameters and speed-up, written as the card writes
    them."""
    metrics = view.get("metrics") or {}
    parts = []
    metric = metrics.get("metric")
    if metric and metrics.get("original") is not None and metrics.get("compressed") is not None:
        before = format_metric(metrics["original"], metric)
        parts.append(f"{metric} {before} -> {format_metric(metrics['compressed'], metric)}")
    ratios = metrics.get("ratios") or {}
    if ratios.get("parameters") is not None:
        share = f"parameters {ratios['parameters']:.1%} of the original"
        if ratios.get("non_embedding_parameters") is not None:
            share += f" ({ratios['non_embedding_parameters']:.1%} of the non-embedding ones)"
        parts.append(share)
    if ratios.get("latency_speedup"):
        parts.append(f"{format_speedup(ratios['latency_speedup'])} at batch 1")
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
        reason = error.get("message") or view.get("message") or "no reason given"
        print(f"error: job {job_id} failed: {reason}", file=sys.stderr)
        return 1
    print(f"error: job {job_id} was cancelled", file=sys.stderr)
    return 1


def _follow(client: Client, job_id: str, *, as_json: bool) -> int:
    """Follow a job to its end: a live bar on a terminal, a line per stage elsewhere, NDJSON with
    --json."""
    last = None
    console = _stderr_console()
    try:
        if as_json:
            for view in client.follow(job_id):
                print(json.dumps(view), flush=True)
                last = view
        elif console.is_terminal:
            columns = (
                TextColumn("[bold]{task.fields[stage]:<12}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[eta]}"),
                TimeElapsedColumn(),
                TextColumn("{task.description}"),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                task = progress.add_task("", total=1.0, stage="queued", eta="")
                for view in client.follow(job_id):
                    last = view
                    progress.update(
                        task,
                        completed=view["progress"],
                        stage=view.get("stage") or view["status"],
                        eta=_eta(view, ""),
                        description=(view.get("message") or "")[:60],
                    )
        else:
            shown = None
            for view in client.follow(job_id):
                last = view
                key = (view["status"], view.get("stage"))
                if key != shown:
                    shown = key
                    line = (
                        f"{view['status']:<9} {view.get('stage') or '':<12} "
                        f"{view['progress']:>4.0%}{_eta(view, ', ')}  "
                        f"{view.get('message') or ''}"
                    )
                    print(line.rstrip(), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"stopped watching; the job goes on (`slimformer watch {job_id}`)", file=sys.stderr)
        return 130
    if last is None or last["status"] not in TERMINAL:
        last = client.job(job_id)
    return _finish(last)


# the spec flags of ``submit`` (slimformer/cli/flags.py): laid over the spec file, if any
SUBMIT_FLAGS = (
    flags.REVISION,
    flags.TASK,
    *flags.data_flags(uploaded=True),
    flags.HUB_DATASET,
    *flags.HUB_SPLITS,
    *flags.COLUMNS,
    flags.METHOD,
    *flags.PRUNE,
    *flags.STUDENT,
    flags.LAYER_SELECTION,
    *flags.DISTILL,
    *flags.EVALUATION,
    *flags.EXPORT,
    *flags.PUBLISH,
    flags.SEED,
)


def _submit_spec(args: argparse.Namespace) -> tuple[dict, Path]:
    """The spec from the file (if any) with the flags laid over it, and the folder its relative
    paths start from."""
    if args.spec:
        data, path = load_spec_file(args.spec)
        base = path.resolve().parent
    else:
        data, base = {}, Path.cwd()
    given = flags.spec_values(args, SUBMIT_FLAGS)
    if args.model:
        given.setdefault("model", {})["id"] = args.model
    dataset = given.get("dataset", {})
    for key in ("path", "eval_path"):
        if key in dataset:
            dataset[key] = str(Path(dataset[key]).resolve())
    if ("path" in dataset or "hub_id" in dataset) and isinstance(data.get("dataset"), dict):
        for key in ("path", "eval_path", "hub_id", "upload_id", "eval_upload_id", "config"):
            data["dataset"].pop(key, None)  # another data source replaces the file's
    student = given.get("distill", {}).get("student")
    if student and isinstance(data.get("distill"), dict):
        data["distill"].pop("student", None)  # a student on the command line replaces the file's
    if not args.method and not args.spec:
        given["method"] = (
            "distill" if student and ("layers" in student or "id" in student) else "prune"
        )
    if "repo_id" not in given.get("publish", {}) and not isinstance(data.get("publish"), dict):
        given.pop("publish", None)  # --public says how to publish; --publish (or the file) where
    flags.merge(data, given)
    if not data.get("model") or not data.get("dataset"):
        raise InvalidSpec(
            "give a spec file, or --model and a data source (--data FILE or --hub-dataset ID)"
        )
    return data, base


def _upload_local_files(client: Client, data: dict, base: Path) -> None:
    """Upload ``dataset.path`` / ``eval_path`` and put their upload ids in their place."""
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
        print(
            f"uploaded {path.name}: {upload['rows']} rows, columns {columns} "
            f"({upload['upload_id']})",
            file=sys.stderr,
        )
        del dataset[local]
        dataset[remote] = upload["upload_id"]


def submit(args: argparse.Namespace) -> int:
    """``slimformer submit``: a spec file and/or flags; local data files are uploaded first."""
    data, base = _submit_spec(args)
    token = None
    if args.hub_token_env:
        token = os.environ.get(args.hub_token_env)
        if not token:
            raise ClientError(
                f"--hub-token-env {args.hub_token_env}: that environment variable is not set"
            )
    with _client(args) as client:
        _upload_local_files(client, data, base)
        view = client.submit(data, hub_token=token)
        if args.json and not args.wait:
            _print_json(view)
            return 0
        print(view["id"], flush=True)
        if not args.wait:
            print(
                f"submitted job {view['id']} ({view['status']}); follow it with "
                f"`slimformer watch {view['id']}`",
                file=sys.stderr,
            )
            return 0
        return _follow(client, view["id"], as_json=args.json)


def login(args: argparse.Namespace) -> int:
    """``slimformer login``: check the server and key, then save them to the config file."""
    saved = read_config()
    connection = resolve_connection(args.server, args.api_key, config=saved)
    api_key = connection.api_key
    asks = args.api_key is None and os.environ.get("SLIMFORMER_API_KEY") is None
    if asks and sys.stdin.isatty():
        typed = getpass.getpass(
            f"API key for {connection.server} (empty: none, or keep the saved one): "
        ).strip()
        api_key = typed or api_key
    if not args.no_verify:
        with Client(connection.server, api_key=api_key) as client:
            try:
                client.jobs(limit=1)
            except ClientError as err:
                if err.status == 401:
                    raise ClientError(
                        f"the server at {connection.server} refused the key: {err.message}"
                    ) from None
                raise
    path = write_config({"server": connection.server, "api_key": api_key or ""}, config_path())
    key_note = "with an API key" if api_key else "without an API key"
    print(f"saved {connection.server} ({key_note}) to {path}", file=sys.stderr)
    return 0


_STATUS_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "queued": "blue",
}


def _jobs_table(listing: dict) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (
        ("ID", "left"),
        ("STATUS", "left"),
        ("STAGE", "left"),
        ("PROGRESS", "right"),
        ("MODEL", "left"),
        ("METHOD", "left"),
        ("CREATED", "left"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("ID", "CREATED"))
    for job in listing["items"]:
        spec = job.get("spec") or {}
        status = job["status"]
        table.add_row(
            job["id"],
            f"[{_STATUS_COLOURS.get(status, 'white')}]{status}[/]",
            job.get("stage") or "",
            f"{job['progress']:.0%}",
            (spec.get("model") or {}).get("id", ""),
            spec.get("method", ""),
            job["created_at"][:19].replace("T", " "),
        )
    return table


def jobs(args: argparse.Namespace) -> int:
    """``slimformer jobs``: one page of the caller's jobs."""
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


def status(args: argparse.Namespace) -> int:
    """``slimformer status ID``."""
    with _client(args) as client:
        view = client.job(args.job_id)
    if args.json:
        _print_json(view)
        return 0
    spec = view.get("spec") or {}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", view["id"]),
        ("status", view["status"]),
        ("stage", view.get("stage") or ""),
        ("progress", f"{view['progress']:.0%}" + _eta(view, ", ")),
        ("message", view.get("message") or ""),
        ("model", (spec.get("model") or {}).get("id", "")),
        ("method", spec.get("method", "")),
        ("attempts", f"{view['attempts']} of {view['max_attempts']}"),
        ("created", view["created_at"]),
        ("started", view.get("started_at") or ""),
        ("finished", view.get("finished_at") or ""),
    ]
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


def watch(args: argparse.Namespace) -> int:
    """``slimformer watch ID``."""
    with _client(args) as client:
        return _follow(client, args.job_id, as_json=args.json)


def cancel(args: argparse.Namespace) -> int:
    """``slimformer cancel ID``."""
    with _client(args) as client:
        view = client.cancel(args.job_id)
    if args.json:
        _print_json(view)
    elif view["status"] == "cancelled":
        print(f"cancelled job {view['id']}", file=sys.stderr)
    else:
        print(f"cancel requested: job {view['id']} stops at its next check", file=sys.stderr)
    return 0


def card(args: argparse.Namespace) -> int:
    """``slimformer card ID``: the evaluation card, Markdown or HTML."""
    form = "html" if args.html else "markdown"
    with _client(args) as client:
        text = client.card(args.job_id, format=form)
    if args.json:
        _print_json({"job_id": args.job_id, "format": form, "card": text})
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _download_with_bars(client: Client, job_id: str, out: Path, console: Console) -> list:
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks = {}

        def on_file(path: str, size: int, have: int) -> None:
            tasks[path] = progress.add_task(path[-28:], total=size, completed=have)

        def on_bytes(path: str, n: int) -> None:
            progress.advance(tasks[path], n)

        return client.download(job_id, out, on_file=on_file, on_bytes=on_bytes)


def download(args: argparse.Namespace) -> int:
    """``slimformer download ID``: the files (resumable, verified) or one ``.tar.gz``."""
    console = _stderr_console()
    with _client(args) as client:
        if args.tar:
            target = client.download_tarball(args.job_id, Path(args.out or "."))
            if args.json:
                _print_json(
                    {"job_id": args.job_id, "archive": str(target), "size": target.stat().st_size}
                )
            else:
                print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
            return 0
        out = Path(args.out or args.job_id)
        if console.is_terminal and not args.json:
            results = _download_with_bars(client, args.job_id, out, console)
        else:
            results = client.download(args.job_id, out)
    if args.json:
        files = [
            {"path": r.path, "size": r.size, "fetched": r.fetched, "resumed_from": r.resumed_from}
            for r in results
        ]
        _print_json({"job_id": args.job_id, "out": str(out), "files": files})
        return 0
    for r in results:
        if r.resumed_from and not r.skipped:
            print(f"resumed {r.path} at byte {r.resumed_from:,} of {r.size:,}", file=sys.stderr)
    skipped = sum(r.skipped for r in results)
    total = sum(r.size for r in results)
    print(
        f"downloaded {len(results)} files ({total / 1e6:.1f} MB) to {out}"
        + (f"; {skipped} were already complete" if skipped else "")
        + ", sizes and SHA-256 verified",
        file=sys.stderr,
    )
    return 0


HANDLERS: dict[str, Handler] = {
    "login": login,
    "submit": submit,
    "jobs": jobs,
    "status": status,
    "watch": watch,
    "cancel": cancel,
    "download": download,
    "card": card,
}
