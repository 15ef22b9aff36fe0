"""What a hostile tenant (or a sick disk) can do with files, closed for good.

- An aborted ``/download`` stops its tarball producer: no thread and no open file outlives the
  client.
- Upload bombs are refused at upload (rows, decoded bytes, expansion); a job reads only the rows it
  uses, in memory, never through a shared ``datasets`` cache; uploads can be deleted and both
  uploads and artifacts expire.
- A worker's disk error is a transient failure whose stored message names the problem and no server
  path; no stored error message carries a server path; ``/readyz`` says when a disk is not
  writable.
- Names too long for a file system are a 404 (artifacts) or a shortened name (uploads), never a 500.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import os
import socket
import subprocess
import tarfile
import time
import types
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_fixtures import hub_with_model  # noqa: F401

from service.app import create_app
from service.artifacts import LocalArtifactStore
from service.reaper import Reaper, Retention, expire_once
from service.settings import Settings
from service.store import JobStore
from testkit.services import Service, base_env, free_port
from workers.runner import JobRunner

SPEC = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "glue", "config": "sst2"},
    "method": "prune",
    "prune": {"heads": 0.5},
}
MB = 1 << 20


def make_app(tmp_path: Path, **overrides):
    app = create_app(Settings(data_dir=tmp_path / "data", **overrides), run_reaper=False)
    app.state.store.create_schema()
    return app


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def finish_job(app, job_id: str, files: dict[str, bytes]) -> None:
    """Play a worker: lease the job, publish a folder, record success."""
    store: JobStore = app.state.store
    assert store.claim(job_id, "test:1", stale_after=60) is not None
    folder = Path(app.state.settings.data_dir) / "made" / job_id
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    app.state.artifacts.publish_folder(f"jobs/{job_id}", folder)
    assert store.finish(
        job_id, "test:1", "succeeded", stage="done", progress=1.0, result={"metric": "accuracy"}
    )


def bomb_parquet(path: Path, rows: int = 200_000) -> Path:
    """About 24 KB on disk, 200 MB once decoded: one 1 KB string repeated."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x" * 1000] * rows, "label": [1] * rows}), path)
    return path


# -- 4. aborted downloads ---------------------------------------------------------------------
def _threads_and_files(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _start_download(port: int, job_id: str) -> socket.socket:
    """A raw HTTP download that reads its first 64 KB and then stops reading."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET /v1/jobs/{job_id}/download HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    got = 0
    while got < 64 * 1024:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the download"
        got += len(chunk)
    return sock


@pytest.fixture
def api_with_a_big_artifact(tmp_path):
    """`slimformer serve --no-worker` (a real uvicorn process) and a succeeded job of 24 MB."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir)
    store = JobStore(
        settings.resolved_database_url,
        pepper=settings.api_key_pepper,
        token_secret=settings.token_encryption_key,
    )
    store.create_schema()
    job, _ = store.create_job("local", SPEC, queue="cpu", max_attempts=1)
    assert store.claim(job["id"], "test:1", stale_after=60)
    folder = tmp_path / "model"
    folder.mkdir()
    for i in range(3):  # random bytes do not compress: the tarball is as big as the files
        (folder / f"part-{i}.bin").write_bytes(os.urandom(8 * MB))
    LocalArtifactStore(settings.resolved_artifact_dir).publish_folder(f"jobs/{job['id']}", folder)
    assert store.finish(job["id"], "test:1", "succeeded", stage="done", progress=1.0, result={})
    store.dispose()
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIMFORMER_", "REDIS_URL", "DATABASE_URL"))
    }
    env.update(SLIMFORMER_DATA_DIR=str(data_dir), SLIMFORMER_PORT=str(port), PYTHONUNBUFFERED="1")
    service = Service(data_dir, env, port).start_api(worker=False)
    yield service, job["id"]
    service.kill()


