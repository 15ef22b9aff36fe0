"""The dataset routes: upload a data file (``slimformer.spec.UPLOAD_FORMATS``) for jobs to train
and evaluate on, list and inspect your uploads, and delete one again."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.auth import CallerDep
from service.errors import ApiError
from service.routes.common import errors, iso, page_cursor, parse_cursor
from service.schemas import DatasetList, DatasetView, ErrorBody, UploadView
from service.store import NotFound
from service.uploads import (
    UploadLimits,
    UploadRefused,
    inspect_table,
    safe_name,
    upload_format,
)
from slimformer.spec import upload_suffixes

router = APIRouter()

UPLOAD_413 = {
    413: {
        "model": ErrorBody,
        "description": "The file is over a limit: its size "
        "(`SLIMFORMER_MAX_UPLOAD_BYTES`, `upload_too_large`), its rows "
        "(`SLIMFORMER_MAX_UPLOAD_ROWS`, `too_many_rows`) or its decoded "
        "size (`SLIMFORMER_MAX_UPLOAD_UNCOMPRESSED_BYTES`, "
        "`SLIMFORMER_MAX_UPLOAD_EXPANSION`, "
        "`upload_too_large_uncompressed`); the message names it.",
    }
}
UPLOAD_404 = {
    404: {"model": ErrorBody, "description": "No such upload, or it belongs to another key."}
}


DAY = 86_400.0


def dataset_view(upload: dict, retention_days: float | None) -> DatasetView:
    """What an upload's owner may see of its record (not its owner or its storage key)."""
    expires = upload["created_at"] + retention_days * DAY if retention_days else None
    return DatasetView(
        id=upload["id"],
        filename=upload["filename"],
        format=upload_format(upload["filename"]) or "unknown",
        bytes=upload["size"],
        rows=upload["rows"],
        columns=upload["columns"],
        created_at=iso(upload["created_at"]),
        expires_at=iso(expires),
    )


def file_field() -> dict:
    """The error details that point at the ``file`` form field."""
    return {"fields": [{"field": "file"}]}


@router.post(
    "/v1/datasets",
    status_code=201,
    response_model=UploadView,
    tags=["datasets"],
    responses=errors(401, 422, 429) | UPLOAD_413,
    summary="Upload a dataset file",
    description=f"Multipart upload of a {upload_suffixes()} file (`.txt` is plain "
    "text: one document per blank-line-separated block, one column "
    "`text`, for causal LMs); not "
    "compressed: `.gz` and `.zip` are refused. Returns an `upload_id` to use "
    "as `dataset.upload_id` in a job, with the columns and row count found. "
    "A name longer than 120 characters is shortened (its suffix kept). "
    "413 when the file is over a size, row or decoded-size limit.",
)
async def upload_dataset(
    request: Request,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="CSV, TSV, JSONL, Parquet or plain text")],
) -> UploadView:
    state = request.app.state
    settings = state.settings
    name = safe_name(file.filename)
    kind = upload_format(name)
    if kind is None:
        shown = file.filename if len(file.filename or "") <= 80 else file.filename[:60] + "..."
        raise ApiError(
            422,
            "unsupported_file_type",
            f"{shown!r}: upload a {upload_suffixes()} file (not compressed)",
            file_field(),
        )
    limit = settings.max_upload_bytes
    limits = UploadLimits(
        rows=settings.max_upload_rows,
        uncompressed_bytes=settings.max_upload_uncompressed_bytes,
        expansion=settings.max_upload_expansion,
    )
    with tempfile.TemporaryDirectory(dir=settings.data_dir) as tmp:
        path = Path(tmp) / name
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        "upload_too_large",
                        f"{name} is larger than the {limit} byte upload limit "
                        "(SLIMFORMER_MAX_UPLOAD_BYTES)",
                        {"setting": "SLIMFORMER_MAX_UPLOAD_BYTES", "limit": limit},
                    )
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "empty_file", f"{name} is empty", file_field())
        try:
            rows, columns = await run_in_threadpool(inspect_table, path, kind, limits)
        except UploadRefused as err:
            raise ApiError(413, err.code, err.message, err.details) from None
        except ValueError as err:
            message = f"{name} cannot be read as {kind.upper()}: {err}"
            raise ApiError(422, "unreadable_file", message, file_field()) from None
        if rows == 0:
            what = "no text" if kind == "text" else "a header but no rows"
            raise ApiError(422, "empty_file", f"{name} has {what}", file_field())
        upload_id = str(uuid.uuid4())
        key = f"uploads/{upload_id}/{name}"
        await run_in_threadpool(state.artifacts.put_file, key, path)
    row = await run_in_threadpool(
        state.store.add_upload,
        caller.owner,
        upload_id=upload_id,
        filename=name,
        size=size,
        rows=rows,
        columns=columns,
        path=key,
    )
    return UploadView(
        upload_id=upload_id,
        filename=name,
        size=size,
        rows=rows,
        columns=columns,
        created_at=iso(row["created_at"]),
    )


