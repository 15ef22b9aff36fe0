"""What the v1 route modules share: the documented error responses, timestamps, job lookup."""

from __future__ import annotations

import datetime as dt

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


def owned_job(request: Request, job_id: str, caller: Caller) -> dict:
    """The job if the caller may see it, else the 404 error (blocking: run it in a thread)."""
    try:
        return request.app.state.store.get_job(job_id, owner=caller.scope)
    except NotFound:
        raise ApiError(404, "job_not_found", f"no job {job_id}") from None
