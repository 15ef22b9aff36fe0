"""HTTP-level findings of a hostile-tenant probe, closed.

- A Range header with a number too long for ``int()`` is 416 ``invalid_range``, never a 500; the
  grammar takes at most 18 ASCII digits a number.
- An id with a trailing newline (``"acme/tiny\\n"``) is no id: every id check matches the whole
  string, so the job is refused with a 422 at POST, not failed later by a worker.
- A body the parser cannot read (a 5000-digit JSON integer, a multipart file name over the
  parser's header limit) answers a code ``docs/api.md`` lists, never an undocumented
  ``bad_request``.
- No redirect is built from the ``Host`` header: a trailing slash is a plain 404 with the API's
  error body.
- Every HTML response (dashboard pages, the card as HTML, an artifact served as HTML, the API
  reference) carries a Content-Security-Policy and ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.dashboard import router as dashboard_router
from service.settings import Settings
from slimformer.spec import is_hub_id

ROOT = Path(__file__).resolve().parents[2]
SPEC = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "glue", "config": "sst2"},
    "method": "prune",
    "prune": {"heads": 0.5},
}
CARD = b"# Card\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![plot](plot.png)\n"
MODEL = b"w" * 100
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def documented_codes() -> set[str]:
    """The error codes of the Errors table in docs/api.md."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = text.split("## Errors", 1)[1].split("\n\n| status", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", table))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One app, one finished job with a card, a model file and an HTML file, for the module."""
    tmp_path = tmp_path_factory.mktemp("http")
    app = create_app(Settings(data_dir=tmp_path / "data"), run_reaper=False)
    app.state.store.create_schema()
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
        store = app.state.store
        assert store.claim(job_id, "test:1", stale_after=60) is not None
        folder = tmp_path / "made" / job_id
        folder.mkdir(parents=True)
        files = {"README.md": CARD, "model.bin": MODEL, "report.html": b"<p>hi</p>"}
        for name, content in files.items():
            (folder / name).write_bytes(content)
        app.state.artifacts.publish_folder(f"jobs/{job_id}", folder)
        assert store.finish(job_id, "test:1", "succeeded", stage="done", progress=1.0, result={})
        yield client, job_id


# -- 3. Range numbers are bounded -----------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "bytes=" + "9" * 5000 + "-",
        "bytes=-" + "9" * 5000,
        "bytes=0-" + "9" * 5000,
        "bytes=" + "1" * 19 + "-",
    ],
    ids=["start-5000-digits", "suffix-5000-digits", "end-5000-digits", "19-digits"],
)
def test_a_range_with_numbers_too_long_is_416_invalid_range(served, value):
    client, job_id = served
    r = client.get(f"/v1/jobs/{job_id}/artifacts/model.bin", headers={"Range": value})
    assert r.status_code == 416, r.text
    assert r.json()["error"]["code"] == "invalid_range"
    assert r.headers["Content-Range"] == f"bytes */{len(MODEL)}"
    assert len(r.json()["error"]["message"]) < 200  # the header is not echoed whole


def test_a_range_of_18_digits_still_serves(served):
    client, job_id = served
    r = client.get(
        f"/v1/jobs/{job_id}/artifacts/model.bin", headers={"Range": "bytes=10-" + "9" * 18}
    )
    assert r.status_code == 206 and r.content == MODEL[10:]
    assert r.headers["Content-Range"] == f"bytes 10-99/{len(MODEL)}"


# -- 4. ids are matched whole ---------------------------------------------------------------------
def _put(field: str, value: str) -> dict:
    spec = copy.deepcopy(SPEC)
    if field == "distill.student.id":
        spec.update(method="distill", distill={"student": {"id": value}})
    elif field == "publish.repo_id":
        spec["publish"] = {"repo_id": value}
    else:
        section, name = field.split(".")
        spec[section][name] = value
    return spec


