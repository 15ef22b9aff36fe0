"""The job store: the one source of truth for jobs, API keys and uploads (SQLite or Postgres).

Every state change is a single conditional UPDATE, so two workers, two API replicas or a worker and
the reaper can race without corrupting a job: whoever's WHERE clause no longer matches simply loses.
A running job is leased to one worker; the lease is its ``worker`` name plus a fresh
``heartbeat_at``.

:class:`JobStore` is the one object the app and the workers use; each of its parts lives in its
own module: ``schema`` (the tables, all the migrations import), ``engine``, ``crypto`` (Hub
tokens), ``keys``, ``job_records`` (the API's side of jobs), ``leases`` (the workers' side and the
reaper), ``upload_records``, ``retention`` and ``metrics``.
"""

from __future__ import annotations

from service.store.base import (
    LOCAL_OWNER,
    STATUSES,
    TERMINAL,
    Conflict,
    NotFound,
    StoreBase,
    now,
)
from service.store.crypto import TokenCipher
from service.store.engine import (
    PING_AFTER_IDLE_SECONDS,
    POOL_SIZE,
    make_engine,
    ping_idle_connections,
)
from service.store.job_records import JobsMixin, owner_lock_key, request_fingerprint
from service.store.keys import ApiKey, KeysMixin
from service.store.leases import LeasesMixin
from service.store.metrics import MetricsMixin
from service.store.retention import RetentionMixin
from service.store.schema import (
    REVOCATIONS_ROW,
    api_keys,
    jobs,
    key_revocations,
    metadata,
    uploads,
)
from service.store.upload_records import UploadsMixin

__all__ = [
    "LOCAL_OWNER",
    "PING_AFTER_IDLE_SECONDS",
    "POOL_SIZE",
    "REVOCATIONS_ROW",
    "STATUSES",
    "TERMINAL",
    "ApiKey",
    "Conflict",
    "JobStore",
    "NotFound",
    "TokenCipher",
    "api_keys",
    "jobs",
    "key_revocations",
    "make_engine",
    "metadata",
    "now",
    "owner_lock_key",
    "ping_idle_connections",
    "request_fingerprint",
    "uploads",
]


class JobStore(
    KeysMixin,
    LeasesMixin,
    RetentionMixin,
    JobsMixin,
    UploadsMixin,
    MetricsMixin,
    StoreBase,
):
    """Jobs, keys and uploads over one SQLAlchemy engine. Methods return plain dicts (rows)."""
