"""Prometheus metrics of a worker, counted in the pool process that runs the job and served by the
worker's main process (prometheus_client's multiprocess mode: every process writes to files in one
folder).

``enable(folder)`` must run before this process first imports prometheus_client, so the pool
children that Celery forks afterwards count into the shared folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_metrics: dict | None = None


def enable(folder: Path, port: int) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, registry=registry)


def get() -> dict:
    """The worker's metrics (a no-op registry when metrics are off: counting never fails a job)."""
    global _metrics
    if _metrics is None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else CollectorRegistry()
        kwargs = {"registry": registry} if registry is not None else {}
        _metrics = {
            "jobs": Counter(
                "slimformer_worker_jobs",
                "Jobs a worker finished, by outcome",
                ["outcome"],
                **kwargs,
            ),
            "job_seconds": Histogram(
                "slimformer_worker_job_seconds",
                "Wall time of a job on a worker",
                ["outcome"],
                buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
                **kwargs,
            ),
            "stage_seconds": Histogram(
                "slimformer_worker_stage_seconds",
                "Wall time per pipeline stage",
                ["stage"],
                buckets=(0.1, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
                **kwargs,
            ),
        }
    return _metrics
