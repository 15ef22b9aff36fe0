"""Jobs, the API's side: create (idempotent, within the owner's active-job limit), read, list
and cancel. (Not ``jobs.py``: ``service.store.jobs`` is the table.)"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.exc import IntegrityError

from service.store.base import TERMINAL, Conflict, StoreBase, now
from service.store.schema import jobs


def owner_lock_key(owner: str) -> int:
    """The signed 64-bit id of ``owner``'s job-creation lock (a Postgres advisory lock)."""
    digest = hashlib.sha256(b"slimformer:create-job:" + owner.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class JobsMixin(StoreBase):
    def create_job(
        self,
        owner: str,
        spec: dict,
        *,
        queue: str,
        max_attempts: int,
        hub_token: str | None = None,
        idempotency_key: str | None = None,
        max_active: int | None = None,
    ) -> tuple[dict, bool]:
        """Insert a queued job. Returns ``(job, created)``; an idempotency key seen before returns
        the old job.

        The idempotency look-up, the count of active jobs and the insert are one transaction that
        holds the owner's lock (:meth:`_owner_transaction`), so ``max_active`` holds under any
        number of concurrent requests, API processes or replicas.

        Raises:
            Conflict: the idempotency key was used for a different request, or the owner has too
                many active jobs.
        """
        idempotency_key = idempotency_key or None  # an empty header is no key (not one shared key)
        fingerprint = request_fingerprint({"spec": spec, "token": bool(hub_token)})
        created = now()
        job_id = str(uuid.uuid4())
        values = dict(
            id=job_id,
            owner=owner,
            status="queued",
            queue=queue,
            progress=0.0,
            spec=spec,
            hub_token=self.cipher.encrypt(hub_token) if hub_token else None,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            attempts=0,
            max_attempts=max_attempts,
            cancel_requested=False,
            created_at=created,
            enqueued_at=created,
            stage_seconds={},
            message="waiting for a worker",
        )
        try:
            with self._owner_transaction(owner) as conn:
                if idempotency_key:
                    existing = self._by_idempotency_key(owner, idempotency_key, conn)
                    if existing is not None:
                        return self._same_request(existing, fingerprint), False
                if max_active is not None and self.active_count(owner, conn) >= max_active:
                    raise Conflict(
                        "too_many_jobs",
                        f"this key already has {max_active} queued or running jobs; "
                        "wait for one to finish or cancel one",
                    )
                conn.execute(jobs.insert().values(**values))
        except IntegrityError:  # a concurrent request with the same idempotency key won the insert
            if idempotency_key:
                existing = self._by_idempotency_key(owner, idempotency_key)
                if existing is not None:
                    return self._same_request(existing, fingerprint), False
            raise
        return self.get_job(job_id), True

    @contextmanager
    def _owner_transaction(self, owner: str) -> Iterator[Connection]:
        """A transaction during which no other one can create a job for ``owner``: SQLite takes
        the database's write lock up front (``BEGIN IMMEDIATE``), Postgres a transaction-level
        advisory lock on the owner. What is counted in it stays true until it commits."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(owner_lock_key(owner))))
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @staticmethod
    def _same_request(existing: dict, fingerprint: str) -> dict:
        if existing["request_hash"] != fingerprint:
            raise Conflict(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request body",
            )
        return existing

    def _by_idempotency_key(
        self, owner: str, key: str, conn: Connection | None = None
    ) -> dict | None:
        query = select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)
        if conn is not None:
            row = conn.execute(query).mappings().first()
        else:
            with self.engine.connect() as own:
                row = own.execute(query).mappings().first()
        return dict(row) if row else None

    def active_count(self, owner: str, conn: Connection | None = None) -> int:
        """Queued plus running jobs of ``owner`` (in ``conn``'s transaction when given)."""
        query = (
            select(func.count())
            .select_from(jobs)
            .where(jobs.c.owner == owner, jobs.c.status.in_(("queued", "running")))
        )
        if conn is not None:
            return conn.execute(query).scalar_one()
        with self.engine.connect() as own:
            return own.execute(query).scalar_one()

    def get_job(self, job_id: str, *, owner: str | None = None) -> dict:
        """The job; ``owner`` given and different -> NotFound (another tenant's job does not exist
        for you)."""
        return self._owned_row(jobs, job_id, owner, via=self.reader)

    def job_change_keys(self, job_ids: list[str]) -> dict[str, tuple]:
        """``(status, stage, progress, message)`` of each job, in one narrow query per 500 ids
        (what the event streams poll)."""
        found = {}
        with self.reader.connect() as conn:
            for i in range(0, len(job_ids), 500):
                query = select(
                    jobs.c.id, jobs.c.status, jobs.c.stage, jobs.c.progress, jobs.c.message
                ).where(jobs.c.id.in_(job_ids[i : i + 500]))
                for row in conn.execute(query):
                    found[row.id] = (row.status, row.stage, row.progress or 0.0, row.message)
        return found

    def get_jobs(self, job_ids: list[str]) -> dict[str, dict]:
        """The rows of these jobs (those that exist), by id."""
        found = {}
        with self.reader.connect() as conn:
            for i in range(0, len(job_ids), 500):
                query = select(jobs).where(jobs.c.id.in_(job_ids[i : i + 500]))
                found.update((r["id"], dict(r)) for r in conn.execute(query).mappings())
        return found

    def list_jobs(
        self,
        *,
        owner: str | None,
        status: str | None = None,
        limit: int = 20,
        before: tuple[float, str] | None = None,
    ) -> list[dict]:
        """Newest first; ``before`` is the (created_at, id) of the last job of the previous page."""
        query = select(jobs)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if status:
            query = query.where(jobs.c.status == status)
        return self._newest_first(query, jobs, limit=limit, before=before)

    def request_cancel(self, job_id: str, *, owner: str | None) -> dict:
        """A queued job is cancelled at once; a running one is flagged and its worker stops at the
        next check.

        Raises:
            NotFound, Conflict (the job already ended).
        """
        job = self.get_job(job_id, owner=owner)
        if job["status"] in TERMINAL:
            raise Conflict(
                "job_finished", f"job {job_id} already ended with status {job['status']}"
            )
        with self.engine.begin() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "queued")
                .values(
                    status="cancelled",
                    cancel_requested=True,
                    finished_at=now(),
                    hub_token=None,
                    message="cancelled before a worker started it",
                )
            )
            wiped = done.rowcount == 1 and job["hub_token"] is not None
            if done.rowcount == 0:
                done = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.status == "running")
                    .values(cancel_requested=True, message="cancelling")
                )
        if wiped:
            self._forget_wiped_tokens()
        if done.rowcount == 0:  # it ended between the read and the update
            job = self.get_job(job_id)
            raise Conflict(
                "job_finished", f"job {job_id} already ended with status {job['status']}"
            )
        return self.get_job(job_id)
