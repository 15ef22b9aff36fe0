"""The job store: the one source of truth for jobs, API keys and uploads (SQLite or Postgres).

Every state change is a single conditional UPDATE, so two workers, two API replicas or a worker and the
reaper can race without corrupting a job: whoever's WHERE clause no longer matches simply loses.
A running job is leased to one worker; the lease is its ``worker`` name plus a fresh ``heartbeat_at``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(32), nullable=False, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("queue", String(16), nullable=False),
    Column("stage", String(32)),
    Column("progress", Float, nullable=False, default=0.0),
    Column("message", Text),
    Column("eta_seconds", Float),
    Column("spec", JSON, nullable=False),
    Column("hub_token", Text),  # Fernet ciphertext, wiped when the job ends
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("worker", String(255)),
    Column("heartbeat_at", Float),
    Column("created_at", Float, nullable=False, index=True),
    Column("enqueued_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("stage_started_at", Float),
    Column("stage_seconds", JSON),
    Column("retry_at", Float),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("error_details", JSON),
    Column("result", JSON),
    UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

uploads = Table(
    "uploads", metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(32), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

LOCAL_OWNER = "local"  # owner of everything while auth is off (embedded mode without keys)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: float


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now() -> float:
    return time.time()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while a worker writes; one writer waits instead of failing
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class TokenCipher:
    """Encrypts Hub tokens at rest with a key derived from ``SLIMFORMER_TOKEN_ENCRYPTION_KEY``."""

    def __init__(self, secret: str) -> None:
        digest = hashlib.sha256(("slimformer-hub-token:" + secret).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, ciphertext: str) -> str | None:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            return None


def request_fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class JobStore:
    """Jobs, keys and uploads over one SQLAlchemy engine. Methods return plain dicts (rows)."""

    def __init__(self, url: str, *, pepper: str, token_secret: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._pepper = pepper.encode()
        self.cipher = TokenCipher(token_secret)

    # -- schema ---------------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (also creates it on an empty database)."""
        from service.migrations import upgrade

        upgrade(self.url)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- API keys -------------------------------------------------------------------------------
    def _hash_key(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def create_key(self, name: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        """Returns the key row and the secret, which is shown once and stored only as a hash."""
        key_id = secrets.token_hex(6)
        secret = f"sf_{key_id}_{secrets.token_urlsafe(32)}"
        created = now()
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(id=key_id, name=name, key_hash=self._hash_key(secret), admin=admin,
                                                  created_at=created))
        return ApiKey(key_id, name, admin, created), secret

    def authenticate(self, secret: str) -> ApiKey | None:
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != "sf":
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == parts[1])).mappings().first()
        if row is None or row["revoked_at"] is not None:
            return None
        if not hmac.compare_digest(row["key_hash"], self._hash_key(secret)):
            return None
        return ApiKey(row["id"], row["name"], row["admin"], row["created_at"])

    def list_keys(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys.c.id, api_keys.c.name, api_keys.c.admin, api_keys.c.created_at,
                                       api_keys.c.revoked_at).order_by(api_keys.c.created_at)).mappings().all()
        return [dict(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=now()))
        return done.rowcount == 1

    def active_key_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(api_keys)
                                .where(api_keys.c.revoked_at.is_(None))).scalar_one()

    # -- jobs: API side -------------------------------------------------------------------------
    def create_job(
        self, owner: str, spec: dict, *, queue: str, max_attempts: int, hub_token: str | None = None,
        idempotency_key: str | None = None, max_active: int | None = None,
    ) -> tuple[dict, bool]:
        """Insert a queued job. Returns ``(job, created)``; an idempotency key seen before returns the old job.

        Raises:
            Conflict: the idempotency key was used for a different request, or the owner has too many active jobs.
        """
        fingerprint = request_fingerprint({"spec": spec, "token": bool(hub_token)})
        if idempotency_key:
            existing = self._by_idempotency_key(owner, idempotency_key)
            if existing is not None:
                return self._same_request(existing, fingerprint), False
        if max_active is not None and self.active_count(owner) >= max_active:
            raise Conflict("too_many_jobs", f"this key already has {max_active} queued or running jobs; "
                                            "wait for one to finish or cancel one")
        created = now()
        job_id = str(uuid.uuid4())
        values = dict(
            id=job_id, owner=owner, status="queued", queue=queue, progress=0.0, spec=spec,
            hub_token=self.cipher.encrypt(hub_token) if hub_token else None, idempotency_key=idempotency_key,
            request_hash=fingerprint, attempts=0, max_attempts=max_attempts, cancel_requested=False,
            created_at=created, enqueued_at=created, stage_seconds={}, message="waiting for a worker",
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(jobs.insert().values(**values))
        except IntegrityError:  # a concurrent request with the same idempotency key won the insert
            if idempotency_key:
                existing = self._by_idempotency_key(owner, idempotency_key)
                if existing is not None:
                    return self._same_request(existing, fingerprint), False
            raise
        return self.get_job(job_id), True

    @staticmethod
    def _same_request(existing: dict, fingerprint: str) -> dict:
        if existing["request_hash"] != fingerprint:
            raise Conflict("idempotency_key_reused",
                           "this Idempotency-Key was already used for a different request body")
        return existing

    def _by_idempotency_key(self, owner: str, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == key)).mappings().first()
        return dict(row) if row else None

    def active_count(self, owner: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(jobs).where(
                jobs.c.owner == owner, jobs.c.status.in_(("queued", "running")))).scalar_one()

    def get_job(self, job_id: str, *, owner: str | None = None) -> dict:
        """The job; ``owner`` given and different -> NotFound (another tenant's job does not exist for you)."""
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(job_id)
        return dict(row)

    def list_jobs(self, *, owner: str | None, status: str | None = None, limit: int = 20,
                  before: tuple[float, str] | None = None) -> list[dict]:
        """Newest first; ``before`` is the (created_at, id) of the last job of the previous page."""
        query = select(jobs)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if status:
            query = query.where(jobs.c.status == status)
        if before is not None:
            created, job_id = before
            query = query.where((jobs.c.created_at < created) | ((jobs.c.created_at == created) & (jobs.c.id < job_id)))
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def request_cancel(self, job_id: str, *, owner: str | None) -> dict:
        """A queued job is cancelled at once; a running one is flagged and its worker stops at the next check.

        Raises:
            NotFound, Conflict (the job already ended).
        """
        job = self.get_job(job_id, owner=owner)
        if job["status"] in TERMINAL:
            raise Conflict("job_finished", f"job {job_id} already ended with status {job['status']}")
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued").values(
                status="cancelled", cancel_requested=True, finished_at=now(), hub_token=None,
                message="cancelled before a worker started it"))
            if done.rowcount == 0:
                done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running")
                                    .values(cancel_requested=True, message="cancelling"))
        if done.rowcount == 0:  # it ended between the read and the update
            job = self.get_job(job_id)
            raise Conflict("job_finished", f"job {job_id} already ended with status {job['status']}")
        return self.get_job(job_id)

    # -- jobs: worker side ----------------------------------------------------------------------
    def claim(self, job_id: str, worker: str, *, stale_after: float) -> dict | None:
        """Lease the job to ``worker``: queued, or running with a stale heartbeat (its worker died).

        Returns the job, or None when someone else holds it, it ended, or it was cancelled.
        """
        t = now()
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(
                jobs.c.id == job_id, jobs.c.cancel_requested.is_(False),
                (jobs.c.status == "queued") | ((jobs.c.status == "running") & (jobs.c.heartbeat_at < t - stale_after)),
            ).values(status="running", worker=worker, heartbeat_at=t, attempts=jobs.c.attempts + 1,
                     started_at=func.coalesce(jobs.c.started_at, t), retry_at=None, message="started"))
        if done.rowcount != 1:
            return None
        return self.get_job(job_id)

    def heartbeat(self, job_id: str, worker: str, **fields: Any) -> str:
        """Write progress fields and the heartbeat. Returns ``ok``, ``cancel`` or ``lost`` (no longer our job)."""
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                   jobs.c.status == "running").values(heartbeat_at=now(), **fields))
            if done.rowcount != 1:
                return "lost"
            flag = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one()
        return "cancel" if flag else "ok"

    def finish(self, job_id: str, worker: str, status: str, **fields: Any) -> bool:
        """End the job (and wipe its Hub token). False when the lease was lost meanwhile."""
        assert status in TERMINAL
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                   jobs.c.status == "running").values(
                status=status, finished_at=now(), hub_token=None, eta_seconds=0.0 if status == "succeeded" else None,
                **fields))
        return done.rowcount == 1

    def requeue(self, job_id: str, worker: str, *, delay: float, message: str, error: dict | None = None) -> bool:
        """Give a job back to the queue after a transient failure (the caller sends the message)."""
        t = now()
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                   jobs.c.status == "running").values(
                status="queued", worker=None, enqueued_at=t, retry_at=t + delay, message=message,
                error_code=(error or {}).get("code"), error_message=(error or {}).get("message")))
        return done.rowcount == 1

    def hub_token(self, job: dict) -> str | None:
        return self.cipher.decrypt(job["hub_token"]) if job.get("hub_token") else None

    # -- the reaper ----------------------------------------------------------------------------
    def reap(self, *, stale_after: float, requeue_queued_after: float) -> tuple[list[dict], list[dict]]:
        """Find jobs whose worker is gone. Returns ``(to_send, failed)``: jobs put back in the queue (send them
        to the broker) and jobs failed for good because they used up their attempts."""
        t = now()
        to_send, failed = [], []
        with self.engine.connect() as conn:
            stale = conn.execute(select(jobs).where(jobs.c.status == "running",
                                                    jobs.c.heartbeat_at < t - stale_after)).mappings().all()
            forgotten = conn.execute(select(jobs).where(
                jobs.c.status == "queued", jobs.c.enqueued_at < t - requeue_queued_after,
                (jobs.c.retry_at.is_(None)) | (jobs.c.retry_at < t - requeue_queued_after))).mappings().all()
        for job in stale:
            base = (jobs.c.id == job["id"]) & (jobs.c.status == "running") & (jobs.c.heartbeat_at == job["heartbeat_at"])
            with self.engine.begin() as conn:
                if job["cancel_requested"]:
                    done = conn.execute(update(jobs).where(base).values(
                        status="cancelled", finished_at=t, hub_token=None, worker=None,
                        message="cancelled (its worker was lost)"))
                elif job["attempts"] < job["max_attempts"]:
                    done = conn.execute(update(jobs).where(base).values(
                        status="queued", worker=None, enqueued_at=t, message=(
                            f"worker lost; retrying (attempt {job['attempts'] + 1} of {job['max_attempts']})")))
                    if done.rowcount:
                        to_send.append(job)
                    continue
                else:
                    done = conn.execute(update(jobs).where(base).values(
                        status="failed", finished_at=t, hub_token=None, error_code="worker_lost",
                        error_message=f"worker lost: no heartbeat for {stale_after:.0f} s, "
                                      f"{job['attempts']} attempts used"))
                    if done.rowcount:
                        failed.append(job)
        for job in forgotten:
            with self.engine.begin() as conn:
                done = conn.execute(update(jobs).where(jobs.c.id == job["id"], jobs.c.status == "queued",
                                                       jobs.c.enqueued_at == job["enqueued_at"]).values(enqueued_at=t))
            if done.rowcount:
                to_send.append(job)
        return to_send, failed

    # -- uploads -------------------------------------------------------------------------------
    def add_upload(self, owner: str, *, upload_id: str, filename: str, size: int, rows: int, columns: list[str],
                   path: str) -> dict:
        values = dict(id=upload_id, owner=owner, filename=filename, size=size, rows=rows, columns=columns, path=path,
                      created_at=now())
        with self.engine.begin() as conn:
            conn.execute(uploads.insert().values(**values))
        return values

    def get_upload(self, upload_id: str, *, owner: str | None = None) -> dict:
        query = select(uploads).where(uploads.c.id == upload_id)
        if owner is not None:
            query = query.where(uploads.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(upload_id)
        return dict(row)

    # -- metrics -------------------------------------------------------------------------------
    def counts_by_status(self) -> dict[tuple[str, str], int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.status, jobs.c.queue, func.count()).group_by(jobs.c.status, jobs.c.queue))
            return {(status, queue): n for status, queue, n in rows}

    def stale_running(self, stale_after: float) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(jobs).where(
                jobs.c.status == "running", jobs.c.heartbeat_at < now() - stale_after)).scalar_one()

    def stage_durations(self, limit: int = 1000) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs.c.stage_seconds).where(jobs.c.status == "succeeded")
                                .order_by(jobs.c.finished_at.desc()).limit(limit)).scalars().all()
        return [r for r in rows if r]
