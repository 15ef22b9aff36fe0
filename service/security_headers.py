"""The security headers of every response, in one place.

Every response carries ``X-Content-Type-Options: nosniff``. Every document a browser could run
script in (HTML, XHTML, SVG: the dashboard's pages, the card as HTML, an artifact that happens to be
an ``.html`` file, an error page) also carries the dashboard's Content-Security-Policy, no referrer
and no caching, unless its route set its own: only the API reference (``/docs``) does, with a policy
that allows Swagger UI's files and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.datastructures import MutableHeaders

# The pages load only their own scripts and styles, and images from blob URLs the scripts make.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
ALWAYS = {"X-Content-Type-Options": "nosniff"}
DOCUMENT_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    **ALWAYS,
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
DOCUMENT_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml")

SWAGGER_CDN = "https://cdn.jsdelivr.net"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


class SecurityHeaders:
    """Pure ASGI middleware: adds the headers above to each response that does not set them."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001, ANN204
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):  # noqa: ANN001, ANN202
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                wanted = DOCUMENT_HEADERS if media in DOCUMENT_TYPES else ALWAYS
                for name, value in wanted.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def docs_policy(html: str) -> str:
    """The dashboard's policy, widened just enough for Swagger UI: its script and stylesheet from
    the CDN, the page's own inline start-up script by hash, and inline styles (Swagger UI sets
    them; the page shows only the API's own description)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'self'; script-src 'self' {SWAGGER_CDN} {hashes}; "
        f"style-src 'self' {SWAGGER_CDN} 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    )


def install_security_headers(app: FastAPI) -> None:
    """The middleware (outermost, so that every response passes it: add it last) and the API
    reference page with its own policy (create the app with ``docs_url=None, redoc_url=None``)."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=root + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=None,
            swagger_favicon_url=root + "/static/favicon.svg",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        html = page.body.decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": docs_policy(html)})

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_middleware(SecurityHeaders)
