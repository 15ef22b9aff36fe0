"""The service on real parts: `slimformer serve` with its worker process, Redis + Postgres with
several workers, a worker killed with SIGKILL mid-job, an API restarted while jobs run, the Hub test
server for models."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import tarfile
import time

import httpx
import pytest
import torch
import transformers
from service_fixtures import *  # noqa: F403

from testkit.services import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "hf_alice_secret_token_123456"


def prune_spec(upload_id: str, **extra) -> dict:
    spec = {
        "model": {"id": "acme/tiny"},
        "dataset": {"upload_id": upload_id},
        "method": "prune",
        "prune": {"heads": 0.5, "ffn": 0.3},
        "evaluation": {"latency": False},
    }
    spec.update(extra)
    return spec


def distill_spec(upload_id: str, steps: int) -> dict:
    return {
        "model": {"id": "acme/tiny"},
        "dataset": {"upload_id": upload_id},
        "method": "distill",
        "distill": {"student": {"layers": 1}, "max_steps": steps, "epochs": 100},
        "evaluation": {"latency": False, "max_samples": 64},
    }


@pytest.fixture
def big_csv(tmp_path):
    """Enough rows for distillation to pass a checkpoint (every 200 steps of 32 rows)."""
    words = [
        ("great", "positive"),
        ("awful", "negative"),
        ("fine", "positive"),
        ("dull", "negative"),
    ]
    rows = ["sentence,label"] + [
        f"{w} film {i} of the year,{label}" for i in range(400) for w, label in words
    ]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def events(service: Service, job_id: str, timeout: float = 300) -> list[tuple[str, dict]]:
    """Read the job's server-sent events to the end."""
    out, event = [], None
    with service.client() as c, c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                out.append((event, json.loads(line.split(":", 1)[1])))
                if event == "end":
                    break
    return out


