"""The job store: the one source of truth for jobs, API keys and uploads (SQLite or Postgres).

Every state change is a single conditional UPDATE, so two workers, two API replicas or a worker and
the reaper can race without corrupting a job: whoever's WHERE clause no longer matches simply loses.
A running job is leased to one worker; the lease is its ``worker`` name plus a fresh
``heartbeat_at``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
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
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
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
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
)

# One row (id 1): how many revocations there ever were. A revocation bumps it in its own
# transaction; an API process reads it on each request its key cache answers and forgets the
# cache when it moved, so a revoked key is refused by every process on its next request.
key_revocations = Table(
    "key_revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("generation", BigInteger, nullable=False),
)
REVOCATIONS_ROW = 1

uploads = Table(
    "uploads",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(32), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
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


def owner_lock_key(owner: str) -> int:
    """The signed 64-bit id of ``owner``'s job-creation lock (a Postgres advisory lock)."""
    digest = hashlib.sha256(b"slimformer:create-job:" + owner.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


POOL_SIZE = 20  # connections per process, at most; see make_engine


PING_AFTER_IDLE_SECONDS = 10.0


def ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection that sat idle for ``PING_AFTER_IDLE_SECONDS`` before handing it
    out; a dead one (the database restarted) is replaced, as ``pool_pre_ping`` would, but a busy
    pool pays nothing."""

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        idle = time.monotonic() - record.info.get("idle_since", time.monotonic())
        if idle < PING_AFTER_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except Exception as err:  # the pool retries with a fresh connection
            raise DisconnectionError(str(err)) from err


def make_engine(url: str, *, busy_timeout: float = 30.0) -> Engine:
    """The store's engine. ``busy_timeout``: seconds a statement waits for a lock another
    connection holds (SQLite's busy timeout, Postgres's ``lock_timeout``) before it fails with an
    ``OperationalError``. The API passes a few seconds (then answers 503 ``store_busy``); workers
    keep the default."""
    millis = max(1, int(busy_timeout * 1000))
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while a worker writes; one writer waits instead of failing
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={millis}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # deleted bytes (a wiped Hub token) are zeroed, not left in a page's free space
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    # A fixed pool: overflow connections are closed on check-in, and under load that meant a new
    # Postgres connection (a forked backend) per request. LIFO keeps the few busy connections warm
    # (and their prepared statements). Only a connection idle for a while is pinged before use
    # (pool_pre_ping would add a round trip to every query).
    engine = create_engine(
        url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30, pool_use_lifo=True
    )
    ping_idle_connections(engine)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _postgres_lock_timeout(dbapi_connection, _record):  # noqa: ANN001
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = {millis}")
            cursor.close()
            dbapi_connection.autocommit = autocommit

    return engine


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

    def __init__(
        self, url: str, *, pepper: str, token_secret: str, busy_timeout: float = 30.0
    ) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout=busy_timeout)
        # single-statement reads: no BEGIN/ROLLBACK round trips around them
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pepper = pepper.encode()
        self.cipher = TokenCipher(token_secret)

    # -- schema ---------------------------------------------------------------------------------
    def create_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (also creates it on an empty
        database)."""
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
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    key_hash=self._hash_key(secret),
                    admin=admin,
                    created_at=created,
                )
            )
        return ApiKey(key_id, name, admin, created), secret

    def authenticate(self, secret: str) -> ApiKey | None:
        return self.check_key(secret)[0]

    def check_key(self, secret: str) -> tuple[ApiKey | None, int | None]:
        """The key of ``secret`` (None: malformed, unknown, revoked or wrong), and the revocation
        generation read in the same statement (None when the key id is unknown): a key found
        valid stays valid while the generation has not moved. One primary-key read; a malformed
        secret costs no query."""
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != "sf" or not parts[1]:
            return None, None
        generation = (
            select(key_revocations.c.generation)
            .where(key_revocations.c.id == REVOCATIONS_ROW)
            .scalar_subquery()
            .label("revocation_generation")
        )
        query = select(api_keys, generation).where(api_keys.c.id == parts[1])
        with self.reader.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None, None
        seen = row["revocation_generation"] or 0
        if row["revoked_at"] is not None:
            return None, seen
        if not hmac.compare_digest(row["key_hash"], self._hash_key(secret)):
            return None, seen
        return ApiKey(row["id"], row["name"], row["admin"], row["created_at"]), seen

    def revocation_generation(self) -> int:
        """How many keys were ever revoked (one single-row primary-key read)."""
        query = select(key_revocations.c.generation).where(key_revocations.c.id == REVOCATIONS_ROW)
        with self.reader.connect() as conn:
            return conn.execute(query).scalar() or 0

    def list_keys(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(
                        api_keys.c.id,
                        api_keys.c.name,
                        api_keys.c.admin,
                        api_keys.c.created_at,
                        api_keys.c.revoked_at,
                    ).order_by(api_keys.c.created_at)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke an active key and, in the same transaction, bump the revocation generation, so
        every API process refuses the key on its next request. False if no such active key."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            if done.rowcount != 1:
                return False
            bumped = conn.execute(
                update(key_revocations)
                .where(key_revocations.c.id == REVOCATIONS_ROW)
                .values(generation=key_revocations.c.generation + 1)
            )
            if bumped.rowcount != 1:  # the migration inserts the row; this is a safety net
                conn.execute(key_revocations.insert().values(id=REVOCATIONS_ROW, generation=1))
        return True

    def active_key_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            ).scalar_one()

    def any_key_created(self) -> bool:
        """Whether a key was ever created (revoked ones count: revoking never turns auth off)."""
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.id).limit(1)).first() is not None

    # -- jobs: API side -------------------------------------------------------------------------
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
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.reader.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(job_id)
        return dict(row)

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
        if before is not None:
            created, job_id = before
            query = query.where(
                (jobs.c.created_at < created)
                | ((jobs.c.created_at == created) & (jobs.c.id < job_id))
            )
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

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

    # -- jobs: worker side ----------------------------------------------------------------------
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
        for job in stale:
            base = (
                (jobs.c.id == job["id"])
                & (jobs.c.status == "running")
                & (jobs.c.heartbeat_at == job["heartbeat_at"])
            )
            with self.engine.begin() as conn:
                if job["cancel_requested"]:
                    done = conn.execute(
                        update(jobs)
                        .where(base)
                        .values(
                            status="cancelled",
                            finished_at=t,
                            hub_token=None,
                            worker=None,
                            message="cancelled (its worker was lost)",
                        )
                    )
                    wiped = wiped or (done.rowcount == 1 and job["hub_token"] is not None)
                elif job["attempts"] < job["max_attempts"]:
                    done = conn.execute(
                        update(jobs)
                        .where(base)
                        .values(
                            status="queued",
                            worker=None,
                            enqueued_at=t,
                            message=(
                                f"worker lost; retrying (attempt {job['attempts'] + 1} of "
                                f"{job['max_attempts']})"
                            ),
                        )
                    )
                    if done.rowcount:
                        to_send.append(job)
                    continue
                else:
                    done = conn.execute(
                        update(jobs)
                        .where(base)
                        .values(
                            status="failed",
                            finished_at=t,
                            hub_token=None,
                            error_code="worker_lost",
                            error_message=f"worker lost: no heartbeat for {stale_after:.0f} s, "
                            f"{job['attempts']} attempts used",
                        )
                    )
                    if done.rowcount:
                        failed.append(job)
                        wiped = wiped or job["hub_token"] is not None
        for job in forgotten:
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
            if done.rowcount:
                to_send.append(job)
        if wiped:
            self._forget_wiped_tokens()
        return to_send, failed

    def _forget_wiped_tokens(self) -> None:
        """After a Hub token was wiped, make its old copies unreadable from the data dir.

        SQLite keeps old row versions in the ``-wal`` file until a checkpoint, and freed bytes in
        pages (zeroed here: ``secure_delete``). A TRUNCATE checkpoint copies the current pages
        into the database file and empties the WAL. Postgres keeps dead row versions until
        VACUUM; that is the operator's (docs/security.md). A checkpoint that cannot finish now
        (readers busy) is logged, not raised: the wipe itself is committed.
        """
        if self.engine.dialect.name != "sqlite":
            return
        for attempt in range(5):
            try:
                with self.engine.connect() as conn:
                    busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()[0]
            except OperationalError:
                busy = 1
            if not busy:
                return
            time.sleep(0.05 * (attempt + 1))
        logger.warning(
            "could not truncate the SQLite WAL after wiping a Hub token; its old "
            "copy stays in %s-wal until the next checkpoint",
            self.engine.url.database,
        )

    # -- uploads -------------------------------------------------------------------------------
    def add_upload(
        self,
        owner: str,
        *,
        upload_id: str,
        filename: str,
        size: int,
        rows: int,
        columns: list[str],
        path: str,
    ) -> dict:
        values = dict(
            id=upload_id,
            owner=owner,
            filename=filename,
            size=size,
            rows=rows,
            columns=columns,
            path=path,
            created_at=now(),
        )
        with self.engine.begin() as conn:
            conn.execute(uploads.insert().values(**values))
        return values

    def list_uploads(
        self, *, owner: str | None, limit: int = 20, before: tuple[float, str] | None = None
    ) -> list[dict]:
        """Newest first, like :meth:`list_jobs`; ``owner`` None: everybody's (an admin)."""
        query = select(uploads)
        if owner is not None:
            query = query.where(uploads.c.owner == owner)
        if before is not None:
            created, upload_id = before
            query = query.where(
                (uploads.c.created_at < created)
                | ((uploads.c.created_at == created) & (uploads.c.id < upload_id))
            )
        query = query.order_by(uploads.c.created_at.desc(), uploads.c.id.desc()).limit(limit)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

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

    # -- upload deletion and retention ---------------------------------------------------------
    def delete_upload(self, upload_id: str, *, owner: str | None) -> dict:
        """Remove an upload's record and return it (its file is the caller's to delete).

        Raises:
            NotFound: no such upload, or it belongs to another owner.
        """
        upload = self.get_upload(upload_id, owner=owner)
        with self.engine.begin() as conn:
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))
        return upload

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