@pytest.mark.integration
def test_aborted_downloads_stop_their_producers_and_close_their_files(api_with_a_big_artifact):
    service, job_id = api_with_a_big_artifact
    pid = service.api.pid
    with service.client() as client:  # a whole download first: the server is warm
        whole = client.get(f"/v1/jobs/{job_id}/download")
    with tarfile.open(fileobj=io.BytesIO(whole.content), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers())
    assert names == [f"{job_id}/part-{i}.bin" for i in range(3)]
    time.sleep(0.5)
    threads, files = _threads_and_files(pid)

    sockets = [_start_download(service.port, job_id) for _ in range(30)]
    during = _threads_and_files(pid)
    # every download is mid-way: its producer waits for the client to read on
    assert during[0] >= threads + 25 and during[1] >= files + 25, (threads, files, during)
    for sock in sockets:
        sock.close()

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = _threads_and_files(pid)
        if now[0] <= threads + 2 and now[1] <= files + 2:
            break
        time.sleep(0.2)
    assert now[0] <= threads + 2, f"threads: {threads} before, {during[0]} during, {now[0]} after"
    assert now[1] <= files + 2, f"open files: {files} before, {during[1]} during, {now[1]} after"
    with service.client() as client:
        assert client.get("/healthz").status_code == 200


def test_a_download_stream_closed_early_stops_its_producer(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(4 * MB))
    store.publish_folder("jobs/j", folder)
    stream = store.iter_tar_gz("jobs/j", store.list("jobs/j"), root="j")
    assert next(stream)
    stream.close()
    deadline = time.monotonic() + 2
    while stream.producer_alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not stream.producer_alive
    # a stream nobody closes stops once it is dropped
    forgotten = store.iter_tar_gz("jobs/j", store.list("jobs/j"), root="j")
    thread = forgotten._thread
    assert next(forgotten)
    del forgotten
    thread.join(timeout=2)
    assert not thread.is_alive()


