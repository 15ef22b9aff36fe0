"""The reaper: jobs whose worker died are requeued (bounded attempts) or failed with "worker lost";
and, when retention is configured, uploads and artifacts past their age are deleted.

Runs as a thread in every API and worker process; the store's conditional updates make concurrent
reapers safe (two reapers deleting the same upload both succeed).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from service.artifacts_base import ArtifactStore
from service.settings import Settings
from service.store import JobStore, NotFound

logger = logging.getLogger(__name__)

Send = Callable[[str, str, float | None], None]  # (job id, queue, countdown)


def reap_once(
    store: JobStore, send: Send, *, stale_after: float, requeue_queued_after: float
) -> tuple[int, int]:
    to_send, failed = store.reap(stale_after=stale_after, requeue_queued_after=requeue_queued_after)
    for job in to_send:
        logger.warning(
            "job %s: worker lost or message lost; sending it to the %s queue again",
            job["id"],
            job["queue"],
        )
        send(job["id"], job["queue"], None)
    for job in failed:
        logger.warning("job %s: worker lost and no attempts left; failed", job["id"])
    return len(to_send), len(failed)


DAY = 86400.0
RETENTION_BATCH = 100
RETENTION_BATCHES = 20  # per pass at most: a long backlog is worked off over several passes


@dataclass(frozen=True)
class Retention:
    """How long uploads and artifacts are kept (days; None keeps them forever)."""

    artifacts: ArtifactStore
    upload_days: float | None = None
    artifact_days: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: ArtifactStore) -> Retention | None:
        """The settings' retention, or None when both keep forever (0 or unset)."""
        uploads = settings.upload_retention_days or None
        kept = settings.artifact_retention_days or None
        if uploads is None and kept is None:
            return None
        return cls(artifacts, uploads, kept)


def expire_once(
    store: JobStore, retention: Retention, *, now: float | None = None
) -> tuple[int, int]:
    """Delete uploads and job artifacts older than their retention. Returns ``(uploads, jobs)``.

    An upload goes file first, then its record (a queued job that needs it then fails saying it
    was deleted). A job keeps its record: its artifacts are deleted, then it is marked
    ``stage: expired`` with ``artifacts_expired_at`` in its result, and the artifact routes answer
    410.
    """
    t = time.time() if now is None else now
    uploads = jobs = 0
    if retention.upload_days:
        for _ in range(RETENTION_BATCHES):
            batch = store.uploads_created_before(
                t - retention.upload_days * DAY, limit=RETENTION_BATCH
            )
            for upload in batch:
                retention.artifacts.delete_prefix(str(PurePosixPath(upload["path"]).parent))
                try:
                    store.delete_upload(upload["id"], owner=None)
                except NotFound:  # another reaper was first
                    continue
                uploads += 1
                logger.info(
                    "upload %s expired after %g days; deleted", upload["id"], retention.upload_days
                )
            if len(batch) < RETENTION_BATCH:
                break
    if retention.artifact_days:
        stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")
        message = (
            f"finished; its artifacts were deleted after {retention.artifact_days:g} days "
            "(SLIMFORMER_ARTIFACT_RETENTION_DAYS)"
        )
        for _ in range(RETENTION_BATCHES):
            batch = store.jobs_with_artifacts_finished_before(
                t - retention.artifact_days * DAY, limit=RETENTION_BATCH
            )
            for job in batch:
                retention.artifacts.delete_prefix(f"jobs/{job['id']}")
                if store.mark_artifacts_expired(job["id"], expired_at=stamp, message=message):
                    jobs += 1
                    logger.info("job %s: artifacts expired; deleted", job["id"])
            if len(batch) < RETENTION_BATCH:
                break
    return uploads, jobs


class Reaper:
    def __init__(
        self,
        store: JobStore,
        send: Send,
        *,
        interval: float,
        stale_after: float,
        requeue_queued_after: float,
        retention: Retention | None = None,
    ) -> None:
        self.store, self.send, self.interval = store, send, interval
        self.stale_after, self.requeue_queued_after = stale_after, requeue_queued_after
        self.retention = retention
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reap_once(
                    self.store,
                    self.send,
                    stale_after=self.stale_after,
                    requeue_queued_after=self.requeue_queued_after,
                )
            except Exception:  # a database blip must not kill the reaper
                logger.warning("reaper pass failed", exc_info=True)
            if self.retention is not None:
                try:
                    expire_once(self.store, self.retention)
                except Exception:  # nor an artifact store blip; the next pass tries again
                    logger.warning("retention pass failed", exc_info=True)
