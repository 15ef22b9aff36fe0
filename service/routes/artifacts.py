"""The artifact routes of a finished job: file list, one file (with Range), the whole folder as a
streamed .tar.gz, and the evaluation card."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.artifacts_base import ArtifactNotFound, BadArtifactPath, ClosingIterator, clean_key
from service.auth import Caller, CallerDep
from service.dashboard.card_html import render_card_html
from service.errors import ApiError
from service.routes.common import errors, owned_job
from service.schemas import ArtifactFile, ArtifactList, ErrorBody

router = APIRouter()

# at most 18 ASCII digits a number (below 2**63, far beyond any file): a longer number is an
# invalid range, never an int() that raises
RANGE_DIGITS = 18
RANGE = re.compile(rf"bytes=([0-9]{{0,{RANGE_DIGITS}}})-([0-9]{{0,{RANGE_DIGITS}}})")
GONE = {
    410: {
        "model": ErrorBody,
        "description": "The job's artifacts expired (`SLIMFORMER_ARTIFACT_RETENTION_DAYS`) "
        "and were deleted.",
    }
}


class ClosingStreamingResponse(StreamingResponse):
    """A streamed body whose producer is stopped however the response ends: read to the end,
    failed, or the client went away (Starlette then cancels the stream without closing its
    iterator, which would keep a producer thread and its open files alive)."""

    def __init__(self, content, *, on_close: Callable[[], None], **kwargs) -> None:  # noqa: ANN001
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()  # never blocks: it only flags the producer to stop


def finished_job(request: Request, job_id: str, caller: Caller) -> dict:
    """The caller's job once it succeeded and while its artifacts are kept; 404, 409 or 410
    otherwise (blocking: run it in a thread)."""
    job = owned_job(request, job_id, caller)
    if job["status"] != "succeeded":
        raise ApiError(
            409,
            "artifacts_not_ready",
            f"job {job_id} is {job['status']}; artifacts exist only once it succeeded",
        )
    expired = (job.get("result") or {}).get("artifacts_expired_at")
    if expired:
        raise ApiError(
            410,
            "artifacts_expired",
            f"the artifacts of job {job_id} expired on {expired} and were deleted",
        )
    return job


@router.get(
    "/v1/jobs/{job_id}/artifacts",
    response_model=ArtifactList,
    tags=["artifacts"],
    responses=errors(401, 404, 409, 429) | GONE,
    summary="List the files of a finished job",
    description="Path, size, SHA-256 and download URL of every file of a succeeded job. "
    "410 once the artifacts expired.",
)
async def list_artifacts(job_id: str, request: Request, caller: CallerDep) -> ArtifactList:
    job = await run_in_threadpool(finished_job, request, job_id, caller)
    files = await run_in_threadpool(request.app.state.artifacts.list, f"jobs/{job_id}")
    recorded = (job.get("result") or {}).get("files") or []
    digests = {f["path"]: f.get("sha256") for f in recorded}
    return ArtifactList(
        job_id=job_id,
        files=[
            ArtifactFile(
                path=f["path"],
                size=f["size"],
                sha256=digests.get(f["path"]),
                url=f"/v1/jobs/{job_id}/artifacts/{f['path']}",
            )
            for f in files
        ],
    )


FILE_200 = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file."},
    206: {"content": {"application/octet-stream": {}}, "description": "The requested byte range."},
}


@router.get(
    "/v1/jobs/{job_id}/artifacts/{path:path}",
    tags=["artifacts"],
    responses=errors(401, 404, 409, 416, 429) | GONE | FILE_200,
    summary="Download one file of a finished job (HTTP Range supported)",
    description="A path outside the job's folder or too long for a file name is 404, "
    "like a file that does not exist.",
    response_class=StreamingResponse,
)
async def get_artifact(
    job_id: str,
    path: str,
    request: Request,
    caller: CallerDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> StreamingResponse:
    await run_in_threadpool(finished_job, request, job_id, caller)
    artifacts = request.app.state.artifacts
    try:
        key = f"jobs/{job_id}/{clean_key(path)}"
        size = await run_in_threadpool(artifacts.size, key)
    except BadArtifactPath as err:
        raise ApiError(404, "artifact_not_found", str(err)) from None
    except ArtifactNotFound:
        raise ApiError(404, "artifact_not_found", f"job {job_id} has no file {path}") from None
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers = {"Accept-Ranges": "bytes"}
    start, end, status = 0, size - 1, 200
    if range_header:
        match = RANGE.fullmatch(range_header.strip())
        if not match or (not match[1] and not match[2]):
            shown = range_header if len(range_header) <= 60 else range_header[:57] + "..."
            raise ApiError(
                416,
                "invalid_range",
                f"unsupported Range {shown!r}; use bytes=START-END, numbers of at most "
                f"{RANGE_DIGITS} digits",
                headers={"Content-Range": f"bytes */{size}"},
            )
        if match[1]:
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
        else:  # a suffix: the last N bytes
            start = max(0, size - int(match[2]))
        if start >= size or start > end:
            raise ApiError(
                416,
                "range_not_satisfiable",
                f"range starts past the end of the file ({size} bytes)",
                headers={"Content-Range": f"bytes */{size}"},
            )
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    chunks = ClosingIterator(artifacts.iter_bytes(key, start, end))
    return ClosingStreamingResponse(
        chunks, on_close=chunks.close, status_code=status, media_type=media, headers=headers
    )


TARBALL_200 = {
    200: {
        "content": {"application/gzip": {}},
        "description": "The model folder as a .tar.gz, streamed.",
    },
}


@router.get(
    "/v1/jobs/{job_id}/download",
    tags=["artifacts"],
    responses=errors(401, 404, 409, 429) | GONE | TARBALL_200,
    summary="Download the whole compressed model as a streamed .tar.gz",
    description="The tarball is written while it is sent; a client that disconnects "
    "stops it within a second.",
    response_class=StreamingResponse,
)
async def download(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    await run_in_threadpool(finished_job, request, job_id, caller)
    artifacts = request.app.state.artifacts
    prefix = f"jobs/{job_id}"
    files = await run_in_threadpool(artifacts.list, prefix)
    stream = artifacts.iter_tar_gz(prefix, files, root=job_id)
    disposition = f'attachment; filename="{job_id}.tar.gz"'
    # read with async for: a slow client holds no worker thread; closed when the response ends
    return ClosingStreamingResponse(
        stream,
        on_close=stream.close,
        media_type="application/gzip",
        headers={"Content-Disposition": disposition},
    )


CARD_200 = {
    200: {"content": {"text/markdown": {}, "text/html": {}}, "description": "The evaluation card."},
}


@router.get(
    "/v1/jobs/{job_id}/card",
    tags=["artifacts"],
    responses=errors(401, 404, 409, 429) | GONE | CARD_200,
    summary="The evaluation card (Markdown, or HTML with `?format=html`)",
    description="The job's README.md; `?format=html` renders it, with images pointing "
    "at the artifact URLs.",
)
async def get_card(
    job_id: str,
    request: Request,
    caller: CallerDep,
    format: Annotated[str, Query(pattern="^(markdown|html)$")] = "markdown",
) -> Response:
    await run_in_threadpool(finished_job, request, job_id, caller)
    artifacts = request.app.state.artifacts
    key = f"jobs/{job_id}/README.md"
    try:
        text = b"".join(await run_in_threadpool(lambda: list(artifacts.iter_bytes(key))))
    except ArtifactNotFound:
        raise ApiError(404, "artifact_not_found", f"job {job_id} has no card") from None
    text = text.decode()
    if format == "markdown":
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
    return HTMLResponse(render_card_html(text, f"/v1/jobs/{job_id}/artifacts/"))
