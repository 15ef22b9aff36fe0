"""The queries behind the Prometheus metrics: jobs by status and queue, stale leases, and the
stage durations of recent successful jobs."""

from __future__ import annotations

from sqlalchemy import func, select

from service.store.base import StoreBase, now
from service.store.schema import jobs


class MetricsMixin(StoreBase):
    def counts_by_status(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.status, jobs.c.queue, func.count()).group_by(
                    jobs.c.status, jobs.c.queue
                )
            )
            return {(status, queue): n for status, queue, n in rows}

    def stale_running(self, stale_after: float) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.status == "running", jobs.c.heartbeat_at < now() - stale_after)
            ).scalar_one()

    def stage_durations(self, limit: int = 1000) -> list[dict]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(jobs.c.stage_seconds)
                    .where(jobs.c.status == "succeeded")
                    .order_by(jobs.c.finished_at.desc())
                    .limit(limit)
                )
                .scalars()
                .all()
            )
        return [r for r in rows if r]
