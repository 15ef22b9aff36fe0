"""One error body for every failure: ``{"error": {"code", "message", "details"}}`` with the right
status."""

from __future__ import annotations

import logging
import sys

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# no 400 here: the only 400s the framework raises are bodies it cannot parse, answered as
# malformed_json (JSON) or invalid_request (forms) by _unparsable_body below
_STATUS_CODES = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict | None = None,
        headers: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = (
            status,
            code,
            message,
            details or {},
            headers,
        )


def error_response(
    status: int, code: str, message: str, details: dict | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


def field_errors(errors: list[dict], *, drop_prefix: tuple[str, ...] = ("body",)) -> list[dict]:
    """pydantic errors as ``{"field": "prune.heads", "message": ...}`` (dotted paths, no "body"
    prefix)."""
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if str(p) not in drop_prefix]
        out.append(
            {
                "field": ".".join(loc) or None,
                "message": err.get("msg", "invalid"),
                "type": err.get("type"),
            }
        )
    return out


def invalid_spec(err: ValidationError, prefix: tuple[str, ...] = ()) -> ApiError:
    fields = field_errors([dict(e, loc=prefix + tuple(e["loc"])) for e in err.errors()])
    summary = "; ".join(
        f"{f['field']}: {f['message']}" if f["field"] else f["message"] for f in fields[:5]
    )
    return ApiError(422, "invalid_spec", f"the job spec is invalid: {summary}", {"fields": fields})


STORE_RETRY_AFTER_SECONDS = 2
_LOCKED = ("database is locked", "database table is locked", "lock timeout")


def store_error(exc: Exception) -> ApiError:
    """A job-store failure as 503 with ``Retry-After``: ``store_busy`` when a lock or a pooled
    connection was not granted in time (SQLite "database is locked", Postgres ``lock_timeout``),
    ``store_unavailable`` for anything else the database reports (down, disk full)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).lower()
    busy = (
        isinstance(exc, PoolTimeout)
        or any(s in text for s in _LOCKED)
        or getattr(orig, "sqlstate", None) == "55P03"
    )  # lock_not_available
    wait = STORE_RETRY_AFTER_SECONDS
    if busy:
        code, message = "store_busy", f"the job store is busy; retry in {wait} s"
    else:
        code, message = "store_unavailable", f"the job store is unavailable; retry in {wait} s"
    return ApiError(
        503, code, message, {"retry_after_seconds": wait}, headers={"Retry-After": str(wait)}
    )


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _not_json_reason(exc: StarletteHTTPException) -> str:
    """Why FastAPI could not parse a JSON body, for the cases it answers with a bare 400."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8"
    if isinstance(cause, RecursionError):
        return "it nests too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return "it cannot be parsed"


def _not_form_reason(exc: StarletteHTTPException) -> str:
    """Why Starlette could not parse a form body: the parser's own words where it has them
    (``Maximum header size exceeded`` for a part header, such as a file name, over its limit)."""
    seen, reason = exc.__context__ or exc.__cause__, str(exc.detail)
    while seen is not None:
        text = str(getattr(seen, "message", None) or seen).strip()
        if text:
            reason = text
        seen = seen.__cause__
    return reason.rstrip(".")


def _unparsable_body(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A body the framework could not parse, with a documented code: 400 ``malformed_json``, or
    422 ``invalid_request`` naming the form's ``file`` field for a multipart or urlencoded body."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in FORM_TYPES:
        reason = _not_json_reason(exc)
        return error_response(
            400, "malformed_json", f"the request body is not valid JSON: {reason}"
        )
    reason = f"the form body cannot be read: {_not_form_reason(exc)}"
    return error_response(
        422,
        "invalid_request",
        f"the request is invalid: {reason}",
        {"fields": [{"field": "file", "message": reason, "type": "form_invalid"}]},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):  # noqa: ANN202
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):  # noqa: ANN202
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            detail = next(e for e in errors if e.get("type") == "json_invalid")
            return error_response(
                400,
                "malformed_json",
                "the request body is not valid JSON: "
                f"{(detail.get('ctx') or {}).get('error', 'parse error')}",
            )
        fields = field_errors(errors)
        summary = "; ".join(
            f"{f['field']}: {f['message']}" if f["field"] else f["message"] for f in fields[:5]
        )
        return error_response(
            422, "invalid_request", f"the request is invalid: {summary}", {"fields": fields}
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _store(request: Request, exc: Exception):  # noqa: ANN202
        error = store_error(exc)
        log = logger.warning if error.code == "store_busy" else logger.error
        log(
            "job store %s on %s %s: %s",
            error.code.removeprefix("store_"),
            request.method,
            request.url.path,
            getattr(exc, "orig", None) or exc,
        )
        return error_response(error.status, error.code, error.message, error.details, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        if exc.status_code == 400:
            return _unparsable_body(request, exc)
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # noqa: ANN202
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", "internal error; the server log has the details"
        )
