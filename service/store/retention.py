"""Retention: the uploads and the artifacts of finished jobs that are old enough to delete, and
marking a job whose artifacts were deleted."""

from __future__ import annotations

from sqlalchemy import select, update

from service.store.job_records import JobsMixin
from service.store.schema import jobs, uploads


class RetentionMixin(JobsMixin):
    def uploads_created_before(self, before: float, *, limit: int = 100) -> list[dict]:
        """Uploads older than ``before`` (a UNIX time), oldest first."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(uploads)
                    .where(uploads.c.created_at < before)
                    .order_by(uploads.c.created_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def jobs_with_artifacts_finished_before(self, before: float, *, limit: int = 100) -> list[dict]:
        """Succeeded jobs that finished before ``before`` and whose artifacts have not expired."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(jobs.c.id, jobs.c.finished_at)
                    .where(
                        jobs.c.status == "succeeded",
                        jobs.c.finished_at < before,
                        jobs.c.stage.is_(None) | (jobs.c.stage != "expired"),
                    )
                    .order_by(jobs.c.finished_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def mark_artifacts_expired(self, job_id: str, *, expired_at: str, message: str) -> bool:
        """Record on a succeeded job that its artifacts were deleted: stage ``expired``, the
        message, and ``artifacts_expired_at`` (ISO 8601) in its result. False if already marked."""
        job = self.get_job(job_id)
        result = dict(job.get("result") or {}) | {"artifacts_expired_at": expired_at}
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.status == "succeeded",
                    jobs.c.stage.is_(None) | (jobs.c.stage != "expired"),
                )
                .values(stage="expired", message=message, result=result)
            )
        return done.rowcount == 1
