"""The job routes: submit, list, get, cancel, and the server-sent events of one job."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from service.auth import CallerDep, too_many
from service.errors import ApiError, invalid_spec
from service.routes.common import errors, iso, owned_job, page_cursor, parse_cursor
from service.schemas import JobCreate, JobList, JobView
from service.store import TERMINAL, Conflict, NotFound
from slimformer.spec import JobSpec, stages_for

logger = logging.getLogger(__name__)

router = APIRouter()


def job_view(job: dict) -> JobView:
    base = f"/v1/jobs/{job['id']}"
    result = job.get("result") or {}
    error = None
    if job.get("error_code") and job["status"] in ("failed", "queued"):
        error = {
            "code": job["error_code"],
            "message": job["error_message"] or "",
            "details": job.get("error_details") or {},
        }
    metrics = {k: v for k, v in result.items() if k not in ("files", "published", "table")} or None
    running = job["status"] == "running"
    return JobView(
        id=job["id"],
        status=job["status"],
        stage=job.get("stage"),
        progress=job.get("progress") or 0.0,
        eta_seconds=job.get("eta_seconds") if running else None,
        message=job.get("message"),
        attempts=job["attempts"],
        max_attempts=job["max_attempts"],
        queue=job["queue"],
        created_at=iso(job["created_at"]),
        started_at=iso(job.get("started_at")),
        finished_at=iso(job.get("finished_at")),
        stage_seconds=job.get("stage_seconds") or {},
        stages=stages_for(job["spec"]),
        spec=job["spec"],
        metrics=metrics,
        table=result.get("table"),
        published=result.get("published"),
        error=error,
        links={
            "self": base,
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
            "artifacts": f"{base}/artifacts",
            "download": f"{base}/download",
            "card": f"{base}/card",
        },
    )


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    tags=["jobs"],
    responses=errors(400, 401, 409, 413, 422, 429),
    summary="Submit a compression job",
    description="Validates the spec, stores the job and queues it. Returns 202 with the "
    "job and a `Location` header. With an `Idempotency-Key` header, a "
    "retried request returns the job created the first time instead of a "
    "second one (409 if the body differs).",
)
async def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None, Header(max_length=255, description="Makes retries safe.")
    ] = None,
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
                raise ApiError(
                    422,
                    "invalid_spec",
                    f"dataset.{field}: no upload {upload_id} for this key",
                    {"fields": [{"field": f"dataset.{field}", "message": "unknown upload"}]},
                ) from None
    token = body.hub_token.get_secret_value() if body.hub_token else None
    try:
        job, created = await run_in_threadpool(
            state.store.create_job,
            caller.owner,
            spec.model_dump(mode="json"),
            queue=settings.job_queue,
            max_attempts=settings.max_attempts,
            hub_token=token,
            idempotency_key=idempotency_key,
            max_active=settings.max_concurrent_jobs,
        )
    except Conflict as err:
        status = 429 if err.code == "too_many_jobs" else 409
        raise ApiError(status, err.code, err.message) from None
    if created:
        try:
            await run_in_threadpool(state.send, job["id"], job["queue"], None)
        except Exception:  # the job is stored; the reaper sends queued jobs no worker took
            logger.exception(
                "could not send job %s to the broker; the reaper will retry", job["id"]
            )
        state.metrics.jobs_submitted.inc()
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job['id']}"
    return job_view(job)


@router.get(
    "/v1/jobs",
    response_model=JobList,
    tags=["jobs"],
    responses=errors(401, 422, 429),
    summary="List your jobs",
    description="Newest first. Admin keys see every key's jobs.",
)
async def list_jobs(
    request: Request,
    caller: CallerDep,
    status: Annotated[
        str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page.")
    ] = None,
) -> JobList:
    rows = await run_in_threadpool(
        request.app.state.store.list_jobs,
        owner=caller.scope,
        status=status,
        limit=limit + 1,
        before=parse_cursor(cursor),
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = page_cursor(rows[-1])
    return JobList(items=[job_view(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    tags=["jobs"],
    responses=errors(401, 404, 429),
    summary="Get a job: status, stage, progress, ETA, metrics, error",
)
async def get_job(job_id: str, request: Request, caller: CallerDep) -> JobView:
    return job_view(await run_in_threadpool(owned_job, request, job_id, caller))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobView,
    tags=["jobs"],
    responses=errors(401, 404, 409, 429),
    summary="Cancel a queued or running job",
    description="A queued job is cancelled at once; a running one stops at its next check "
    "(seconds) and its partial artifacts are removed. 409 when the job "
    "already ended.",
)
async def cancel_job(job_id: str, request: Request, caller: CallerDep) -> JobView:
    await run_in_threadpool(owned_job, request, job_id, caller)
    try:
        job = await run_in_threadpool(
            request.app.state.store.request_cancel, job_id, owner=caller.scope
        )
    except Conflict as err:
        raise ApiError(409, err.code, err.message) from None
    return job_view(job)


EVENTS_200 = {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "Server-sent events: `progress` with the job view as data on every change, "
    "then `end`.",
}
KEEP_ALIVE_SECONDS = 15.0
RENEW_LEASE_SECONDS = 20.0  # well inside the stream's lease (service.limits.STREAM_LEASE_SECONDS)


def change_key(row: dict) -> tuple:
    """What makes a new `progress` event: status, stage, progress or message changed."""
    return (row["status"], row.get("stage"), row.get("progress") or 0.0, row.get("message"))


class Watched:
    """One job that streams of this process follow: its last event, and an asyncio event set
    (and replaced) whenever that changes."""

    def __init__(self, row: dict) -> None:
        self.streams, self.version = 0, 0
        self.changed = asyncio.Event()
        self.update(row)

    def update(self, row: dict | None) -> None:
        if row is None:  # the job row is gone
            self.key, self.event = None, None
            self.end = f"event: end\ndata: {json.dumps({'status': 'gone'})}\n\n"
        else:
            view = job_view(row).model_dump(mode="json")
            self.key = change_key(row)
            self.event = f"event: progress\ndata: {json.dumps(view)}\n\n"
            status = view["status"]
            self.end = (
                f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                if status in TERMINAL
                else None
            )
        self.version += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class JobWatch:
    """Every event stream of one API process, fed by one poll loop: each interval, one narrow
    query for all the jobs followed, then the full row only of those that changed. 500 streams
    cost what one does; the loop stops when the last stream ends."""

    def __init__(self, store, interval: float) -> None:
        self.store, self.interval = store, interval
        self.loop = asyncio.get_running_loop()
        self.jobs: dict[str, Watched] = {}
        self._task: asyncio.Task | None = None

    def follow(self, job: dict) -> Watched:
        watched = self.jobs.get(job["id"])
        if watched is None:
            watched = self.jobs[job["id"]] = Watched(job)
        watched.streams += 1
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._poll())
        return watched

    def unfollow(self, job_id: str) -> None:
        watched = self.jobs.get(job_id)
        if watched is not None:
            watched.streams -= 1
            if watched.streams <= 0:
                del self.jobs[job_id]

    async def _poll(self) -> None:
        while self.jobs:
            await asyncio.sleep(self.interval)
            ids = list(self.jobs)
            if not ids:
                return
            try:
                keys = await run_in_threadpool(self.store.job_change_keys, ids)
                changed = [i for i in ids if i in self.jobs and keys.get(i) != self.jobs[i].key]
                rows = await run_in_threadpool(self.store.get_jobs, changed) if changed else {}
            except Exception:  # the store is unreachable: the streams wait, the loop goes on
                logger.warning("event streams could not read the job store", exc_info=True)
                continue
            for job_id in changed:
                if job_id in self.jobs:
                    self.jobs[job_id].update(rows.get(job_id))


def job_watch(request: Request) -> JobWatch:
    """This process's :class:`JobWatch` for the running event loop."""
    state = request.app.state
    watch = getattr(state, "job_watch", None)
    if watch is None or watch.loop is not asyncio.get_running_loop():
        watch = state.job_watch = JobWatch(state.store, state.settings_events_interval)
    return watch


