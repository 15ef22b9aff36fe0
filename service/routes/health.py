"""Health and identity routes: liveness, readiness, who the API key is, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import errno
from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.artifacts import check_writable
from service.auth import CallerDep
from service.routes.common import errors
from service.schemas import Health, Me

router = APIRouter()

READY_503 = {
    503: {"model": Health, "description": "A dependency is unreachable or a disk is not writable."}
}


@router.get(
    "/v1/me",
    response_model=Me,
    tags=["health"],
    responses=errors(401, 429),
    summary="Who the API key is: its name, whether it is an admin, whether auth is on",
)
async def me(request: Request, caller: CallerDep) -> Me:
    return Me(
        key_id=caller.owner,
        name=caller.name,
        admin=caller.admin,
        auth_enabled=request.app.state.auth.enabled,
    )


@router.get(
    "/healthz", response_model=Health, tags=["health"], summary="Liveness: the process answers"
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    tags=["health"],
    summary="Readiness: job store, broker and artifact store reachable, disks writable",
    description="`checks` names each dependency: `store`, `broker`, `artifacts` (for the "
    "local store: its folder takes a new file) and `data_dir` (the data dir "
    "takes a new file: a full, read-only or foreign-owned disk fails). 503 "
    "when one is not ok.",
    responses=READY_503,
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {}
    probes = (
        ("store", state.store.ping),
        ("broker", state.ping_broker),
        ("artifacts", state.artifacts.ping),
        ("data_dir", partial(check_writable, state.settings.data_dir)),
    )
    for name, probe in probes:
        try:
            await asyncio.wait_for(run_in_threadpool(probe), timeout=5)
            checks[name] = "ok"
        except Exception as err:  # report which dependency failed, not a stack trace
            code = errno.errorcode.get(getattr(err, "errno", None) or 0)
            checks[name] = f"unavailable: {type(err).__name__}" + (f" ({code})" if code else "")
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks).model_dump()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