@pytest.mark.parametrize("value", ["acme/tiny\n", "tiny\n", "acme/tiny\r\n", "acme\n/tiny"])
@pytest.mark.parametrize(
    "field", ["model.id", "dataset.hub_id", "distill.student.id", "publish.repo_id"]
)
def test_an_id_with_a_newline_is_refused_at_post(served, field, value):
    client, _ = served
    r = client.post("/v1/jobs", json=_put(field, value))
    assert r.status_code == 422, r.text
    assert field in {f["field"] for f in r.json()["error"]["details"]["fields"]}


def test_is_hub_id_matches_the_whole_string():
    assert is_hub_id("acme/tiny") and is_hub_id("tiny")
    for value in ("acme/tiny\n", "tiny\n", "acme/t\u00efny"):
        assert not is_hub_id(value), repr(value)


def test_a_dashboard_job_id_with_a_newline_is_no_page(served):
    client, job_id = served
    assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get(f"/jobs/{job_id}%0A").status_code == 404


# -- 5. unparsable bodies answer documented codes -------------------------------------------------
def test_a_json_integer_too_long_to_parse_is_malformed_json(served):
    client, _ = served
    body = b'{"model": {"id": "acme/tiny"}, "seed": ' + b"1" * 5000 + b"}"
    r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "malformed_json" and "digits" in error["message"]
    assert error["code"] in documented_codes()


def test_a_multipart_file_name_too_long_to_parse_is_invalid_request(served):
    client, _ = served
    name = "a" * 5000 + ".csv"
    r = client.post("/v1/datasets", files={"file": (name, b"text,label\nx,1\n", "text/csv")})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["code"] in documented_codes()
    assert error["details"]["fields"][0]["field"] == "file"


def test_a_multipart_body_without_a_boundary_is_invalid_request(served):
    client, _ = served
    r = client.post("/v1/datasets", content=b"x", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_bad_request_is_never_an_answer():
    from service.errors import _STATUS_CODES

    assert "bad_request" not in _STATUS_CODES.values()


# -- 6. no Host-derived redirects -----------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/jobs/x/", "/v1/jobs/", "/submit/", "/v1/datasets/"])
def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header(served, path):
    client, _ = served
    r = client.get(path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404, (r.status_code, r.headers.get("location"))
    assert "location" not in r.headers
    assert r.json()["error"]["code"] == "not_found"


def test_the_routes_without_a_slash_still_answer(served):
    client, job_id = served
    for path in ("/", "/submit", f"/jobs/{job_id}", "/v1/jobs", f"/v1/jobs/{job_id}", "/healthz"):
        assert client.get(path, follow_redirects=False).status_code == 200, path


# -- 7. security headers on every HTML response ---------------------------------------------------
def test_every_html_page_carries_the_dashboards_security_headers(served):
    client, job_id = served
    pages = [
        "/",
        "/submit",
        f"/jobs/{job_id}",
        f"/v1/jobs/{job_id}/card?format=html",
        f"/v1/jobs/{job_id}/artifacts/report.html",
    ]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert r.headers.get("Content-Security-Policy") == DASHBOARD_CSP, path
        assert r.headers.get("X-Content-Type-Options") == "nosniff", path
        assert r.headers.get("Referrer-Policy") == "no-referrer", path


def test_every_html_route_of_the_app_carries_a_policy(served):
    client, _ = served
    documented = [
        path
        for path, methods in client.app.openapi()["paths"].items()
        if "get" in methods and "{" not in path
    ]
    pages = [r.path for r in dashboard_router.routes if "{" not in r.path]
    seen = 0
    for path in [*documented, *pages, "/docs", "/openapi.json"]:
        r = client.get(path)
        if not r.headers.get("content-type", "").startswith("text/html"):
            continue
        seen += 1
        csp = r.headers.get("Content-Security-Policy", "")
        for directive in ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
            assert directive in csp, (path, csp)
        assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0], path
        assert r.headers.get("X-Content-Type-Options") == "nosniff", path
    assert seen >= 3  # /, /submit, /docs


def test_json_answers_carry_nosniff_too(served):
    client, job_id = served
    for path in (f"/v1/jobs/{job_id}", "/v1/jobs/none", f"/v1/jobs/{job_id}/artifacts/model.bin"):
        assert client.get(path).headers.get("X-Content-Type-Options") == "nosniff", path