@router.get(
    "/v1/jobs/{job_id}/events",
    tags=["jobs"],
    responses=errors(401, 404, 429) | {200: EVENTS_200},
    summary="Stream a job's stage and progress (server-sent events)",
    description="At most `SLIMFORMER_MAX_EVENT_STREAMS_PER_KEY` streams per key at once "
    "(429 `too_many_streams` beyond).",
    response_class=StreamingResponse,
)
async def job_events(job_id: str, request: Request, caller: CallerDep) -> StreamingResponse:
    limits = request.app.state.limits
    job = await run_in_threadpool(owned_job, request, job_id, caller)
    token = await run_in_threadpool(limits.open_stream, caller.owner)
    if token is None:
        raise too_many(
            f"this key already has {limits.streams_per_key} event streams open; close "
            "one or poll GET /v1/jobs/{id}",
            KEEP_ALIVE_SECONDS,
            "too_many_streams",
        )
    watch = job_watch(request)

    async def stream():
        watched = watch.follow(job)
        renewed = time.monotonic()
        try:
            yield "retry: 2000\n\n"
            sent = None
            while True:
                if watched.version != sent:
                    sent = watched.version
                    if watched.event is not None:
                        yield watched.event
                    if watched.end is not None:
                        yield watched.end
                        return
                changed = watched.changed
                try:
                    await asyncio.wait_for(changed.wait(), KEEP_ALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                if time.monotonic() - renewed > RENEW_LEASE_SECONDS:
                    renewed = time.monotonic()
                    await run_in_threadpool(limits.renew_stream, caller.owner, token)
        finally:
            watch.unfollow(job_id)
            with anyio.CancelScope(shield=True):  # runs when the client went away, too
                await run_in_threadpool(limits.close_stream, caller.owner, token)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
