"""The web dashboard: server-rendered HTML shells, plus a little JavaScript and CSS, all served by
the API.

The pages hold no job data. The browser asks the v1 API for everything with the API key the person
typed in (kept in the tab's session storage), so a page or asset never shows one key's jobs to
another.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.errors import ApiError

HERE = Path(__file__).parent
STATIC = HERE / "static"
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# matched whole (fullmatch): a "$" would also match before a final newline
STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
JOB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
)

router = APIRouter(include_in_schema=False)


def _page(name: str, **context) -> HTMLResponse:
    html = templates.get_template(f"{name}.html").render(page=name, **context)
    # the Content-Security-Policy and the other headers of every HTML response:
    # service/security_headers.py
    return HTMLResponse(html)


@router.get("/", response_class=HTMLResponse)
async def jobs_page() -> HTMLResponse:
    return _page("jobs", title="Jobs")


@router.get("/submit", response_class=HTMLResponse)
async def submit_page() -> HTMLResponse:
    return _page("submit", title="New job")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str) -> HTMLResponse:
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "not_found", f"no page for job {job_id!r}")
    # the id comes from the address the person typed; the page fetches the job itself with their key
    return _page("job", title=f"Job {job_id[:8]}", job_id=job_id)


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    path = STATIC / name
    if not STATIC_NAME.fullmatch(name) or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[path.suffix],
        headers={"Cache-Control": "no-cache"},
    )
