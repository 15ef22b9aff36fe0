"""Jobs, the workers' side: a running job is leased to one worker (its ``worker`` name plus a
fresh ``heartbeat_at``). Claim, heartbeat, finish and requeue, and the reaper's queries, which put
back or fail the jobs whose worker is gone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, func, select, update

from service.store.base import TERMINAL, now
from service.store.job_records import JobsMixin
from service.store.schema import jobs


class LeasesMixin(JobsMixin):
    def claim(self, job_id: str, worker: str, *, stale_after: float) -> dict | None:
        """Lease the job to ``worker``: queued, or running with a stale heartbeat (its worker died).

        Returns the job, or None when someone else holds it, it ended, or it was cancelled.
        """
        t = now()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.cancel_requested.is_(False),
                    (jobs.c.status == "queued")
                    | ((jobs.c.status == "running") & (jobs.c.heartbeat_at < t - stale_after)),
                )
                .values(
                    status="running",
                    worker=worker,
                    heartbeat_at=t,
                    attempts=jobs.c.attempts + 1,
                    started_at=func.coalesce(jobs.c.started_at, t),
                    retry_at=None,
                    message="started",
                )
            )
        if done.rowcount != 1:
            return None
        return self.get_job(job_id)

    def heartbeat(self, job_id: str, worker: str, **fields: Any) -> str:
        """Write progress fields and the heartbeat. Returns ``ok``, ``cancel`` or ``lost`` (no
        longer our job)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == "running")
                .values(heartbeat_at=now(), **fields)
            )
            if done.rowcount != 1:
                return "lost"
            flag = conn.execute(
                select(jobs.c.cancel_requested).where(jobs.c.id == job_id)
            ).scalar_one()
        return "cancel" if flag else "ok"

    def finish(self, job_id: str, worker: str, status: str, **fields: Any) -> bool:
        """End the job (and wipe its Hub token). False when the lease was lost meanwhile."""
        assert status in TERMINAL
        with self.engine.begin() as conn:
            had_token = conn.execute(
                select(jobs.c.hub_token.is_not(None)).where(jobs.c.id == job_id)
            ).scalar()
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == "running")
                .values(
                    status=status,
                    finished_at=now(),
                    hub_token=None,
                    eta_seconds=0.0 if status == "succeeded" else None,
                    **fields,
                )
            )
        if done.rowcount == 1 and had_token:
            self._forget_wiped_tokens()
        return done.rowcount == 1

    def requeue(
        self, job_id: str, worker: str, *, delay: float, message: str, error: dict | None = None
    ) -> bool:
        """Give a job back to the queue after a transient failure (the caller sends the message)."""
        t = now()
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == "running")
                .values(
                    status="queued",
                    worker=None,
                    enqueued_at=t,
                    retry_at=t + delay,
                    message=message,
                    error_code=(error or {}).get("code"),
                    error_message=(error or {}).get("message"),
                )
            )
        return done.rowcount == 1

    def hub_token(self, job: dict) -> str | None:
        return self.cipher.decrypt(job["hub_token"]) if job.get("hub_token") else None

    # -- the reaper ----------------------------------------------------------------------------
    def reap(
        self, *, stale_after: float, requeue_queued_after: float
    ) -> tuple[list[dict], list[dict]]:
        """Find jobs whose worker is gone. Returns ``(to_send, failed)``: jobs put back in the queue
        (send them to the broker) and jobs failed for good because they used up their attempts."""
        t = now()
        to_send, failed = [], []
        wiped = False
        stale, forgotten = self._lost_jobs(t, stale_after, requeue_queued_after)
        for job in stale:
            outcome = self._settle_stale(job, t, stale_after)
            if outcome == "queued":
                to_send.append(job)
            elif outcome == "failed":
                failed.append(job)
            if outcome in ("cancelled", "failed"):  # the update wiped its Hub token
                wiped = wiped or job["hub_token"] is not None
        for job in forgotten:
            if self._resend_forgotten(job, t):
                to_send.append(job)
        if wiped:
            self._forget_wiped_tokens()
        return to_send, failed

    def _lost_jobs(
        self, t: float, stale_after: float, requeue_queued_after: float
    ) -> tuple[Sequence[RowMapping], Sequence[RowMapping]]:
        """Running jobs without a heartbeat for ``stale_after`` seconds, and queued ones no worker
        took (or retried) for ``requeue_queued_after`` seconds (their broker message was lost)."""
        with self.engine.connect() as conn:
            stale = (
                conn.execute(
                    select(jobs).where(
                        jobs.c.status == "running", jobs.c.heartbeat_at < t - stale_after
                    )
                )
                .mappings()
                .all()
            )
            forgotten = (
                conn.execute(
                    select(jobs).where(
                        jobs.c.status == "queued",
                        jobs.c.enqueued_at < t - requeue_queued_after,
                        (jobs.c.retry_at.is_(None)) | (jobs.c.retry_at < t - requeue_queued_after),
                    )
                )
                .mappings()
                .all()
            )
        return stale, forgotten

    def _settle_stale(self, job: RowMapping, t: float, stale_after: float) -> str | None:
        """End the lease of a job whose worker is gone: cancelled if a cancel was requested, back
        in the queue while it has attempts left, else failed. Returns the new status, or None
        when the job moved meanwhile (a heartbeat came, someone else settled it)."""
        if job["cancel_requested"]:
            values = dict(
                status="cancelled",
                finished_at=t,
                hub_token=None,
                worker=None,
                message="cancelled (its worker was lost)",
            )
        elif job["attempts"] < job["max_attempts"]:
            values = dict(
                status="queued",
                worker=None,
                enqueued_at=t,
                message=(
                    f"worker lost; retrying (attempt {job['attempts'] + 1} of "
                    f"{job['max_attempts']})"
                ),
            )
        else:
            values = dict(
                status="failed",
                finished_at=t,
                hub_token=None,
                error_code="worker_lost",
                error_message=f"worker lost: no heartbeat for {stale_after:.0f} s, "
                f"{job['attempts']} attempts used",
            )
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    (jobs.c.id == job["id"])
                    & (jobs.c.status == "running")
                    & (jobs.c.heartbeat_at == job["heartbeat_at"])
                )
                .values(**values)
            )
        return values["status"] if done.rowcount == 1 else None

    def _resend_forgotten(self, job: RowMapping, t: float) -> bool:
        """Restart the requeue clock of a queued job no worker took. False if it moved meanwhile."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job["id"],
                    jobs.c.status == "queued",
                    jobs.c.enqueued_at == job["enqueued_at"],
                )
                .values(enqueued_at=t)
            )
        return done.rowcount == 1
