"""The job store on SQLite and on Postgres (schema from the Alembic migrations): leases, heartbeats,
the reaper's decisions, races between two workers."""

from __future__ import annotations

import threading
import time

import pytest

from service.migrations import current
from service.store import JobStore
from testkit.services import drop_postgres_database, fresh_postgres_database, postgres_available

SPEC = {"model": {"id": "acme/tiny"}, "method": "prune"}


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        database = None
    else:
        if not postgres_available():
            pytest.skip("Postgres is not running on 127.0.0.1:5432 (.ci/run starts it)")
        database = fresh_postgres_database()
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    s = JobStore(url, pepper="pepper", token_secret="secret")
    s.create_schema()
    yield s
    s.dispose()
    if database:
        drop_postgres_database(database)


def new_job(store: JobStore, **kwargs) -> dict:
    job, created = store.create_job(
        "owner", SPEC, queue="cpu", max_attempts=kwargs.pop("max_attempts", 2), **kwargs
    )
    assert created
    return job


def age_heartbeat(store: JobStore, job_id: str, seconds: float) -> None:
    from sqlalchemy import update

    from service.store import jobs

    with store.engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(heartbeat_at=time.time() - seconds)
        )


def test_migrations_reach_head(store):
    assert current(store.url) == "0002"
    store.create_schema()  # idempotent


def test_one_lease_per_job_even_when_two_workers_race(store):
    job = new_job(store)
    results = []
    barrier = threading.Barrier(2)

    def take(name: str) -> None:
        barrier.wait()
        results.append(store.claim(job["id"], name, stale_after=60))

    threads = [threading.Thread(target=take, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0]["attempts"] == 1
    loser = "w1" if winners[0]["worker"] == "w0" else "w0"
    assert store.heartbeat(job["id"], loser, progress=0.5) == "lost"
    assert store.finish(job["id"], loser, "succeeded") is False
    assert store.heartbeat(job["id"], winners[0]["worker"], progress=0.5) == "ok"


def test_the_reaper_requeues_a_lost_worker_s_job_then_fails_it_when_attempts_run_out(store):
    job = new_job(store, max_attempts=2)
    assert store.claim(job["id"], "w1", stale_after=60)
    assert store.reap(stale_after=60, requeue_queued_after=600) == (
        [],
        [],
    )  # fresh heartbeat: left alone
    age_heartbeat(store, job["id"], 120)
    to_send, failed = store.reap(stale_after=60, requeue_queued_after=600)
    assert [j["id"] for j in to_send] == [job["id"]] and failed == []
    assert store.get_job(job["id"])["status"] == "queued"
    assert (
        store.heartbeat(job["id"], "w1") == "lost"
    )  # the old worker, if it comes back, has lost it
    assert store.claim(job["id"], "w2", stale_after=60)["attempts"] == 2
    age_heartbeat(store, job["id"], 120)
    to_send, failed = store.reap(stale_after=60, requeue_queued_after=600)
    assert to_send == [] and [j["id"] for j in failed] == [job["id"]]
    ended = store.get_job(job["id"])
    assert ended["status"] == "failed" and ended["error_code"] == "worker_lost"
    assert "2 attempts" in ended["error_message"]


def test_a_stale_job_can_be_claimed_directly_by_a_redelivered_message(store):
    job = new_job(store)
    store.claim(job["id"], "w1", stale_after=60)
    assert (
        store.claim(job["id"], "w2", stale_after=60) is None
    )  # alive: a duplicate delivery is dropped
    age_heartbeat(store, job["id"], 120)
    assert store.claim(job["id"], "w2", stale_after=60)["worker"] == "w2"


def test_cancel_flags_reach_the_worker_and_a_lost_cancelled_job_ends_cancelled(store):
    job = new_job(store, hub_token="hf_secret_token")
    store.claim(job["id"], "w1", stale_after=60)
    store.request_cancel(job["id"], owner="owner")
    assert store.heartbeat(job["id"], "w1") == "cancel"
    age_heartbeat(store, job["id"], 120)
    store.reap(stale_after=60, requeue_queued_after=600)
    ended = store.get_job(job["id"])
    assert ended["status"] == "cancelled" and ended["hub_token"] is None


def test_queued_jobs_no_worker_took_are_sent_again(store):
    job = new_job(store)
    assert store.reap(stale_after=60, requeue_queued_after=600) == ([], [])
    from sqlalchemy import update

    from service.store import jobs

    with store.engine.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == job["id"]).values(enqueued_at=time.time() - 700)
        )
    to_send, _ = store.reap(stale_after=60, requeue_queued_after=600)
    assert [j["id"] for j in to_send] == [job["id"]]
    assert store.reap(stale_after=60, requeue_queued_after=600) == (
        [],
        [],
    )  # once per period, not every pass


def test_transient_failures_requeue_with_a_delay(store):
    job = new_job(store)
    store.claim(job["id"], "w1", stale_after=60)
    assert store.requeue(
        job["id"],
        "w1",
        delay=30,
        message="retrying",
        error={"code": "hub_unavailable", "message": "503"},
    )
    queued = store.get_job(job["id"])
    assert queued["status"] == "queued" and queued["retry_at"] > time.time() + 25
    assert queued["error_code"] == "hub_unavailable"
