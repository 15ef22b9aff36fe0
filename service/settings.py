"""Every setting of the service and the workers, in one object read from the environment.

Variables are prefixed ``SLIMFORMER_`` (``SLIMFORMER_DATA_DIR``), plus the conventional
``REDIS_URL``, ``DATABASE_URL`` and ``HF_ENDPOINT``. The object refuses to start on dangerous
values: a placeholder secret outside local mode, a broker or store that one machine cannot share
with another in production.
"""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "insecure-local-only"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Read once at start-up; ``Settings()`` raises a ``ValidationError`` naming the bad
    variable."""

    model_config = SettingsConfigDict(
        env_prefix="SLIMFORMER_", extra="ignore", populate_by_name=True
    )

    mode: Literal["local", "production"] = Field(
        "local",
        description=(
            "`local`: one machine, placeholder secrets allowed. "
            "`production`: real secrets required."
        ),
    )
    data_dir: Path = Field(
        Path("data"),
        description="Job store (SQLite), broker folders, artifacts and work folders "
        "in embedded mode; work folders and the Hub cache always.",
    )
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the API binds to.")

    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "SLIMFORMER_DATABASE_URL"),
        description="SQLAlchemy URL of the job store; default SQLite under the data dir. "
        "Production: postgresql+psycopg://user@host/db.",
    )
    store_busy_timeout_seconds: float = Field(
        3.0,
        gt=0,
        le=30,
        description="How long an API request waits for a lock on the job store "
        "(SQLite busy timeout, Postgres lock_timeout) before it "
        "answers 503 `store_busy`; workers wait 30 s.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL", "SLIMFORMER_REDIS_URL"),
        description="Celery broker; default Celery's filesystem transport under the data dir.",
    )
    hf_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("HF_ENDPOINT", "SLIMFORMER_HF_ENDPOINT"),
        description="Hugging Face Hub endpoint (a mirror); default huggingface.co.",
    )

    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="`auto`: API keys required as soon as one was ever created (revoking "
        "keys never turns auth off; always in production mode). `on`: always. "
        "`off`: every request acts as the local admin; refused in production "
        "mode and on an address other than loopback.",
    )
    api_key_pepper: str = Field(PLACEHOLDER_SECRET, description="Secret mixed into API-key hashes.")
    token_encryption_key: str = Field(
        PLACEHOLDER_SECRET,
        description="Secret from which the key that encrypts Hub tokens at rest is derived.",
    )

    artifact_backend: Literal["local", "s3"] = Field(
        "local", description="Where finished models are kept."
    )
    artifact_dir: Path | None = Field(
        None, description="Local artifact folder; default DATA_DIR/artifacts."
    )
    s3_bucket: str | None = Field(None, description="Bucket of the S3 artifact backend.")
    s3_prefix: str = Field("slimformer/", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph); default AWS."
    )

    max_request_bytes: int = Field(1_000_000, ge=1024, description="Largest JSON request body.")
    max_upload_bytes: int = Field(500_000_000, ge=1024, description="Largest dataset upload.")
    max_upload_rows: int = Field(1_000_000, ge=1, description="Most rows in one dataset upload.")
    max_upload_uncompressed_bytes: int = Field(
        1_000_000_000,
        ge=1024,
        description="Most bytes of data one upload may decode to (a CSV or "
        "JSON file's size; a Parquet file's decoded table).",
    )
    max_upload_expansion: float = Field(
        100.0,
        ge=1,
        description="A Parquet upload may decode to at most this many times its size "
        "(files under 1 MB count as 1 MB): refuses compression bombs.",
    )
    upload_retention_days: float | None = Field(
        None,
        ge=0,
        description="Uploads older than this are deleted (file and record); "
        "0 or unset keeps them forever.",
    )
    artifact_retention_days: float | None = Field(
        None,
        ge=0,
        description="Artifacts of jobs that finished longer ago are deleted (the job "
        "stays, marked expired); 0 or unset keeps them forever.",
    )
    rate_limit_per_minute: int = Field(
        600,
        ge=1,
        description="Requests per minute per API key (one limit for all API processes "
        "when `REDIS_URL` is set).",
    )
    max_concurrent_jobs: int = Field(8, ge=1, description="Queued plus running jobs per API key.")
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        description="Failed authentications per minute per key id (beyond: 429 before the key "
        "is looked up) and per client address (beyond: 429 for a wrong key; a valid key from "
        "it still works).",
    )
    auth_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long an API process trusts a key it checked without checking it "
        "again (0: never); a revoked key is refused on the next request regardless.",
    )
    max_event_streams_per_key: int = Field(
        20, ge=1, description="Concurrent event streams (GET /v1/jobs/{id}/events) per API key."
    )
    events_poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How often an API process reads the jobs its event streams watch "
        "(one query for all of them).",
    )
    api_workers: int | None = Field(
        None,
        ge=1,
        description="API processes `slimformer serve` runs; default 2 in production mode "
        "(limits are shared through Redis), 1 in local mode.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses of reverse proxies whose X-Forwarded-For "
        "names the client (`*`: any; only if nothing else reaches the port).",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, description="An idle keep-alive connection is closed after this."
    )
    max_connections: int = Field(
        1000, ge=1, description="Concurrent connections per API process; beyond, 503 at once."
    )

    heartbeat_seconds: float = Field(
        10.0, gt=0, description="How often a worker writes a running job's heartbeat."
    )
    stale_after_seconds: float = Field(
        120.0,
        gt=0,
        description="Age at which a running job's heartbeat counts as stale (its worker is lost).",
    )
    reaper_interval_seconds: float = Field(
        15.0, gt=0, description="How often the reaper looks for stale jobs."
    )
    requeue_queued_after_seconds: float = Field(
        900.0,
        gt=0,
        description="A queued job no worker took for this long is sent to the broker again "
        "(the embedded broker loses in-flight messages of a killed worker).",
    )
    max_attempts: int = Field(
        3, ge=1, description="Tries of one job (worker lost, transient Hub failures)."
    )
    retry_backoff_seconds: float = Field(
        30.0, ge=0, description="Base delay before retrying a transient failure."
    )
    job_time_limit_seconds: int = Field(6 * 3600, ge=60, description="Hard limit of one job.")
    visibility_timeout_seconds: int | None = Field(
        None,
        description=(
            "Redis redelivers an unacknowledged job after this; default job limit + 1 hour."
        ),
    )
    job_queue: Literal["cpu", "gpu"] = Field("cpu", description="Queue new jobs are sent to.")
    worker_concurrency: int = Field(1, ge=1, description="Jobs one worker process runs at once.")
    worker_metrics_port: int | None = Field(
        None, description="Port where a worker serves Prometheus metrics."
    )

    allow_pickle: bool = Field(
        False, description="Allow pickle checkpoints (*.bin, *.pt): they run code on load."
    )
    allow_remote_code: bool = Field(
        False, description="Allow models whose config needs trust_remote_code."
    )
    max_model_bytes: int | None = Field(
        20_000_000_000, description="Largest model download, from repo metadata."
    )
    hf_cache_dir: Path | None = Field(
        None, description="Hub cache shared by the jobs; default DATA_DIR/hf-cache."
    )

    log_format: Literal["json", "text"] = Field("text", description="`json` for log collectors.")
    log_level: str = Field("INFO", description="Python logging level.")

    @model_validator(mode="after")
    def _refuse_dangerous(self) -> Settings:
        if self.mode == "production":
            for name in ("api_key_pepper", "token_encryption_key"):
                value = getattr(self, name)
                if value == PLACEHOLDER_SECRET or len(value) < 16:
                    raise ValueError(
                        f"SLIMFORMER_{name.upper()} must be a real secret of at least 16 "
                        "characters in production mode (it is the placeholder or too short)"
                    )
            if self.database_url is None or self.database_url.startswith("sqlite"):
                raise ValueError(
                    "DATABASE_URL must name a shared database (Postgres) in production mode"
                )
            if self.redis_url is None:
                raise ValueError(
                    "REDIS_URL must be set in production mode: "
                    "the filesystem broker is one machine only"
                )
        if self.auth == "off":
            if self.mode == "production":
                raise ValueError(
                    "SLIMFORMER_AUTH=off is refused in production mode: every request "
                    "would act as an admin"
                )
            if not is_loopback(self.host):
                raise ValueError(
                    f"SLIMFORMER_AUTH=off is refused with SLIMFORMER_HOST="
                    f"{self.host}: without auth the API may listen on a loopback "
                    "address only"
                )
        if self.resolved_api_workers > 1 and self.redis_url is None:
            raise ValueError(
                "SLIMFORMER_API_WORKERS above 1 needs REDIS_URL: the rate limits are "
                "shared between API processes through Redis"
            )
        if self.artifact_backend == "s3" and not self.s3_bucket:
            raise ValueError("SLIMFORMER_S3_BUCKET is required when SLIMFORMER_ARTIFACT_BACKEND=s3")
        if self.stale_after_seconds <= 2 * self.heartbeat_seconds:
            raise ValueError(
                "SLIMFORMER_STALE_AFTER_SECONDS must exceed twice SLIMFORMER_HEARTBEAT_SECONDS, "
                "or live jobs would be reaped"
            )
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # the conventional postgres:// scheme means the psycopg 3 driver here
            for prefix in ("postgres://", "postgresql://"):
                if url.startswith(prefix):
                    return "postgresql+psycopg://" + url[len(prefix) :]
            return url
        return f"sqlite:///{(self.data_dir / 'slimformer.db').resolve()}"

    @property
    def resolved_api_workers(self) -> int:
        return self.api_workers or (2 if self.mode == "production" else 1)

    @cached_property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @cached_property
    def work_dir(self) -> Path:
        return (self.data_dir / "work").resolve()

    @cached_property
    def upload_dir(self) -> Path:
        return (self.data_dir / "uploads").resolve()

    @cached_property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @cached_property
    def resolved_visibility_timeout(self) -> int:
        return self.visibility_timeout_seconds or self.job_time_limit_seconds + 3600

    def public_summary(self) -> dict:
        """What start-up logs say about the configuration: no secrets, no credentials in URLs."""
        from sqlalchemy.engine import make_url

        return {
            "mode": self.mode,
            "data_dir": str(self.data_dir.resolve()),
            "database": make_url(self.resolved_database_url).render_as_string(hide_password=True),
            "broker": "redis" if self.redis_url else "filesystem",
            "artifacts": self.artifact_backend,
            "queue": self.job_queue,
        }


def _env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else f"SLIMFORMER_{name.upper()}"


def env_variables() -> dict[str, str]:
    """Every environment variable the settings read, with its description (for the README and deploy
    checks)."""
    return {
        _env_name(name): field.description or "" for name, field in Settings.model_fields.items()
    }


def settings_table() -> str:
    """The README's table of settings (under "### Settings"), made from :class:`Settings`: each
    environment variable, its default and its description. ``python -m service.settings
    --markdown`` prints it; a test checks that the README holds exactly this."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "—" if default is None else f"`{default}`"
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{_env_name(name)}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m service.settings", description="Print the service's settings."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="the README's settings table (Markdown)"
    )
    parser.parse_args()
    print(settings_table(), end="")
