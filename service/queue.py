"""The Celery application: one task, ``slimformer.compress(job_id)``, on explicitly named queues.

The broker is Redis when ``REDIS_URL`` is set, otherwise Celery's ``filesystem://`` transport in
the data dir (embedded mode). Results live in the job store, never in a result backend. Importing
this module does not import torch: the API uses it only to send tasks; ``workers.tasks`` registers
the task on the same app.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from service.settings import Settings

TASK_NAME = "slimformer.compress"
QUEUES = ("cpu", "gpu")


def broker_options(settings: Settings) -> tuple[str, dict]:
    if settings.redis_url:
        return settings.redis_url, {
            # Redis redelivers a job whose worker vanished without acknowledging it after this long
            "visibility_timeout": settings.resolved_visibility_timeout,
        }
    folder = settings.broker_dir
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,  # the worker starts a job within a tenth of a second of its POST
    }


def make_celery(settings: Settings) -> Celery:
    broker, transport_options = broker_options(settings)
    app = Celery("slimformer", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        # a job is acknowledged after it ran, so a lost worker's job is redelivered
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds only the job it runs
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],
        # a typo in a queue name is an error, not a silent new queue
        task_create_missing_queues=False,
        task_default_queue="cpu",
        task_time_limit=settings.job_time_limit_seconds,
        task_soft_time_limit=max(60, settings.job_time_limit_seconds - 60),
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if settings.redis_url:
        app.conf.result_backend = None
    return app


def send_job(app: Celery, job_id: str, queue: str, *, countdown: float | None = None) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; the queues are {', '.join(QUEUES)}")
    app.send_task(TASK_NAME, args=[job_id], queue=queue, countdown=countdown)


def queue_depths(app: Celery, settings: Settings) -> dict[str, int]:
    """Messages waiting in each queue (Redis lists or files in the filesystem queue)."""
    depths = {}
    if settings.redis_url:
        with app.connection_for_read() as conn:
            client = conn.default_channel.client
            for name in QUEUES:
                depths[name] = int(client.llen(name))
    else:
        folder = settings.broker_dir / "queue"
        files = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        for name in QUEUES:
            depths[name] = sum(1 for f in files if f.endswith(f".{name}.msg"))
    return depths
