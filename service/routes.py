"""The v1 routes: jobs, their events and artifacts, dataset uploads, health."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import logging
import mimetypes
import queue
import re
import tarfile
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from service.artifacts import ArtifactNotFound, BadArtifactPath, clean_key
from service.auth import CallerDep
from service.errors import ApiError, invalid_spec
from service.schemas import (
    ArtifactFile,
    ArtifactList,
    ErrorBody,
    Health,
    JobCreate,
    JobList,
    JobView,
    Me,
    UploadView,
)
from service.store import TERMINAL, Conflict, NotFound
from slimformer.spec import JobSpec

logger = logging.getLogger(__name__)

router = APIRouter()

E = {  # documented error responses, shared by the routes
    400: {"model": ErrorBody, "description": "Malformed request (for example a body that is not JSON)."},
    401: {"model": ErrorBody, "description": "Missing or invalid API key."},
    404: {"model": ErrorBody, "description": "No such job, or it belongs to another key."},
    409: {"model": ErrorBody, "description": "The job is not in a state that allows this."},
    413: {"model": ErrorBody, "description": "The body is larger than the limit."},
    416: {"model": ErrorBody, "description": "The requested byte range is outside the file."},
    422: {"model": ErrorBody, "description": "Invalid request; `details.fields` lists each bad field."},
    429: {"model": ErrorBody, "description": "Rate limit or concurrent-job limit reached."},
    503: {"model": ErrorBody, "description": "The job store or broker is unreachable."},
}


def errors(*codes: int) -> dict:
    return {c: E[c] for c in codes}


def iso(value: float | None) -> str | None:
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="milliseconds") if value is not None else None


def job_view(job: dict) -> JobView:
    base = f"/v1/jobs/{job['id']}"
    result = job.get("result") or {}
    error = ({"code": job["error_code"], "message": job["error_message"] or "", "details": job.get("error_details") or {}}
             if job.get("error_code") and job["status"] in ("failed", "queued") else None)
    metrics = {k: v for k, v in result.items() if k not in ("files", "published")} or None
    return JobView(
        id=job["id"], status=job["status"], stage=job.get("stage"), progress=job.get("progress") or 0.0,
        eta_seconds=job.get("eta_seconds") if job["status"] == "running" else None, message=job.get("message"),
        attempts=job["attempts"], max_attempts=job["max_attempts"], queue=job["queue"],
        created_at=iso(job["created_at"]), started_at=iso(job.get("started_at")),
        finished_at=iso(job.get("finished_at")), stage_seconds=job.get("stage_seconds") or {}, spec=job["spec"],
        metrics=metrics, published=result.get("published"), error=error,
        links={"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel",
               "artifacts": f"{base}/artifacts", "download": f"{base}/download", "card": f"{base}/card"},
    )


def _get_job(request: Request, job_id: str, caller) -> dict:
    try:
        return request.app.state.store.get_job(job_id, owner=caller.scope)
    except NotFound:
        raise ApiError(404, "job_not_found", f"no job {job_id}") from None


# -- jobs ---------------------------------------------------------------------------------------------
@router.post("/v1/jobs", status_code=202, response_model=JobView, tags=["jobs"],
             responses=errors(400, 401, 409, 413, 422, 429),
             summary="Submit a compression job",
             description="Validates the spec, stores the job and queues it. Returns 202 with the job and a "
                         "`Location` header. With an `Idempotency-Key` header, a retried request returns the "
                         "job created the first time instead of a second one (409 if the body differs).")
async def create_job(
    body: JobCreate, request: Request, response: Response, caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255, description="Makes retries safe.")] = None,
) -> JobView:
    state = request.app.state
    settings = state.settings
    raw = body.model_dump(mode="json", exclude={"hub_token"})
    try:  # the service refuses local paths that the command line accepts
        spec = JobSpec.model_validate(raw, context={"local_files": False})
    except ValidationError as err:
        raise invalid_spec(err) from None
    for field in ("upload_id", "eval_upload_id"):
        upload_id = getattr(spec.dataset, field)
        if upload_id:
            try:
                await run_in_threadpool(state.store.get_upload, upload_id, owner=caller.owner)
            except NotFound:
                raise ApiError(422, "invalid_spec", f"dataset.{field}: no upload {upload_id} for this key",
                               {"fields": [{"field": f"dataset.{field}", "message": "unknown upload"}]}) from None
    token = body.hub_token.get_secret_value() if body.hub_token else None
    try:
        job, created = await run_in_threadpool(
            state.store.create_job, caller.owner, spec.model_dump(mode="json"), queue=settings.job_queue,
            max_attempts=settings.max_attempts, hub_token=token, idempotency_key=idempotency_key,
            max_active=settings.max_concurrent_jobs)
    except Conflict as err:
        status = 429 if err.code == "too_many_jobs" else 409
        raise ApiError(status, err.code, err.message) from None
    if created:
        try:
            await run_in_threadpool(state.send, job["id"], job["queue"], None)
        except Exception:  # the job is stored; the reaper sends queued jobs no worker took
            logger.exception("could not send job %s to the broker; the reaper will retry", job["id"])
        state.metrics.jobs_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job_view(job)


@router.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=errors(401, 422, 429),
            summary="List your jobs", description="Newest first. Admin keys see every key's jobs.")
async def list_jobs(
    request: Request, caller: CallerDep,
    status: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    before = None
    if cursor:
        try:
            created, job_id = json.loads(base64.urlsafe_b64decode(cursor.encode()).decode())
            before = (float(created), str(job_id))
        except Exception:
            raise ApiError(422, "invalid_cursor", "cursor is not one returned by this API",
                           {"fields": [{"field": "cursor", "message": "invalid cursor"}]}) from None
    rows = await run_in_threadpool(request.app.state.store.list_jobs, owner=caller.scope, status=status,
                                   limit=limit + 1, before=before)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = base64.urlsafe_b64encode(json.dumps([last["created_at"], last["id"]]).encode()).decode()
    return JobList(items=[job_view(r) for r in rows], next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=JobView, tags=["jobs"], responses=errors(401, 404, 429),
            summary="Get a job: status, stage, progress, ETA, metrics, error")
async def get_job(job_id: str, request: Request, caller: CallerDep) -> JobView:
    return job_view(await run_in_threadpool(_get_job, request, job_id, caller))


@router.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobView, tags=["jobs"],
             responses=errors(401, 404, 409, 429), summary="Cancel a queued or running job",
             description="A queued job is cancelled at once; a running one stops at its next check (seconds) and "
                         "its partial artifacts are removed. 409 when the job already ended.")
async def cancel_job(job_id: str, request: Request, caller: CallerDep) -> JobView:
    await run_in_threadpool(_get_job, request, job_id, caller)
    try:
        job = await run_in_threadpool(request.app.state.store.request_cancel, job_id, owner=caller.scope)
    except Conflict as err:
        raise ApiError(409, err.code, err.message) from None
    return job_view(job)


@router.get("/v1/jobs/{job_id}/events", tags=["jobs"], responses=errors(401, 404, 429) | {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "Server-sent events: `progress` with the job view as data on every change, then `end`."}},
    summary="Stream a job's stage and progress (server-sent events)", response_class=StreamingResponse)
async def job_events(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    store = request.app.state.store
    await run_in_threadpool(_get_job, request, job_id, caller)
    interval = request.app.state.settings_events_interval

    async def stream():
        last, idle = None, 0.0
        yield "retry: 2000\n\n"
        while True:
            if await request.is_disconnected():
                return
            job = await run_in_threadpool(store.get_job, job_id)
            view = job_view(job).model_dump(mode="json")
            key = (view["status"], view["stage"], view["progress"], view["message"])
            if key != last:
                last, idle = key, 0.0
                yield f"event: progress\ndata: {json.dumps(view)}\n\n"
            elif idle >= 15:
                idle = 0.0
                yield ": keep-alive\n\n"
            if view["status"] in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': view['status']})}\n\n"
                return
            await asyncio.sleep(interval)
            idle += interval

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- artifacts ----------------------------------------------------------------------------------------
def _finished_job(request: Request, job_id: str, caller) -> dict:
    job = _get_job(request, job_id, caller)
    if job["status"] != "succeeded":
        raise ApiError(409, "artifacts_not_ready", f"job {job_id} is {job['status']}; artifacts exist only once it "
                                                   "succeeded")
    return job


@router.get("/v1/jobs/{job_id}/artifacts", response_model=ArtifactList, tags=["artifacts"],
            responses=errors(401, 404, 409, 429), summary="List the files of a finished job")
async def list_artifacts(job_id: str, request: Request, caller: CallerDep) -> ArtifactList:
    job = await run_in_threadpool(_finished_job, request, job_id, caller)
    files = await run_in_threadpool(request.app.state.artifacts.list, f"jobs/{job_id}")
    digests = {f["path"]: f.get("sha256") for f in (job.get("result") or {}).get("files") or []}
    return ArtifactList(job_id=job_id, files=[
        ArtifactFile(path=f["path"], size=f["size"], sha256=digests.get(f["path"]),
                     url=f"/v1/jobs/{job_id}/artifacts/{f['path']}") for f in files])


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@router.get("/v1/jobs/{job_id}/artifacts/{path:path}", tags=["artifacts"],
            responses=errors(401, 404, 409, 416, 429) | {
                200: {"content": {"application/octet-stream": {}}, "description": "The file."},
                206: {"content": {"application/octet-stream": {}}, "description": "The requested byte range."}},
            summary="Download one file of a finished job (HTTP Range supported)", response_class=StreamingResponse)
async def get_artifact(job_id: str, path: str, request: Request, caller: CallerDep,
                       range_header: Annotated[str | None, Header(alias="Range")] = None) -> StreamingResponse:
    await run_in_threadpool(_finished_job, request, job_id, caller)
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
        match = RANGE.match(range_header.strip())
        if not match or (not match[1] and not match[2]):
            raise ApiError(416, "invalid_range", f"unsupported Range {range_header!r}; use bytes=START-END",
                           headers={"Content-Range": f"bytes */{size}"})
        if match[1]:
            start = int(match[1])
            end = min(int(match[2]), size - 1) if match[2] else size - 1
        else:  # a suffix: the last N bytes
            start = max(0, size - int(match[2]))
        if start >= size or start > end:
            raise ApiError(416, "range_not_satisfiable", f"range starts past the end of the file ({size} bytes)",
                           headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(artifacts.iter_bytes(key, start, end), status_code=status, media_type=media,
                             headers=headers)


class _QueueWriter(io.RawIOBase):
    """A write-only file whose bytes go to a bounded queue: the tarball streams instead of sitting in memory."""

    def __init__(self, q: queue.Queue) -> None:
        self.q = q

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        if data:
            self.q.put(bytes(data))
        return len(data)


@router.get("/v1/jobs/{job_id}/download", tags=["artifacts"], responses=errors(401, 404, 409, 429) | {
    200: {"content": {"application/gzip": {}}, "description": "The model folder as a .tar.gz, streamed."}},
    summary="Download the whole compressed model as a streamed .tar.gz", response_class=StreamingResponse)
async def download(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    await run_in_threadpool(_finished_job, request, job_id, caller)
    artifacts = request.app.state.artifacts
    files = await run_in_threadpool(artifacts.list, f"jobs/{job_id}")
    q: queue.Queue = queue.Queue(maxsize=16)
    done = object()

    class _Chunks(io.RawIOBase):
        def __init__(self, key: str) -> None:
            self.it, self.buf = artifacts.iter_bytes(key), b""

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:  # noqa: ANN001
            while not self.buf:
                chunk = next(self.it, None)
                if chunk is None:
                    return 0
                self.buf = chunk
            n = min(len(b), len(self.buf))
            b[:n], self.buf = self.buf[:n], self.buf[n:]
            return n

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(q), mode="w|gz") as tar:
                for f in files:
                    info = tarfile.TarInfo(f"{job_id}/{f['path']}")
                    info.size, info.mode = f["size"], 0o644
                    tar.addfile(info, io.BufferedReader(_Chunks(f"jobs/{job_id}/{f['path']}"), 1 << 20))
        except Exception:
            logger.exception("streaming the tarball of job %s failed", job_id)
        finally:
            q.put(done)

    threading.Thread(target=produce, daemon=True, name=f"tar-{job_id[:8]}").start()

    async def stream():
        while True:
            chunk = await run_in_threadpool(q.get)
            if chunk is done:
                return
            yield chunk

    return StreamingResponse(stream(), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.tar.gz"'})


@router.get("/v1/jobs/{job_id}/card", tags=["artifacts"], responses=errors(401, 404, 409, 429) | {
    200: {"content": {"text/markdown": {}, "text/html": {}}, "description": "The evaluation card."}},
    summary="The evaluation card (Markdown, or HTML with `?format=html`)")
async def get_card(job_id: str, request: Request, caller: CallerDep,
                   format: Annotated[str, Query(pattern="^(markdown|html)$")] = "markdown") -> Response:
    await run_in_threadpool(_finished_job, request, job_id, caller)
    artifacts = request.app.state.artifacts
    try:
        text = b"".join(await run_in_threadpool(lambda: list(artifacts.iter_bytes(f"jobs/{job_id}/README.md"))))
    except ArtifactNotFound:
        raise ApiError(404, "artifact_not_found", f"job {job_id} has no card") from None
    text = text.decode()
    if format == "markdown":
        return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
    return HTMLResponse(render_card_html(text, f"/v1/jobs/{job_id}/artifacts/"))


def render_card_html(markdown: str, artifact_base: str) -> str:
    """The card's Markdown body as HTML (front matter dropped, images pointing at the job's artifact URLs)."""
    from markdown_it import MarkdownIt

    body = markdown
    if body.startswith("---"):
        end = body.find("\n---", 3)
        body = body[end + 4:] if end != -1 else body
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(body)
    # raw HTML stays escaped (the card holds user-chosen names); only the card's own folding tags come back
    html = re.sub(r"<p>&lt;details&gt;\s*&lt;summary&gt;(.*?)&lt;/summary&gt;</p>", r"<details><summary>\1</summary>",
                  html)
    html = html.replace("<p>&lt;details&gt;</p>", "<details>").replace("<p>&lt;/details&gt;</p>", "</details>")
    html = re.sub(r' style="text-align:\s*(left|right|center);?"', r' class="align-\1"', html)
    return re.sub(r'src="(?!https?:|/)([^"]+)"', lambda m: f'src="{artifact_base}{m[1]}"', html)


# -- datasets -----------------------------------------------------------------------------------------
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def inspect_table(path: Path, kind: str) -> tuple[int, list[str]]:
    """Rows and columns of an uploaded table, or ValueError naming what is wrong."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            meta = pq.ParquetFile(path).metadata
            return meta.num_rows, list(meta.schema.names)
        if kind == "json":
            table = pajson.read_json(path)
        else:
            parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else pacsv.ParseOptions()
            table = pacsv.read_csv(path, parse_options=parse)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as err:
        raise ValueError(str(err).splitlines()[0]) from err
    return table.num_rows, list(table.column_names)


