"""``slimformer worker``: run a Celery worker that takes jobs from the queue.

Registered as the ``worker`` entry point in the ``slimformer.commands`` group (see
``slimformer.cli.server.ServerCommand``); the service spawns it as
``python -m slimformer.cli worker``.
"""

from __future__ import annotations

import argparse

from service.commands import Command, add_data_dir_argument, open_store, settings_from


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser)
    parser.add_argument(
        "--queues", help="comma-separated queues (default: gpu,cpu with CUDA, else cpu)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="jobs at once (default SLIMFORMER_WORKER_CONCURRENCY or 1)"
    )
    parser.add_argument("--hostname", help="Celery node name (default celery@HOST)")


def worker(args: argparse.Namespace) -> int:
    """Check the job store, then consume jobs until stopped."""
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    open_store(settings, migrate=False).dispose()
    # Celery and the job runner: heavy, so `slimformer --help` loads this module without them
    from workers.tasks import run_worker

    queues = args.queues.split(",") if args.queues else None
    run_worker(settings, queues=queues, concurrency=args.concurrency, hostname=args.hostname)
    return 0


worker_command = Command(
    help="run a worker that takes jobs from the queue", add_arguments=_worker_arguments, run=worker
)
