"""Logging for the API and the workers: text or JSON lines, ``job_id`` on every line of a job,
secrets redacted."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never print ``value``: every log line containing it shows ``***`` instead (a safety net, not
    the plan)."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def forget_secret(value: str | None) -> None:
    with _lock:
        _secrets.discard(value)


def redact(text: str) -> str:
    for secret in list(_secrets):
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JobContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = current_job_id.get()
        record.job_tag = f"[job {record.job_id}] " if record.job_id else ""
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


def configure_logging(level: str = "INFO", fmt: str = "text", *, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(job_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(job_tag)s%(message)s")
        )
    handler.addFilter(JobContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_slimformer", False):
            root.removeHandler(old)
    handler._slimformer = True
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
