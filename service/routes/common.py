"""What the v1 route modules share: the documented error responses, timestamps, paging cursors,
job lookup."""

from __future__ import annotations

import base64
import datetime as dt
import json

from fastapi import Request

from service.auth import Caller
from service.errors import ApiError
from service.schemas import ErrorBody
from service.store import NotFound

E = {  # documented error responses, shared by the routes
    400: {
        "model": ErrorBody,
        "description": "Malformed request (for example a body that is not JSON).",
    },
    401: {"model": ErrorBody, "description": "Missing or invalid API key."},
    404: {"model": ErrorBody, "description": "No such job, or it belongs to another key."},
    409: {"model": ErrorBody, "description": "The job is not in a state that allows this."},
    413: {"model": ErrorBody, "description": "The body is larger than the limit."},
    416: {"model": ErrorBody, "description": "The requested byte range is outside the file."},
    422: {
        "model": ErrorBody,
        "description": "Invalid request; `details.fields` lists each bad field.",
    },
    429: {"model": ErrorBody, "description": "Rate limit or concurrent-job limit reached."},
    503: {"model": ErrorBody, "description": "The job store or broker is unreachable."},
}


def errors(*codes: int) -> dict:
    """The documented error responses for ``codes``, for a route's ``responses=``."""
    return {c: E[c] for c in codes}


def iso(value: float | None) -> str | None:
    """A UNIX time as ISO 8601 UTC with milliseconds; None stays None."""
    if value is None:
        return None
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="milliseconds")


def page_cursor(row: dict) -> str:
    """The ``next_cursor`` after ``row``, the last item of a page sorted newest first."""
    return base64.urlsafe_b64encode(json.dumps([row["created_at"], row["id"]]).encode()).decode()


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """The ``(created_at, id)`` a ``next_cursor`` holds (None for none), else the 422 error."""
    if not cursor:
        return None
    try:
        created, item_id = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
        return float(created), str(item_id)
    except Exception:
        raise ApiError(
            422,
            "invalid_cursor",
            "cursor is not one returned by this API",
            {"fields": [{"field": "cursor", "message": "invalid cursor"}]},
        ) from None


def owned_job(request: Request, job_id: str, caller: Caller) -> dict:
    """The job if the caller may see it, else the 404 error (blocking: run it in a thread)."""
    try:
        return request.app.state.store.get_job(job_id, owner=caller.scope)
    except NotFound:
        raise ApiError(404, "job_not_found", f"no job {job_id}") from None