@router.post("/v1/datasets", status_code=201, response_model=UploadView, tags=["datasets"],
             responses=errors(401, 413, 422, 429), summary="Upload a dataset file",
             description="Multipart upload of a CSV, TSV, JSON lines or Parquet file. Returns an `upload_id` to "
                         "use as `dataset.upload_id` in a job, with the columns and row count found.")
async def upload_dataset(request: Request, caller: CallerDep,
                         file: Annotated[UploadFile, File(description="CSV, TSV, JSONL or Parquet")]) -> UploadView:
    state = request.app.state
    name = SAFE_NAME.sub("_", Path(file.filename or "data").name).strip("._") or "data"
    kind = SUFFIXES.get(Path(name).suffix.lower())
    if kind is None:
        raise ApiError(422, "unsupported_file_type", f"{file.filename!r}: upload a .csv, .tsv, .jsonl, .json or "
                                                     ".parquet file", {"fields": [{"field": "file"}]})
    limit = state.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(dir=state.settings.data_dir) as tmp:
        path = Path(tmp) / name
        size = 0
        with path.open("wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"{name} is larger than the {limit} byte upload limit")
                out.write(chunk)
        if size == 0:
            raise ApiError(422, "empty_file", f"{name} is empty", {"fields": [{"field": "file"}]})
        try:
            rows, columns = await run_in_threadpool(inspect_table, path, kind)
        except ValueError as err:
            raise ApiError(422, "unreadable_file", f"{name} cannot be read as {kind.upper()}: {err}",
                           {"fields": [{"field": "file"}]}) from None
        if rows == 0:
            raise ApiError(422, "empty_file", f"{name} has a header but no rows", {"fields": [{"field": "file"}]})
        upload_id = str(uuid.uuid4())
        key = f"uploads/{upload_id}/{name}"
        await run_in_threadpool(state.artifacts.put_file, key, path)
    row = await run_in_threadpool(state.store.add_upload, caller.owner, upload_id=upload_id, filename=name, size=size,
                                  rows=rows, columns=columns, path=key)
    return UploadView(upload_id=upload_id, filename=name, size=size, rows=rows, columns=columns,
                      created_at=iso(row["created_at"]))


@router.get("/v1/me", response_model=Me, tags=["health"], responses=errors(401, 429),
            summary="Who the API key is: its name, whether it is an admin, whether auth is on")
async def me(request: Request, caller: CallerDep) -> Me:
    return Me(key_id=caller.owner, name=caller.name, admin=caller.admin,
              auth_enabled=request.app.state.auth.enabled)


# -- health -------------------------------------------------------------------------------------------
@router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, tags=["health"], summary="Readiness: job store and broker reachable",
            responses={503: {"model": Health, "description": "A dependency is unreachable."}})
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {}
    for name, probe in (("store", state.store.ping), ("broker", state.ping_broker), ("artifacts", state.artifacts.ping)):
        try:
            await asyncio.wait_for(run_in_threadpool(probe), timeout=5)
            checks[name] = "ok"
        except Exception as err:  # report which dependency failed, not a stack trace
            checks[name] = f"unavailable: {type(err).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(Health(status="ok" if ok else "unavailable", checks=checks).model_dump(),
                        status_code=200 if ok else 503)