# -- 5. upload bombs, max_samples, deletion and retention ---------------------------------------
@pytest.mark.parametrize(
    "overrides, code, setting",
    [
        ({}, "upload_too_large_uncompressed", "SLIMFORMER_MAX_UPLOAD_EXPANSION"),
        (
            {"max_upload_expansion": 1e6, "max_upload_uncompressed_bytes": 50 * MB},
            "upload_too_large_uncompressed",
            "SLIMFORMER_MAX_UPLOAD_UNCOMPRESSED_BYTES",
        ),
        ({"max_upload_rows": 100_000}, "too_many_rows", "SLIMFORMER_MAX_UPLOAD_ROWS"),
    ],
)
def test_a_parquet_bomb_is_refused_at_upload_naming_the_limit(tmp_path, overrides, code, setting):
    bomb = bomb_parquet(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size < 32 * 1024
    app = make_app(tmp_path, **overrides)
    with TestClient(app) as client:
        started = time.monotonic()
        r = client.post("/v1/datasets", files={"file": ("bomb.parquet", bomb.read_bytes())})
        assert time.monotonic() - started < 5
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == code and setting in error["message"]
    assert error["details"]["setting"] == setting
    assert app.state.artifacts.list("uploads") == []


def test_text_uploads_are_capped_by_rows_and_size_and_compressed_files_are_refused(tmp_path):
    app = make_app(tmp_path, max_upload_rows=100, max_upload_uncompressed_bytes=4096)

    def rows(n: int) -> bytes:
        return ("text,label\n" + "".join(f"row {i},1\n" for i in range(n))).encode()

    with TestClient(app) as client:
        assert client.post("/v1/datasets", files={"file": ("ok.csv", rows(100))}).status_code == 201
        r = client.post("/v1/datasets", files={"file": ("many.csv", rows(101))})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows"
        lines = "".join(f'{{"text": "row {i}"}}\n' for i in range(101)).encode()
        r = client.post("/v1/datasets", files={"file": ("many.jsonl", lines)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows"
        wide = ("text\n" + ("y" * 2000 + "\n") * 3).encode()
        r = client.post("/v1/datasets", files={"file": ("wide.csv", wide)})
        assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large_uncompressed"
        for name in ("data.csv.gz", "data.zip"):
            r = client.post("/v1/datasets", files={"file": (name, b"\x1f\x8b\x08\x00")})
            assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_file_type"


def run_job(app, job_id: str, pipeline) -> tuple[str, list]:  # noqa: ANN001
    """Run a job in this process with ``pipeline`` standing in for the library's (the runner's
    own leasing, upload resolution, failure handling and publishing are real)."""
    sent: list = []
    runner = JobRunner(
        app.state.settings, app.state.store, app.state.artifacts, lambda *args: sent.append(args)
    )
    original = JobRunner._pipeline

    def patched(self, spec, job, workdir, hub_token, on_progress, should_cancel):  # noqa: ANN001
        import slimformer.pipeline as library

        saved = library.run
        library.run = lambda spec, workdir, **kw: pipeline(spec, Path(workdir), **kw)
        try:
            return original(self, spec, job, workdir, hub_token, on_progress, should_cancel)
        finally:
            library.run = saved

    runner._pipeline = types.MethodType(patched, runner)
    return runner.run(job_id), sent


def published(workdir: Path):
    """A finished pipeline's result: a model folder with a card."""
    folder = workdir / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("# card\n")
    return types.SimpleNamespace(folder=folder, report={}, published=None)


def test_a_job_reads_only_its_max_samples_rows_in_memory_and_leaves_no_cache(tmp_path, monkeypatch):
    import datasets

    import slimformer.data as data
    import slimformer.data.files as data_files

    shared_cache = tmp_path / "shared-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", shared_cache)
    big = bomb_parquet(tmp_path / "big.parquet")
    app = make_app(tmp_path, max_upload_expansion=1e6)  # large but allowed here
    read: list = []
    real_read_table = data_files.read_table

    def spy(path, **kwargs):  # noqa: ANN001
        table = real_read_table(path, **kwargs)
        read.append((len(table), table.cache_files))
        return table

    # load_text_file reads through its own module's read_table
    monkeypatch.setattr(data_files, "read_table", spy)
    seen: dict = {}

    def pipeline(spec, workdir, *, resolve_upload, on_progress, **_):  # noqa: ANN001
        # what the library's pipeline does with an upload
        train = data.load_text_file(resolve_upload(spec.dataset.upload_id))
        seen["rows"], seen["workdir_during"] = len(train), workdir.is_dir()
        return published(workdir)

    with TestClient(app) as client:
        up = client.post("/v1/datasets", files={"file": ("big.parquet", big.read_bytes())})
        assert up.status_code == 201 and up.json()["rows"] == 200_000
        spec = SPEC | {"dataset": {"upload_id": up.json()["upload_id"], "max_samples": 10}}
        job = client.post("/v1/jobs", json=spec).json()
        outcome, _ = run_job(app, job["id"], pipeline)
        assert outcome == "succeeded", client.get(f"/v1/jobs/{job['id']}").json()
    assert seen == {"rows": 10, "workdir_during": True}
    assert read == [(10, [])]  # ten rows read, held in memory: no cache file anywhere
    assert not shared_cache.exists() or not any(shared_cache.rglob("*"))
    assert not (app.state.settings.work_dir / job["id"]).exists()


def test_row_limits_read_only_the_first_rows_of_every_format(tmp_path):
    import pandas as pd

    from slimformer.data import file_row_limits, load_text_file

    frame = pd.DataFrame(
        {"text": [f"t{i}" for i in range(1000)], "label": [i % 2 for i in range(1000)]}
    )
    paths = [tmp_path / "d.csv", tmp_path / "d.tsv", tmp_path / "d.jsonl", tmp_path / "d.parquet"]
    frame.to_csv(paths[0], index=False)
    frame.to_csv(paths[1], index=False, sep="\t")
    frame.to_json(paths[2], orient="records", lines=True)
    frame.to_parquet(paths[3])
    with file_row_limits() as limits:
        for path in paths:
            limits.limit(path, 7)
            data = load_text_file(path)
            assert data.texts == [f"t{i}" for i in range(7)], path
            assert data.labels == [0, 1] * 3 + [0], path
    assert len(load_text_file(paths[3])) == 1000  # outside the block: every row


def test_delete_an_upload_owner_only_and_a_queued_job_then_fails_clearly(tmp_path):
    app = make_app(tmp_path)
    alice, bob = (app.state.store.create_key(n)[1] for n in ("alice", "bob"))
    with TestClient(app) as client:
        up = client.post(
            "/v1/datasets",
            files={"file": ("r.csv", b"text,label\na,1\nb,0\n")},
            headers=auth(alice),
        ).json()
        upload_id = up["upload_id"]
        spec = SPEC | {"dataset": {"upload_id": upload_id}}
        job = client.post("/v1/jobs", json=spec, headers=auth(alice)).json()
        r = client.delete(f"/v1/datasets/{upload_id}", headers=auth(bob))
        assert r.status_code == 404 and r.json()["error"]["code"] == "upload_not_found"
        assert app.state.artifacts.list(f"uploads/{upload_id}") != []
        r = client.delete(f"/v1/datasets/{upload_id}", headers=auth(alice))
        assert r.status_code == 204 and r.content == b""
        assert app.state.artifacts.list(f"uploads/{upload_id}") == []
        assert client.delete(f"/v1/datasets/{upload_id}", headers=auth(alice)).status_code == 404
        again = client.post("/v1/jobs", json=spec, headers=auth(alice))
        assert again.status_code == 422  # a new job cannot name it any more

        def pipeline(spec, workdir, *, resolve_upload, **_):  # noqa: ANN001
            resolve_upload(spec.dataset.upload_id)
            return published(workdir)

        assert run_job(app, job["id"], pipeline)[0] == "failed"
        failed = client.get(f"/v1/jobs/{job['id']}", headers=auth(alice)).json()
    assert failed["error"]["code"] == "dataset_error"
    assert f"upload {upload_id} was deleted" in failed["error"]["message"]


def _age(app, table: str, row_id: str, column: str, days: float) -> None:
    from sqlalchemy import update

    from service import store as store_module

    with app.state.store.engine.begin() as conn:
        tbl = getattr(store_module, table)
        conn.execute(
            update(tbl).where(tbl.c.id == row_id).values({column: time.time() - days * 86400})
        )


def test_uploads_and_artifacts_expire_and_the_job_says_so(tmp_path):
    app = make_app(tmp_path, upload_retention_days=7, artifact_retention_days=30)
    retention = Retention.from_settings(app.state.settings, app.state.artifacts)
    assert (
        Retention.from_settings(
            make_app(
                tmp_path / "forever", upload_retention_days=0, artifact_retention_days=None
            ).state.settings,
            app.state.artifacts,
        )
        is None
    )
    with TestClient(app) as client:
        old, new = (
            client.post("/v1/datasets", files={"file": (f"{n}.csv", b"text\na\n")}).json()
            for n in ("old", "new")
        )
        jobs = [client.post("/v1/jobs", json=SPEC | {"seed": i}).json()["id"] for i in range(2)]
        for job_id in jobs:
            finish_job(app, job_id, {"README.md": b"# card", "model.bin": b"w" * 100})
        _age(app, "uploads", old["upload_id"], "created_at", 8)
        _age(app, "jobs", jobs[0], "finished_at", 31)

        reaper = Reaper(
            app.state.store,
            lambda *a: None,
            interval=0.05,
            stale_after=60,
            requeue_queued_after=900,
            retention=retention,
        ).start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if client.get(f"/v1/jobs/{jobs[0]}").json()["stage"] == "expired":
                    break
                time.sleep(0.05)
        finally:
            reaper.stop()
        assert app.state.artifacts.list(f"uploads/{old['upload_id']}") == []
        assert app.state.artifacts.list(f"uploads/{new['upload_id']}") != []
        assert (
            client.post(
                "/v1/jobs", json=SPEC | {"dataset": {"upload_id": old["upload_id"]}}
            ).status_code
            == 422
        )
        expired = client.get(f"/v1/jobs/{jobs[0]}").json()
        assert expired["status"] == "succeeded" and expired["stage"] == "expired"
        assert "deleted after 30 days" in expired["message"]
        assert expired["metrics"]["artifacts_expired_at"]
        for path in ("/artifacts", "/download", "/card", "/artifacts/README.md"):
            r = client.get(f"/v1/jobs/{jobs[0]}{path}")
            assert r.status_code == 410 and r.json()["error"]["code"] == "artifacts_expired", path
        assert app.state.artifacts.list(f"jobs/{jobs[0]}") == []
        assert client.get(f"/v1/jobs/{jobs[1]}/artifacts").status_code == 200
    # a second pass finds nothing left to do
    assert expire_once(app.state.store, retention) == (0, 0)


# -- 8. disk errors and server paths -----------------------------------------------------------
@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "disk is full"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_a_disk_error_is_retried_then_fails_naming_the_problem_and_no_path(tmp_path, code, words):
    app = make_app(tmp_path, retry_backoff_seconds=0.01)
    where = app.state.settings.work_dir / "x" / "model" / "pytorch_model.bin"

    def pipeline(spec, workdir, **_):  # noqa: ANN001
        try:
            raise OSError(code, os.strerror(code), str(where))
        except OSError as err:  # wrapped as libraries do: only the cause is the OSError
            raise RuntimeError(f"saving failed: {err}") from err

    with TestClient(app) as client:
        job = client.post("/v1/jobs", json=SPEC).json()
        outcomes, delays = [], []
        for _ in range(3):
            outcome, sent = run_job(app, job["id"], pipeline)
            outcomes.append(outcome)
            delays += [d for _, _, d in sent]
            view = client.get(f"/v1/jobs/{job['id']}").json()
            if outcome == "retrying":
                assert view["status"] == "queued" and view["error"]["code"] == "worker_disk_error"
                assert words in view["message"] and "/" not in view["error"]["message"]
        assert outcomes == ["retrying", "retrying", "failed"]
        assert len(delays) == 2 and all(d > 0 for d in delays)
        assert view["status"] == "failed" and view["error"]["code"] == "worker_disk_error"
        assert words in view["error"]["message"]
        text = client.get(f"/v1/jobs/{job['id']}").text
    assert str(tmp_path) not in text and "pytorch_model.bin" not in text


def test_no_stored_message_carries_a_server_path(tmp_path):
    from slimformer.errors import DatasetError

    app = make_app(tmp_path, hf_cache_dir=tmp_path / "hub-cache")
    settings = app.state.settings
    home = Path.home()
    during: dict = {}

    def failing(job_id: str, error: Exception):
        def pipeline(spec, workdir, *, on_progress, **_):  # noqa: ANN001
            on_progress("downloading", 0.5, f"reading {settings.hf_cache_dir}/models--acme/x.bin")
            during["message"] = app.state.store.get_job(job_id)["message"]
            raise error

        return pipeline

    cases = [
        DatasetError(
            f"data file {settings.work_dir}/j/uploads/u/reviews.csv does not exist",
            details={"file": f"{settings.work_dir}/j/uploads/u/reviews.csv"},
        ),
        FileNotFoundError(
            2, "No such file or directory", f"{home}/.cache/huggingface/x/config.json"
        ),
        ValueError(
            f"cannot parse /srv/slimformer/data/work/abc/model/tokenizer.json at {tmp_path}"
        ),
    ]
    with TestClient(app) as client:
        for error in cases:
            job_id = client.post("/v1/jobs", json=SPEC).json()["id"]
            assert run_job(app, job_id, failing(job_id, error))[0] == "failed"
            view = client.get(f"/v1/jobs/{job_id}").json()
            text = str(view["error"]) + during["message"]
            for secret in (str(tmp_path), str(home), "/srv/slimformer", str(settings.data_dir)):
                assert secret not in text, (secret, text)
            assert ".../" in view["error"]["message"]
    assert "reviews.csv" in str(cases[0]) and ".../x.bin" in during["message"]


@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made unwritable even for root (the immutable flag), or the test is skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    else:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip("cannot make a folder unwritable for root here (chattr +i refused)")
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], capture_output=True)  # noqa: E731
    try:
        probe = folder / "probe"
        try:
            probe.write_bytes(b"x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("this file system ignores the permission bits")
        yield
    finally:
        undo()


@pytest.mark.parametrize("which", ["data_dir", "artifacts"])
def test_readyz_is_503_naming_a_disk_that_is_not_writable(tmp_path, which):
    app = make_app(tmp_path)
    folder = (
        app.state.settings.data_dir
        if which == "data_dir"
        else app.state.settings.resolved_artifact_dir
    )
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        with unwritable(folder):
            r = client.get("/readyz")
        assert client.get("/readyz").status_code == 200
    assert r.status_code == 503, r.text
    checks = r.json()["checks"]
    assert checks[which].startswith("unavailable")
    assert all(v == "ok" for k, v in checks.items() if k != which), checks


# -- 10. names too long for a file system ------------------------------------------------------
def test_artifact_paths_too_long_for_a_file_system_are_404(tmp_path):
    app = make_app(tmp_path)
    with TestClient(app) as client:
        job = client.post("/v1/jobs", json=SPEC).json()
        finish_job(app, job["id"], {"README.md": b"# card"})
        for path in ("a" * 256, "é" * 200, "sub/" + "b" * 300 + ".bin", "a/" * 600 + "x"):
            r = client.get(f"/v1/jobs/{job['id']}/artifacts/{path}")
            assert r.status_code == 404, (path[:20], r.status_code, r.text[:200])
            assert r.json()["error"]["code"] == "artifact_not_found"
            assert set(r.json()["error"]) == {"code", "message", "details"}
            assert len(r.json()["error"]["message"]) < 300


def test_both_artifact_stores_refuse_overlong_keys_before_touching_storage(tmp_path):
    from service.artifacts import BadArtifactPath, S3ArtifactStore

    stores = [LocalArtifactStore(tmp_path / "a")]
    if importlib.util.find_spec("boto3") is not None:
        stores.append(S3ArtifactStore("bucket", client=object()))  # any call would fail
    for store in stores:
        for key in ("jobs/j/" + "a" * 256, "jobs/j/" + "d/" * 600 + "x"):
            with pytest.raises(BadArtifactPath, match="too long"):
                store.size(key)
            with pytest.raises(BadArtifactPath):
                list(store.iter_bytes(key))


def test_upload_names_over_255_characters_are_shortened_not_a_500(tmp_path):
    app = make_app(tmp_path)
    with TestClient(app) as client:
        r = client.post("/v1/datasets", files={"file": ("r" * 300 + ".csv", b"text\nfine\n")})
        assert r.status_code == 201, r.text
        name = r.json()["filename"]
        assert name.endswith(".csv") and len(name) <= 120
        stored = app.state.artifacts.list(f"uploads/{r.json()['upload_id']}")
        assert stored == [{"path": name, "size": 10}]
        r = client.post("/v1/datasets", files={"file": ("data." + "c" * 300, b"text\nfine\n")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsupported_file_type"
        assert len(r.json()["error"]["message"]) < 300


# -- a real worker process ---------------------------------------------------------------------
def _pool_peak_rss(api_pid: int) -> dict[int, int]:
    """VmHWM (kB) of every descendant of ``api_pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    peaks, todo = {}, list(children.get(api_pid, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[pid] = int(line.split()[1])
    return peaks


@pytest.fixture
def roomy_service(tmp_path, hub_with_model):  # noqa: F811
    """``slimformer serve`` (API + embedded worker) that accepts Parquet expanding a millionfold."""
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = base_env(data_dir, hub_with_model, port) | {"SLIMFORMER_MAX_UPLOAD_EXPANSION": "1000000"}
    service = Service(data_dir, env, port)
    service.start_api(worker=True)
    yield service
    service.kill()


@pytest.mark.integration
@pytest.mark.slow
def test_a_real_worker_stays_small_on_a_large_upload_with_max_samples(roomy_service, tmp_path):
    service = roomy_service
    shared_cache = Path(service.env["HF_HOME"]) / "datasets"  # where `datasets` caches by default
    small = tmp_path / "small.csv"
    small.write_text("text,label\n" + "".join(f"fine film {i},{i % 2}\n" for i in range(40)))
    spec = {
        "model": {"id": "acme/tiny"},
        "method": "prune",
        "prune": {"heads": 0.5},
        "evaluation": {"latency": False, "max_samples": 8},
    }

    def run(upload: Path) -> None:
        up = service.upload(upload)
        job = service.submit(spec | {"dataset": {"upload_id": up["upload_id"], "max_samples": 10}})
        done = service.wait(job["id"], timeout=300)
        assert done["status"] == "succeeded", done

    run(small)  # the worker has loaded torch and a model: its peak memory is what a job needs
    before = _pool_peak_rss(service.api.pid)
    assert before, "no worker process found"
    run(bomb_parquet(tmp_path / "big.parquet", rows=200_000))  # 200 MB of text once decoded
    after = _pool_peak_rss(service.api.pid)
    grown = max(after.get(pid, 0) - peak for pid, peak in before.items())
    assert grown < 100 * 1024, f"a worker process grew by {grown // 1024} MB"
    assert not shared_cache.exists() or not any(p.is_file() for p in shared_cache.rglob("*"))
    assert not any((service.data_dir / "work").iterdir())  # work folders go with their jobs
