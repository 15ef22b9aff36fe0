"""The job store's tables. Nothing else: the Alembic migrations import this module alone (their
autogenerate compares a database with ``metadata``), so it imports no other part of the store."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

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
