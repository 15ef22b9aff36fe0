"""The Celery worker: ``slimformer worker`` builds the app, registers the one task and starts
consuming.

A worker on a machine with CUDA serves the ``gpu`` queue (and helps with ``cpu``); others serve
``cpu``.
"""

from __future__ import annotations

import logging
import os

from celery import Celery

from service.artifacts import make_artifact_store
from service.logs import configure_logging
from service.queue import TASK_NAME, make_celery, send_job
from service.reaper import Reaper, Retention
from service.settings import Settings
from service.store import JobStore
from workers.runner import JobRunner

logger = logging.getLogger(__name__)


def default_queues() -> list[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return ["gpu", "cpu"]
    except ImportError:
        pass
    return ["cpu"]


def build_worker_app(settings: Settings) -> tuple[Celery, JobStore]:
    app = make_celery(settings)
    store = JobStore(
        settings.resolved_database_url,
        pepper=settings.api_key_pepper,
        token_secret=settings.token_encryption_key,
    )
    state: dict = {}

    def send(job_id: str, queue: str, countdown: float | None) -> None:
        send_job(app, job_id, queue, countdown=countdown)

    def runner() -> JobRunner:
        # built lazily in each pool process (after fork), so no database connection crosses a fork
        if "runner" not in state:
            worker_store = JobStore(
                settings.resolved_database_url,
                pepper=settings.api_key_pepper,
                token_secret=settings.token_encryption_key,
            )
            state["runner"] = JobRunner(settings, worker_store, make_artifact_store(settings), send)
        return state["runner"]

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def compress(self, job_id: str) -> str:  # noqa: ANN001
        return runner().run(job_id)

    return app, store


def run_worker(
    settings: Settings,
    *,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    hostname: str | None = None,
    loglevel: str | None = None,
) -> None:
    configure_logging(settings.log_level, settings.log_format)
    app, store = build_worker_app(settings)
    store.create_schema()
    queues = queues or default_queues()

    def send(job_id: str, queue: str, countdown: float | None) -> None:
        send_job(app, job_id, queue, countdown=countdown)

    reaper = Reaper(
        store,
        send,
        interval=settings.reaper_interval_seconds,
        stale_after=settings.stale_after_seconds,
        requeue_queued_after=settings.requeue_queued_after_seconds,
        retention=Retention.from_settings(settings, make_artifact_store(settings)),
    )
    logger.info("worker serving queues %s with %s", ",".join(queues), settings.public_summary())
    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency or settings.worker_concurrency),
        "--pool",
        "prefork",
        "--loglevel",
        (loglevel or settings.log_level).upper(),
        "--without-mingle",
        "--without-gossip",
    ]
    if hostname:
        argv += ["--hostname", hostname]
    if settings.worker_metrics_port:
        from workers import metrics

        folder = settings.data_dir.resolve() / f"worker-metrics-{os.getpid()}"
        metrics.enable(folder, settings.worker_metrics_port)
    reaper.start()
    try:
        app.worker_main(argv)
    finally:
        reaper.stop()