def test_embedded_job_runs_end_to_end_and_the_model_downloads_and_reloads(
    embedded_service, labelled_csv, tmp_path
):
    service = embedded_service
    upload = service.upload(labelled_csv)
    assert upload["rows"] == 48 and upload["columns"] == ["sentence", "label"]
    spec = prune_spec(upload["upload_id"], publish={"repo_id": "acme/tiny-pruned"})
    job = service.submit(spec | {"hub_token": TOKEN})
    stream = events(service, job["id"])
    assert stream[-1] == ("end", {"status": "succeeded"})
    # a tiny job passes some stages faster than the stream's poll; every event carries the finished
    # stages' times
    last = [data for name, data in stream if name == "progress"][-1]
    assert last["stage"] == "done"
    assert list(last["stage_seconds"]) == [
        "downloading",
        "scoring",
        "pruning",
        "evaluating",
        "writing_card",
        "publishing",
    ]
    progress = [data["progress"] for name, data in stream if name == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0

    job = service.job(job["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert job["metrics"]["metric"] == "accuracy" and job["metrics"]["compressed"] is not None
    assert job["metrics"]["base_model_commit"] == service.hub.repos["acme/tiny"].refs["main"]
    assert job["published"]["repo_url"].endswith("acme/tiny-pruned")
    assert set(job["stage_seconds"]) >= {"downloading", "scoring", "evaluating"}

    with service.client() as c:
        files = c.get(f"/v1/jobs/{job['id']}/artifacts").json()["files"]
        names = {f["path"] for f in files}
        assert all(len(f["sha256"]) == 64 for f in files)
        assert {"model.safetensors", "config.json", "README.md", "compression_report.json"} <= names
        tarball = c.get(f"/v1/jobs/{job['id']}/download")
        assert tarball.status_code == 200 and tarball.headers["content-type"] == "application/gzip"
        card = c.get(f"/v1/jobs/{job['id']}/card")
        assert card.status_code == 200 and "acme/tiny" in card.text
        html = c.get(f"/v1/jobs/{job['id']}/card", params={"format": "html"}).text
        assert f'src="/v1/jobs/{job["id"]}/artifacts/head_importance.png"' in html
    out = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(tarball.content), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    folder = out / job["id"]
    assert {p.name for p in folder.iterdir()} == names
    for f in files:
        assert hashlib.sha256((folder / f["path"]).read_bytes()).hexdigest() == f["sha256"]
    report = json.loads((folder / "compression_report.json").read_text())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=True
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(
        ["great movie number 1", "awful movie number 2"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2)
    assert report["pruning"] is not None and report["job_id"] == job["id"]

    # the worker counted the job in its own metrics endpoint, the API in its store-backed ones
    worker_metrics = httpx.get(
        f"http://127.0.0.1:{service.env['SLIMFORMER_WORKER_METRICS_PORT']}/metrics"
    ).text
    assert 'slimformer_worker_jobs_total{outcome="succeeded"} 1.0' in worker_metrics
    assert 'slimformer_worker_stage_seconds_count{stage="scoring"} 1.0' in worker_metrics
    with service.client() as c:
        api_metrics = c.get("/metrics").text
    assert 'slimformer_jobs{queue="cpu",status="succeeded"} 1.0' in api_metrics
    assert 'slimformer_stage_seconds_count{stage="scoring"} 1.0' in api_metrics

    # the published repo on the Hub holds the same model
    published = service.hub.repos["acme/tiny-pruned"]
    assert (
        published.commits[-1].files["model.safetensors"]
        == (folder / "model.safetensors").read_bytes()
    )

    # the Hub token is nowhere: database, logs, artifacts
    assert TOKEN not in service.logs()
    db = sqlite3.connect(service.data_dir / "slimformer.db")
    dump = "\n".join(db.iterdump())
    assert TOKEN not in dump
    assert db.execute("select hub_token from jobs").fetchall() == [
        (None,)
    ]  # wiped once the job ended
    for path in service.data_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_bad_input_fails_at_once_with_the_library_message(embedded_service, labelled_csv):
    service = embedded_service
    upload = service.upload(labelled_csv)
    missing = service.submit(
        prune_spec(upload["upload_id"]) | {"model": {"id": "acme/does-not-exist"}}
    )
    wrong_column = service.submit(
        prune_spec(upload["upload_id"])
        | {"dataset": {"upload_id": upload["upload_id"], "text_column": "review"}}
    )
    missing = service.wait(missing["id"])
    assert missing["status"] == "failed" and missing["attempts"] == 1
    assert (
        missing["error"]["code"] == "repo_not_found"
        and "acme/does-not-exist" in missing["error"]["message"]
    )
    wrong_column = service.wait(wrong_column["id"])
    assert wrong_column["status"] == "failed" and wrong_column["error"]["code"] == "dataset_error"
    assert "review" in wrong_column["error"]["message"]
    with service.client() as c:
        assert c.get(f"/v1/jobs/{missing['id']}/artifacts").status_code == 409


def test_transient_hub_failures_are_retried_by_the_job(embedded_service, labelled_csv):
    service = embedded_service
    upload = service.upload(labelled_csv)
    service.hub.fail_next(6, 503)  # more than the client's own retries: the job itself is retried
    job = service.wait(service.submit(prune_spec(upload["upload_id"]))["id"])
    assert job["status"] == "succeeded", (job["error"], job["message"], service.hub.requests[:12])
    assert job["attempts"] >= 2


def test_cancel_a_running_job_stops_it_within_seconds(embedded_service, big_csv):
    service = embedded_service
    upload = service.upload(big_csv)
    job = service.submit(distill_spec(upload["upload_id"], steps=100000))
    service.wait(job["id"], until=lambda j: j["stage"] == "distilling")
    with service.client() as c:
        asked = time.monotonic()
        assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    job = service.wait(job["id"], timeout=30)
    assert job["status"] == "cancelled"
    assert time.monotonic() - asked < 10
    assert not (service.data_dir / "artifacts" / "jobs" / job["id"]).exists()
    assert not (service.data_dir / "work" / job["id"]).exists()
    with service.client() as c:
        again = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def _worker_pids(service: Service) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", "slimformer.cli worker"], capture_output=True, text=True
    ).stdout.split()
    env_dir = str(service.data_dir)
    pids = []
    for pid in out:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if env_dir.encode() in fh.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_embedded_worker_killed_mid_job_is_restarted_and_the_job_resumes(embedded_service, big_csv):
    import os
    import signal

    service = embedded_service
    upload = service.upload(big_csv)
    job = service.submit(distill_spec(upload["upload_id"], steps=700))
    # distilling is 0.6 of the job's 0.95 weight after downloading's 0.1: past 0.37 means past step
    # 280 of 700, so the checkpoint of step 200 is on disk
    service.wait(
        job["id"], until=lambda j: j["stage"] == "distilling" and j["progress"] > 0.37, timeout=300
    )
    checkpoint = torch.load(
        service.data_dir / "work" / job["id"] / "checkpoints" / "checkpoint.pt", weights_only=True
    )
    assert checkpoint["run"]["step"] >= 200
    pids = _worker_pids(service)
    assert pids
    for pid in pids:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    job = service.wait(job["id"], timeout=400)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    with service.client() as c:
        report = c.get(f"/v1/jobs/{job['id']}/artifacts/compression_report.json").json()
    assert report["distillation"]["resumed_from_step"] >= 200
    assert "worker lost" in service.logs() or "sending it to the" in service.logs()


def test_redis_postgres_two_workers_survive_a_kill_and_an_api_restart(
    production_service, labelled_csv, big_csv
):
    service = production_service
    first, second = service.start_worker("first"), service.start_worker("second")
    upload = service.upload(labelled_csv)
    long_job = service.submit(distill_spec(service.upload(big_csv)["upload_id"], steps=300))
    short = [service.submit(prune_spec(upload["upload_id"], seed=i))["id"] for i in range(3)]
    service.wait(long_job["id"], until=lambda j: j["stage"] == "distilling")
    # the worker running the long job, from the job row's worker name (host:pid of the pool child)
    owner_pid = _job_worker_pid(service, long_job["id"])
    victim = next(w for w in (first, second) if _is_parent_of(w.pid, owner_pid))
    victim.kill9()
    # restart the API while jobs run: nothing is lost
    service.api.kill9()
    service.start_api(worker=False)
    replacement = service.start_worker("replacement")
    jobs = [service.wait(job_id, timeout=400) for job_id in [long_job["id"], *short]]
    assert [j["status"] for j in jobs] == ["succeeded"] * 4, [j.get("error") for j in jobs]
    assert jobs[0]["attempts"] == 2
    with service.client() as c:
        listed = c.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert sorted(j["id"] for j in listed) == sorted(
        [long_job["id"], *short]
    )  # none lost, none duplicated
    assert replacement.popen.poll() is None


def _job_worker_pid(service: Service, job_id: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(service.env["DATABASE_URL"])
    with engine.connect() as conn:
        worker = conn.execute(
            sqlalchemy.text("select worker from jobs where id = :id"), {"id": job_id}
        ).scalar_one()
    engine.dispose()
    return int(worker.rsplit(":", 1)[1])


def _is_parent_of(parent: int, child: int) -> bool:
    pid = child
    while pid > 1:
        if pid == parent:
            return True
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_serve_stops_its_worker(embedded_service, how):
    import os
    import signal

    service = embedded_service
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _worker_pids(service):
        time.sleep(0.2)
    assert _worker_pids(service), "serve started no worker"
    os.kill(service.api.pid, getattr(signal, how))
    service.api.popen.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _worker_pids(service):
        time.sleep(0.2)
    assert not _worker_pids(service), f"the worker outlived serve after {how}"


def test_a_burst_of_concurrent_posts_puts_every_job_on_the_redis_queue(
    production_service, labelled_csv
):
    """No worker runs: every accepted job must be one message in the broker's `cpu` list, none
    lost."""
    import asyncio

    service = production_service
    upload = service.upload(labelled_csv)["upload_id"]

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:

            async def post(seed: int) -> str:
                r = await client.post("/v1/jobs", json=prune_spec(upload, seed=seed))
                assert r.status_code == 202, r.text
                return r.json()["id"]

            return await asyncio.gather(*(post(i) for i in range(120)))

    ids = asyncio.run(burst())
    assert len(set(ids)) == 120
    db = service.env["REDIS_URL"].rsplit("/", 1)[1]
    messages = subprocess.run(
        ["redis-cli", "-n", db, "LRANGE", "cpu", "0", "-1"], capture_output=True, text=True
    ).stdout.splitlines()
    queued = [
        json.loads(json.loads(m)["headers"]["argsrepr"].replace("'", '"'))[0]
        for m in messages
        if m.strip()
    ]
    assert sorted(queued) == sorted(ids)
