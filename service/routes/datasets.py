"""The dataset upload route: a CSV, TSV, JSON lines or Parquet file for jobs to train and
evaluate on."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.auth import CallerDep
from service.errors import ApiError
from service.routes.common import errors, iso
from service.schemas import UploadView
from service.uploads import inspect_table, safe_name, upload_format

router = APIRouter()

def file_field() -> dict:
    """The error details that point at the ``file`` form field."""
    return {"fields": [{"field": "file"}]}


@router.post("/v1/datasets", status_code=201, response_model=UploadView, tags=["datasets"],
             responses=errors(401, 413, 422, 429), summary="Upload a dataset file",
             description="Multipart upload of a CSV, TSV, JSON lines or Parquet file. Returns an "
                         "`upload_id` to use as `dataset.upload_id` in a job, with the columns and "
                         "row count found.")
async def upload_dataset(
    request: Request, caller: CallerDep,
    file: Annotated[UploadFile, File(description="CSV, TSV, JSONL or Parquet")],
) -> UploadView:
    state = request.app.state
    name = safe_name(file.filename)
    kind = upload_format(name)
    if kind is None:
        raise ApiError(422, "unsupported_file_type",
                       f"{file.filename!r}: upload a .csv, .tsv, .jsonl, .json or .parquet file",
                       file_field())
    limit = state.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=state.settings.data_dir) as tmp:
        path = Path(tmp) / name
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large",
                                   f"{name} is larger than the {limit} byte upload limit")
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "empty_file", f"{name} is empty", file_field())
        try:
            rows, columns = await run_in_threadpool(inspect_table, path, kind)
        except ValueError as err:
            message = f"{name} cannot be read as {kind.upper()}: {err}"
            raise ApiError(422, "unreadable_file", message, file_field()) from None
        if rows == 0:
            raise ApiError(422, "empty_file", f"{name} has a header but no rows", file_field())
        upload_id = str(uuid.uuid4())
        key = f"uploads/{upload_id}/{name}"
        await run_in_threadpool(state.artifacts.put_file, key, path)
    row = await run_in_threadpool(state.store.add_upload, caller.owner, upload_id=upload_id,
                                  filename=name, size=size, rows=rows, columns=columns, path=key)
    return UploadView(upload_id=upload_id, filename=name, size=size, rows=rows, columns=columns,
                      created_at=iso(row["created_at"]))