@router.get(
    "/v1/datasets",
    response_model=DatasetList,
    tags=["datasets"],
    responses=errors(401, 422, 429),
    summary="List your uploads",
    description="Newest first, paged like `GET /v1/jobs`: at most `limit` per page, and "
    "`next_cursor` to pass as `cursor` for the next page. Only the calling key's "
    "uploads; an admin key sees every key's.",
)
async def list_datasets(
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> DatasetList:
    state = request.app.state
    rows = await run_in_threadpool(
        state.store.list_uploads, owner=caller.scope, limit=limit + 1, before=parse_cursor(cursor)
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = page_cursor(rows[-1])
    days = state.settings.upload_retention_days
    return DatasetList(items=[dataset_view(r, days) for r in rows], next_cursor=next_cursor)


@router.get(
    "/v1/datasets/{upload_id}",
    response_model=DatasetView,
    tags=["datasets"],
    responses=errors(401, 429) | UPLOAD_404,
    summary="Get one of your uploads",
    description="Its name, format, size, rows, columns, when it was uploaded and when "
    "retention deletes it. Another key's upload gets the same 404 as one that "
    "does not exist (an admin key sees every key's).",
)
async def get_dataset(upload_id: str, request: Request, caller: CallerDep) -> DatasetView:
    state = request.app.state
    try:
        upload = await run_in_threadpool(state.store.get_upload, upload_id, owner=caller.scope)
    except NotFound:
        raise ApiError(404, "upload_not_found", f"no upload {upload_id}") from None
    return dataset_view(upload, state.settings.upload_retention_days)


def delete_upload_now(request: Request, upload_id: str, owner: str) -> None:
    """Delete the caller's upload, file first (blocking: run it in a thread)."""
    state = request.app.state
    try:
        upload = state.store.get_upload(upload_id, owner=owner)
    except NotFound:
        raise ApiError(404, "upload_not_found", f"no upload {upload_id}") from None
    # the file first: if removing the record then fails, a retry finds it and finishes the job
    state.artifacts.delete_prefix(str(Path(upload["path"]).parent))
    try:
        state.store.delete_upload(upload_id, owner=owner)
    except NotFound:  # a concurrent delete (or the retention pass) won
        pass


@router.delete(
    "/v1/datasets/{upload_id}",
    status_code=204,
    tags=["datasets"],
    responses=errors(401, 429) | UPLOAD_404,
    response_class=Response,
    summary="Delete an upload (its file and its record)",
    description="Only the key that uploaded it may delete it (another key gets 404). "
    "A job already queued with it fails with `dataset_error` saying the "
    "upload was deleted; a running job that already read it is not "
    "affected.",
)
async def delete_dataset(upload_id: str, request: Request, caller: CallerDep) -> Response:
    await run_in_threadpool(delete_upload_now, request, upload_id, caller.owner)
    return Response(status_code=204)
