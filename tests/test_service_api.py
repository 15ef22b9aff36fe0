"""The API in-process (FastAPI's test client; real SQLite store, real filesystem broker, no worker):
validation, errors, tenancy, limits, idempotency, artifacts, health and metrics."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from service.store import JobStore

SPEC = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "glue", "config": "sst2", "text_column": "sentence"},
    "method": "prune",
    "prune": {"heads": 0.5},
}


def make_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


@pytest.fixture
def app(tmp_path):
    application = create_app(make_settings(tmp_path), run_reaper=False)
    application.state.store.create_schema()
    return application


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keys(app):
    store: JobStore = app.state.store
    return {
        name: store.create_key(name, admin=name == "admin")[1] for name in ("alice", "bob", "admin")
    }


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def finish_job(app, job_id: str, files: dict[str, bytes], result: dict | None = None) -> None:
    """Play a worker: lease the job, publish a folder, record success."""
    store: JobStore = app.state.store
    assert store.claim(job_id, "test:1", stale_after=60) is not None
    folder = Path(app.state.settings.data_dir) / "made" / job_id
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    app.state.artifacts.publish_folder(f"jobs/{job_id}", folder)
    assert store.finish(
        job_id,
        "test:1",
        "succeeded",
        stage="done",
        progress=1.0,
        result=result or {"metric": "accuracy"},
    )


# -- jobs ------------------------------------------------------------------------------------------
def test_submit_returns_202_with_location_and_the_job_can_be_read_back(client):
    r = client.post("/v1/jobs", json=SPEC)
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0 and job["attempts"] == 0
    assert job["spec"]["prune"]["heads"] == 0.5 and job["spec"]["model"]["revision"] == "main"
    again = client.get(job["links"]["self"]).json()
    assert again["id"] == job["id"] and again["status"] == "queued"


def test_invalid_specs_get_422_with_field_paths(client):
    cases = {
        "prune.heads": SPEC | {"prune": {"heads": 1.5}},
        "surprise": SPEC | {"surprise": 1},
        "dataset.path": SPEC | {"dataset": {"path": "/etc/passwd"}},
        "model.id": SPEC | {"model": {"id": "../../etc"}},
    }
    for field, body in cases.items():
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 422, (field, r.text)
        error = r.json()["error"]
        assert error["code"] in ("invalid_spec", "invalid_request")
        fields = [f["field"] for f in error["details"]["fields"]]
        assert any(f and (f.startswith(field) or field.startswith(f)) for f in fields), (
            field,
            fields,
        )
        assert field.split(".")[-1] in error["message"]


def test_malformed_json_and_oversized_bodies(app, client):
    r = client.post("/v1/jobs", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    huge = (
        json.dumps(SPEC | {"seed": 1, "model": {"id": "a/" + "b" * 90}}).encode() + b" " * 2_000_000
    )
    r = client.post("/v1/jobs", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit counts what arrives
        for _ in range(40):
            yield b" " * 100_000

    r = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_jobs_and_routes_are_404_with_the_error_body(client):
    for path in (
        "/v1/jobs/nope",
        "/v1/jobs/00000000-0000-0000-0000-000000000000/artifacts",
        "/v1/nothing",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"code", "message", "details"}
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_idempotency_key_returns_the_first_job_and_refuses_a_different_body(client):
    first = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "abc"})
    again = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/jobs", json=SPEC | {"seed": 7}, headers={"Idempotency-Key": "abc"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/jobs").json()["items"]) == 1
    # an empty key is no key: two such requests make two jobs (once a 500, the second insert
    # colliding with the first's stored empty key)
    blank = [client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": ""}) for _ in (1, 2)]
    assert [r.status_code for r in blank] == [202, 202]
    assert blank[0].json()["id"] != blank[1].json()["id"]


def test_list_is_paginated_newest_first_and_filters_by_status(client):
    ids = [client.post("/v1/jobs", json=SPEC | {"seed": i}).json()["id"] for i in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    seen, cursor = [], None
    while True:
        page = client.get(
            "/v1/jobs", params={"limit": 2} | ({"cursor": cursor} if cursor else {})
        ).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["items"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422


def test_cancel_a_queued_job_at_once_and_409_once_it_ended(client):
    job = client.post("/v1/jobs", json=SPEC).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"


# -- auth and tenancy ------------------------------------------------------------------------------
def test_keys_separate_tenants_and_admin_sees_all(client, keys):
    assert client.post("/v1/jobs", json=SPEC).status_code == 401
    assert client.get("/v1/jobs", headers=auth("sf_nope_nope")).status_code == 401
    me = client.get("/v1/me", headers=auth(keys["alice"])).json()
    assert me["name"] == "alice" and me["admin"] is False and me["auth_enabled"] is True
    alice = client.post("/v1/jobs", json=SPEC, headers=auth(keys["alice"])).json()
    bob = client.post("/v1/jobs", json=SPEC, headers=auth(keys["bob"])).json()
    for path in ("", "/events", "/artifacts", "/download", "/card", "/artifacts/config.json"):
        r = client.get(f"/v1/jobs/{alice['id']}{path}", headers=auth(keys["bob"]))
        assert r.status_code == 404, path
    assert (
        client.post(f"/v1/jobs/{alice['id']}/cancel", headers=auth(keys["bob"])).status_code == 404
    )
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth(keys["bob"])).json()["items"]] == [
        bob["id"]
    ]
    everything = client.get("/v1/jobs", headers=auth(keys["admin"])).json()["items"]
    assert {j["id"] for j in everything} == {alice["id"], bob["id"]}
    # the same idempotency key under two keys makes two jobs
    a = client.post(
        "/v1/jobs", json=SPEC, headers=auth(keys["alice"]) | {"Idempotency-Key": "k"}
    ).json()
    b = client.post(
        "/v1/jobs", json=SPEC, headers=auth(keys["bob"]) | {"Idempotency-Key": "k"}
    ).json()
    assert a["id"] != b["id"]


def test_rate_limit_and_concurrent_job_limit_give_429(tmp_path):
    app = create_app(
        make_settings(tmp_path, rate_limit_per_minute=5, max_concurrent_jobs=2), run_reaper=False
    )
    app.state.store.create_schema()
    with TestClient(app) as client:
        assert client.post("/v1/jobs", json=SPEC).status_code == 202
        assert client.post("/v1/jobs", json=SPEC).status_code == 202
        r = client.post("/v1/jobs", json=SPEC)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
        for _ in range(2):
            client.get("/v1/jobs")
        r = client.get("/v1/jobs")
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1


def test_the_hub_token_is_encrypted_at_rest_and_never_returned(app, client):
    token = "hf_very_secret_value_42"
    job = client.post("/v1/jobs", json=SPEC | {"hub_token": token})
    assert job.status_code == 202 and token not in job.text and "hub_token" not in job.json()
    assert token not in client.get(f"/v1/jobs/{job.json()['id']}").text
    db = Path(app.state.settings.data_dir) / "slimformer.db"
    raw = sqlite3.connect(db)
    stored = raw.execute("select hub_token from jobs").fetchone()[0]
    assert stored and token not in stored
    assert token not in "\n".join(raw.iterdump())
    assert app.state.store.hub_token(app.state.store.get_job(job.json()["id"])) == token
    client.post(f"/v1/jobs/{job.json()['id']}/cancel")
    assert (
        raw.execute("select hub_token from jobs").fetchone()[0] is None
    )  # wiped when the job ended


# -- artifacts -------------------------------------------------------------------------------------
def test_a_finished_job_serves_the_cards_table_as_its_worker_kept_it(app, client):
    """The rows come formatted from the worker (the card's own function, tests/test_card.py); the
    view serves them as they are, beside the raw numbers, and the dashboard shows them."""
    job = client.post("/v1/jobs", json=SPEC).json()
    assert client.get(job["links"]["self"]).json()["table"] is None
    table = [
        {"name": "Perplexity", "original": "28.65", "compressed": "39.63", "change": "×1.38"},
        {"name": "Parameters", "original": "4,386", "compressed": "3,010", "change": "-31.4%"},
    ]
    table[0]["primary"], table[1]["primary"] = True, False
    finish_job(app, job["id"], {"README.md": b"# x"}, {"metric": "perplexity", "table": table})
    view = client.get(job["links"]["self"]).json()
    assert view["table"] == table and view["table"][0]["change"] == "×1.38"
    assert view["metrics"] == {"metric": "perplexity"}


def test_artifacts_list_range_download_and_card(app, client):
    job = client.post("/v1/jobs", json=SPEC).json()
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").status_code == 409
    content = bytes(range(256)) * 40
    card = (
        "---\nlicense: mit\n---\n# Card <script>alert(1)</script>\n\n"
        "![Heads](head_importance.png)\n\n"
        "| a | b |\n|---|--:|\n| 1 | 2 |\n\n"
        "<details>\n<summary>Job spec</summary>\n\n```yaml\nseed: 0\n```\n\n</details>\n"
    )
    finish_job(
        app,
        job["id"],
        {"model.safetensors": content, "README.md": card.encode(), "sub/x.txt": b"x"},
    )
    listed = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["files"]
    assert all(f["sha256"] is None for f in listed)  # finish_job recorded no digests
    assert [(f["path"], f["size"]) for f in listed] == [
        ("README.md", len(card)),
        ("model.safetensors", 10240),
        ("sub/x.txt", 1),
    ]
    url = f"/v1/jobs/{job['id']}/artifacts/model.safetensors"
    whole = client.get(url)
    assert (
        whole.status_code == 200
        and whole.content == content
        and whole.headers["accept-ranges"] == "bytes"
    )
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["content-range"] == "bytes 100-199/10240"
    assert client.get(url, headers={"Range": "bytes=10000-"}).content == content[10000:]
    assert client.get(url, headers={"Range": "bytes=-16"}).content == content[-16:]
    assert client.get(url, headers={"Range": "bytes=99999-"}).status_code == 416
    assert client.get(url, headers={"Range": "lines=1-2"}).status_code == 416
    for bad in (
        "..%2F..%2Fslimformer.db",
        "%2E%2E/%2E%2E/slimformer.db",
        "sub/..%2F..%2F..%2Fslimformer.db",
        "nothing.bin",
        "%2Fetc%2Fpasswd",
    ):
        r = client.get(f"/v1/jobs/{job['id']}/artifacts/{bad}")
        assert r.status_code == 404, bad
        assert r.json()["error"]["code"] in ("artifact_not_found", "not_found")
    tarball = client.get(f"/v1/jobs/{job['id']}/download")
    with tarfile.open(fileobj=io.BytesIO(tarball.content), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert (
        members[f"{job['id']}/model.safetensors"] == content
        and members[f"{job['id']}/sub/x.txt"] == b"x"
    )
    assert client.get(f"/v1/jobs/{job['id']}/card").text == card
    html = client.get(f"/v1/jobs/{job['id']}/card", params={"format": "html"}).text
    assert (
        f'<img src="/v1/jobs/{job["id"]}/artifacts/head_importance.png"' in html
        and "<table>" in html
    )
    assert "license: mit" not in html
    assert (
        "<script>" not in html and "&lt;script&gt;" in html
    )  # user-chosen text in a card stays text
    assert "<details><summary>Job spec</summary>" in html and "</details>" in html
    assert '<td class="align-right">2</td>' in html


def test_events_stream_ends_with_the_final_status(app, client):
    job = client.post("/v1/jobs", json=SPEC).json()
    finish_job(app, job["id"], {"README.md": b"# x"})
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
        text = "".join(r.iter_text())
    assert "event: progress" in text and 'event: end\ndata: {"status": "succeeded"}' in text


# -- uploads ---------------------------------------------------------------------------------------
def test_dataset_uploads_report_rows_and_columns_and_refuse_bad_files(app, client, tmp_path):
    ok = client.post(
        "/v1/datasets", files={"file": ("reviews.csv", b"sentence,label\nfine,1\nbad,0\n")}
    )
    assert ok.status_code == 201
    assert ok.json() | {"upload_id": None, "created_at": None} == {
        "upload_id": None,
        "filename": "reviews.csv",
        "size": 28,
        "rows": 2,
        "columns": ["sentence", "label"],
        "created_at": None,
    }
    tsv = client.post(
        "/v1/datasets", files={"file": ("x.tsv", b'sentence\tlabel\nit "is" fine\t1\n')}
    )
    assert tsv.status_code == 201 and tsv.json()["rows"] == 1
    jsonl = client.post(
        "/v1/datasets", files={"file": ("x.jsonl", b'{"text": "a"}\n{"text": "b"}\n')}
    )
    assert jsonl.json()["columns"] == ["text"] and jsonl.json()["rows"] == 2
    for name, content, code in (
        ("empty.csv", b"", "empty_file"),
        ("header.csv", b"a,b\n", "empty_file"),
        ("x.parquet", b"not parquet at all", "unreadable_file"),
        ("x.exe", b"MZ", "unsupported_file_type"),
    ):
        r = client.post("/v1/datasets", files={"file": (name, content)})
        assert r.status_code == 422, name
        assert (
            r.json()["error"]["code"] == code and name.split(".")[0] in r.json()["error"]["message"]
        )
    upload_id = ok.json()["upload_id"]
    job = client.post("/v1/jobs", json=SPEC | {"dataset": {"upload_id": upload_id}})
    assert job.status_code == 202
    stored = app.state.artifacts.list(f"uploads/{upload_id}")
    assert stored == [{"path": "reviews.csv", "size": 28}]


def test_plain_text_uploads_count_documents_and_a_blank_file_is_refused(client):
    text = b"= Title =\n\nFirst paragraph,\nstill the first.\n\n \n\nSecond paragraph.\n"
    r = client.post("/v1/datasets", files={"file": ("wiki.txt", text)})
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 3 and r.json()["columns"] == ["text"]
    r = client.post("/v1/datasets", files={"file": ("blank.txt", b"\n \n\n")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "empty_file"
    assert "no text" in r.json()["error"]["message"]


def test_uploads_over_the_limit_get_413_and_foreign_uploads_are_unknown(tmp_path):
    app = create_app(make_settings(tmp_path, max_upload_bytes=2048), run_reaper=False)
    app.state.store.create_schema()
    alice, bob = (app.state.store.create_key(n)[1] for n in ("alice", "bob"))
    with TestClient(app) as client:
        r = client.post(
            "/v1/datasets", files={"file": ("big.csv", b"a\n" + b"x\n" * 5000)}, headers=auth(alice)
        )
        assert r.status_code == 413
        up = client.post(
            "/v1/datasets", files={"file": ("s.csv", b"a\nx\n")}, headers=auth(alice)
        ).json()
        r = client.post(
            "/v1/jobs", json=SPEC | {"dataset": {"upload_id": up["upload_id"]}}, headers=auth(bob)
        )
        assert r.status_code == 422 and "dataset.upload_id" in r.json()["error"]["message"]


# -- health, metrics, settings ---------------------------------------------------------------------
def test_health_ready_and_metrics(client):
    assert client.get("/v1/me").json() == {
        "key_id": "local",
        "name": "local",
        "admin": True,
        "auth_enabled": False,
    }
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "store": "ok",
        "broker": "ok",
        "artifacts": "ok",
        "data_dir": "ok",
    }
    client.post("/v1/jobs", json=SPEC)
    text = client.get("/metrics").text
    assert 'slimformer_jobs{queue="cpu",status="queued"} 1.0' in text
    assert 'slimformer_queue_depth{queue="cpu"} 1.0' in text
    assert (
        "slimformer_http_request_seconds_bucket" in text
        and "slimformer_jobs_stale_heartbeat 0.0" in text
    )


def test_readyz_is_503_when_the_broker_is_unreachable(tmp_path):
    app = create_app(make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0"), run_reaper=False)
    app.state.store.create_schema()
    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"].startswith("unavailable")


def test_settings_refuse_dangerous_values(tmp_path):
    with pytest.raises(ValidationError, match="SLIMFORMER_API_KEY_PEPPER"):
        Settings(mode="production", database_url="postgresql://db/x", redis_url="redis://r")
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(
            mode="production",
            api_key_pepper="p" * 32,
            token_encryption_key="t" * 32,
            redis_url="redis://r",
        )
    with pytest.raises(ValidationError, match="STALE_AFTER"):
        Settings(heartbeat_seconds=10, stale_after_seconds=15)
    good = Settings(
        mode="production",
        api_key_pepper="p" * 32,
        token_encryption_key="t" * 32,
        database_url="postgres://u:pw@db/x",
        redis_url="redis://r",
    )
    assert good.resolved_database_url == "postgresql+psycopg://u:pw@db/x"
    assert "pw" not in json.dumps(good.public_summary())


def test_serve_refuses_a_public_address_without_keys_and_says_so(tmp_path):
    env = {"SLIMFORMER_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0" in r.stderr and "slimformer keys create" in r.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "serve"],
        capture_output=True,
        text=True,
        env=env | {"SLIMFORMER_MODE": "production"},
        timeout=120,
    )
    assert bad.returncode == 2 and "SLIMFORMER_API_KEY_PEPPER" in bad.stderr


def test_keys_command_prints_a_key_once_and_stores_only_its_hash(tmp_path):
    env = {"SLIMFORMER_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "slimformer.cli", "keys"]
    created = subprocess.run(
        run + ["create", "--name", "ci"], env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sf_") and "only time" in created.stderr
    listed = subprocess.run(
        run + ["list"], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert "ci" in listed and secret not in listed
    assert secret.encode() not in (tmp_path / "d" / "slimformer.db").read_bytes()


def test_readme_lists_every_setting_and_docs_list_every_route(app):
    from service.settings import env_variables

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    missing = [name for name in env_variables() if f"`{name}`" not in readme]
    assert not missing, f"README's settings table lacks {missing}"
    api_doc = (root / "docs" / "api.md").read_text()
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            assert f"`{method.upper()} {path.replace('{job_id}', '{id}')}" in api_doc, (
                method,
                path,
            )


# -- the spec's facts: what the dashboard offers comes from the spec -------------------------------
def _schema_leaves(schema: dict, node: dict, prefix: str = "") -> dict[str, dict]:
    """Every leaf property of the JSON schema of the job spec, by dotted path."""
    leaves = {}
    for name, prop in node["properties"].items():
        options = [o for o in prop.get("anyOf", [prop]) if o.get("type") != "null"]
        inner = options[0] if len(options) == 1 else prop
        if "$ref" in inner:
            target = schema["$defs"][inner["$ref"].rsplit("/", 1)[1]]
            leaves |= _schema_leaves(schema, target, f"{prefix}{name}.")
        else:
            leaves[prefix + name] = inner | {"description": prop.get("description")}
    return leaves


def test_spec_facts_are_the_spec_that_post_v1_jobs_takes(client, keys):
    from slimformer.spec import STAGE_TABLE, UPLOAD_FORMATS, JobSpec

    assert client.get("/v1/spec/facts").status_code == 401  # keyed, like every /v1 route
    r = client.get("/v1/spec/facts", headers=auth(keys["bob"]))
    assert r.status_code == 200
    facts = r.json()
    assert facts["stages"] == [stage.model_dump(mode="json") for stage in STAGE_TABLE]
    assert {f["suffix"]: f["format"] for f in facts["upload_formats"]} == UPLOAD_FORMATS
    schema = JobSpec.model_json_schema()
    leaves = _schema_leaves(schema, schema)
    assert set(facts["fields"]) == set(leaves)
    bounds = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
    for path, leaf in leaves.items():
        field = facts["fields"][path]
        enum = leaf.get("enum") or leaf.get("items", {}).get("enum")
        assert field["choices"] == enum, path
        for ours, theirs in bounds.items():
            assert field[ours] == leaf.get(theirs), (path, ours)
        assert field["description"] == leaf.get("description"), path
    assert facts["fields"]["prune.heads"] | {"description": None} == {
        "path": "prune.heads", "type": "number", "many": False, "nullable": False,
        "required": False, "choices": None, "default": 0.0, "ge": 0.0, "gt": None, "le": None,
        "lt": 1.0, "description": None,
    }  # fmt: skip


def test_a_job_view_names_the_stages_it_runs(client):
    from slimformer.spec import stages_for

    spec = SPEC | {"method": "prune_distill", "publish": {"repo_id": "acme/small"}}
    view = client.post("/v1/jobs", json=spec).json()
    assert view["stages"] == stages_for(spec)
    assert view["stages"][0] == "downloading" and view["stages"][-1] == "publishing"
    assert client.get(f"/v1/jobs/{view['id']}").json()["stages"] == view["stages"]
    assert "publishing" not in client.post("/v1/jobs", json=SPEC).json()["stages"]


def test_the_dashboard_keeps_no_copy_of_the_spec_facts():
    """The stage list, the form's choices and the accepted files come from GET /v1/spec/facts."""
    from slimformer.spec import STAGE_TABLE, spec_fields

    static = Path(__file__).resolve().parents[1] / "service" / "dashboard"
    scripts = {p.name: p.read_text() for p in (static / "static").glob("*.js")}
    assert "/v1/spec/facts" in scripts["common.js"] and "SF.facts()" in scripts["submit.js"]
    assert "SF.facts()" in scripts["job.js"] and "view.stages" in scripts["job.js"]
    for name, text in scripts.items():
        listed = [s.name for s in STAGE_TABLE if f'"{s.name}"' in text]
        assert len(listed) <= 2, (name, listed)  # no stage list of its own
    form = (static / "templates" / "submit.html").read_text()
    assert "accept=" not in form and "data-upload" in form
    for field in spec_fields().values():
        for choice in field.choices or []:
            assert f'value="{choice}"' not in form and f">{choice}<" not in form, choice


def test_the_readme_settings_table_is_generated_from_the_settings():
    from service.settings import settings_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Settings\n", 1)[1]
    start = section.index("| variable | default | meaning |")
    table = section[start : section.index("\n\n", start) + 1]
    assert table == settings_table(), (
        "README's settings table is not the generated one: replace it with the output of "
        "`python -m service.settings --markdown`"
    )


def test_docs_name_every_upload_format():
    from slimformer.spec import UPLOAD_FORMATS

    api_doc = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    uploads = api_doc.split("## Uploads\n", 1)[1].split("\n## ", 1)[0]
    routes = api_doc.split("## Routes\n", 1)[1].split("\n## ", 1)[0]
    for suffix in UPLOAD_FORMATS:
        assert f"`{suffix}`" in uploads and f"`{suffix}`" in routes, suffix
