"""The FastAPI application factory: ``create_app(settings)``."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from service.artifacts import make_artifact_store
from service.auth import AuthState
from service.dashboard import router as dashboard_router
from service.errors import error_response, install_error_handlers
from service.limits import make_limits
from service.metrics import ApiMetrics
from service.queue import make_celery, queue_depths, send_job
from service.reaper import Reaper, Send
from service.routes import router
from service.security_headers import install_security_headers
from service.settings import Settings
from service.store import JobStore

logger = logging.getLogger(__name__)

# the line breaks are part of the published OpenAPI description
DESCRIPTION = (
    "Compress Hugging Face transformer models: score attention heads and MLPs "
    "(Michel et al. 2019; Prasanna et al.\n"
    "2020), remove the least important ones or distil into a smaller student, measure the "
    "original and the compressed\n"
    "model side by side, and publish the result with an evaluation card.\n"
    "\n"
    "Authenticate with `Authorization: Bearer <key>` (`slimformer keys create`). Every error has "
    "the body\n"
    '`{"error": {"code", "message", "details"}}`.\n'
)
TAGS = ("jobs", "artifacts", "datasets", "spec", "health")
ERROR_BODY_422 = {
    "description": "Invalid request; `details.fields` lists each bad field.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def too_large_response(limit: int) -> Response:
    return error_response(413, "payload_too_large", f"request body larger than {limit} bytes")


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting a
    streamed body."""

    def __init__(self, app, *, default: int, uploads: int) -> None:
        self.app, self.default, self.uploads = app, default, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads if scope["path"].startswith("/v1/datasets") else self.default
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await too_large_response(limit)(scope, receive, send)
        seen, too_large, started = 0, False, False

        async def limited_receive():
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # the app sees a client that went away; the client gets the 413 below
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await too_large_response(limit)(scope, receive, send)


class RequestTimer:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): latency per method, route template
    and status."""

    def __init__(self, app, *, histogram) -> None:
        self.app, self.histogram = app, histogram

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def timed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = scope.get("route")
            self.histogram.labels(
                scope["method"], getattr(route, "path", "unmatched"), str(status["code"])
            ).observe(time.perf_counter() - started)


def create_app(settings: Settings | None = None, *, run_reaper: bool = True) -> FastAPI:
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(
        settings.resolved_database_url,
        pepper=settings.api_key_pepper,
        token_secret=settings.token_encryption_key,
        busy_timeout=settings.store_busy_timeout_seconds,
    )  # then 503 store_busy
    celery = make_celery(settings)
    send, ping_broker = broker_calls(celery)
    metrics = ApiMetrics()
    metrics.watch_store(store, settings, lambda: queue_depths(celery, settings))

    app = FastAPI(
        title="slimformer",
        version="1",
        description=DESCRIPTION,
        lifespan=make_lifespan(settings, store, send, run_reaper=run_reaper),
        openapi_tags=[{"name": tag} for tag in TAGS],
        # a trailing slash is a 404: Starlette's redirect would copy the Host header into Location
        redirect_slashes=False,
        docs_url=None,  # /docs comes with its own Content-Security-Policy, below
        redoc_url=None,
    )
    attach_state(app, settings, store, celery, metrics, send=send, ping_broker=ping_broker)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(dashboard_router)

    app.add_middleware(RequestTimer, histogram=metrics.http_latency)
    install_openapi(app)
    app.add_middleware(
        BodyLimit, default=settings.max_request_bytes, uploads=settings.max_upload_bytes
    )
    install_security_headers(app)  # last: its middleware wraps every response
    return app


def broker_calls(celery: Celery) -> tuple[Send, Callable[[], None]]:
    """``send(job_id, queue, countdown)``, which queues a job, and ``ping_broker()``, which raises
    when the broker cannot be reached."""

    def send(job_id: str, queue: str, countdown: float | None) -> None:
        send_job(celery, job_id, queue, countdown=countdown)

    def ping_broker() -> None:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)

    return send, ping_broker


def make_lifespan(settings: Settings, store: JobStore, send: Send, *, run_reaper: bool):
    """The app's lifespan: the reaper (when ``run_reaper``) while it serves; then the shutdown
    hooks, the reaper stopped and the store's connections closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = None
        if run_reaper:
            reaper = Reaper(
                store,
                send,
                interval=settings.reaper_interval_seconds,
                stale_after=settings.stale_after_seconds,
                requeue_queued_after=settings.requeue_queued_after_seconds,
            ).start()
        yield
        for hook in app.state.shutdown_hooks:
            hook()
        if reaper:
            reaper.stop()
        store.dispose()

    return lifespan


def attach_state(
    app: FastAPI,
    settings: Settings,
    store: JobStore,
    celery: Celery,
    metrics: ApiMetrics,
    *,
    send: Send,
    ping_broker: Callable[[], None],
) -> None:
    """What the routes read from ``app.state``: the settings, the store, the artifact store, the
    queue, the metrics, the rate limits and the authentication."""
    app.state.settings = settings
    app.state.shutdown_hooks = []
    app.state.settings_events_interval = settings.events_poll_seconds
    app.state.store = store
    app.state.artifacts = make_artifact_store(settings)
    app.state.send = send
    app.state.ping_broker = ping_broker
    app.state.celery = celery
    app.state.metrics = metrics
    app.state.limits = make_limits(settings)  # shared through Redis when there is one
    app.state.auth = AuthState(store, always=settings.mode == "production", setting=settings.auth)


def install_openapi(app: FastAPI) -> None:
    """Set ``app.openapi`` to the schema that ``/openapi.json`` serves (built once, then kept)."""

    def openapi() -> dict:
        """FastAPI's schema, with its default 422 body replaced by the one error body every route
        returns."""
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            for methods in schema["paths"].values():
                for operation in methods.values():
                    invalid = operation.get("responses", {}).get("422")
                    if invalid and "HTTPValidationError" in json.dumps(invalid):
                        operation["responses"]["422"] = copy.deepcopy(ERROR_BODY_422)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def app_from_environment() -> FastAPI:
    """The app of one API process when ``slimformer serve`` runs several (uvicorn imports it)."""
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
