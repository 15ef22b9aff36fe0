"""Limits that hold under attack and across API processes: failed logins are throttled before the
store is asked, the per-key rate limit is one limit for every process sharing Redis, a key holds a
bounded number of event streams, and the streams of one process share one poll of the store.

Redis tests use a database number of their own and skip without a Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.app import create_app
from service.commands import uvicorn_options
from service.limits import MemoryWindows, RedisWindows, make_limits
from service.settings import Settings
from testkit.services import (
    Service,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    postgres_available,
    redis_available,
    redis_database,
)

SPEC = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "glue", "config": "sst2"},
    "prune": {"heads": 0.5},
}
SECRETS = {"api_key_pepper": "p" * 32, "token_encryption_key": "t" * 32}


def settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


def make_app(tmp_path: Path, **overrides):
    app = create_app(settings(tmp_path, **overrides), run_reaper=False)
    app.state.store.create_schema()
    return app


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def redis_db() -> Iterator[int]:
    """A Redis database number to themselves, emptied before and after."""
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    with redis_database() as number:
        yield number


def key_lookups(app) -> list[str]:
    """Every store statement that looks an API key up by its id, from now on (not the check
    whether any key exists, which decides whether auth is on)."""
    seen: list[str] = []

    @event.listens_for(app.state.store.engine, "before_cursor_execute")
    def _spy(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if "FROM api_keys" in statement and "WHERE api_keys.id" in statement:
            seen.append(statement)

    return seen


# -- failed logins ---------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
def limits_backend(request) -> dict:
    """Settings for the limits' two backends: this process, or Redis."""
    if request.param == "memory":
        return {}
    return {"redis_url": f"redis://127.0.0.1:6379/{request.getfixturevalue('redis_db')}"}


def test_wrong_secrets_for_one_key_are_throttled_before_the_store_is_asked(
    tmp_path, limits_backend
):
    app = make_app(tmp_path, auth_failures_per_minute=10, **limits_backend)
    key, secret = app.state.store.create_key("alice")
    lookups = key_lookups(app)
    with TestClient(app) as client:
        codes = [
            client.get("/v1/jobs", headers=bearer(f"sf_{key.id}_guess{i}")).status_code
            for i in range(30)
        ]
        assert codes == [401] * 10 + [429] * 20
        assert len(lookups) == 10  # the 20 throttled attempts cost no query
        r = client.get("/v1/jobs", headers=bearer(f"sf_{key.id}_guess"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"]["details"]["retry_after_seconds"] > 0
        # the key id is throttled from any address, while another address is not
        other = TestClient(app, client=("192.0.2.7", 4000))
        assert other.get("/v1/jobs", headers=bearer(secret)).status_code == 429
        assert other.get("/v1/me", headers=bearer("sf_0123456789ab_x")).status_code == 401


def test_guessing_many_key_ids_from_one_address_is_throttled(tmp_path):
    app = make_app(tmp_path, auth_failures_per_minute=10)
    _, secret = app.state.store.create_key("alice")
    lookups = key_lookups(app)
    attacker = TestClient(app, client=("198.51.100.9", 5000))
    codes = [
        attacker.get("/v1/me", headers=bearer(f"sf_{uuid.uuid4().hex[:12]}_x")).status_code
        for _ in range(25)
    ]
    # over its budget the address still gets 429 for a bad key, at the cost of the one
    # primary-key read any key check costs (a valid key from it still works: test_tenancy.py)
    assert codes == [401] * 10 + [429] * 15 and len(lookups) == 25
    # a malformed secret counts too, and costs no query; a valid key from elsewhere is unaffected
    assert attacker.get("/v1/me", headers=bearer("not-a-key")).status_code == 429
    assert len(lookups) == 25
    assert TestClient(app).get("/v1/me", headers=bearer(secret)).status_code == 200


def test_a_revoked_key_stops_working_within_the_cache_time(tmp_path):
    app = make_app(tmp_path, auth_cache_seconds=0.5)
    key, secret = app.state.store.create_key("alice")
    lookups = key_lookups(app)
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get("/v1/me", headers=bearer(secret)).status_code == 200
        assert len(lookups) == 1  # checked once, then trusted for auth_cache_seconds
        assert app.state.store.revoke_key(key.id)
        deadline = time.monotonic() + 5
        while client.get("/v1/me", headers=bearer(secret)).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key kept working past the cache time"
            time.sleep(0.1)
        assert client.get("/v1/me", headers=bearer(secret)).status_code == 401


# -- the rate limit across processes --------------------------------------------------------------
def test_two_api_apps_sharing_redis_allow_one_limit_between_them(tmp_path, redis_db):
    url = f"redis://127.0.0.1:6379/{redis_db}"
    # two apps, as two API processes would be: one job store, one Redis, nothing else shared
    apps = [make_app(tmp_path, redis_url=url, rate_limit_per_minute=10) for _ in range(2)]
    _, secret = apps[0].state.store.create_key("alice")
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        codes = [
            (a if i % 2 else b).get("/v1/jobs", headers=bearer(secret)).status_code
            for i in range(30)
        ]
    assert codes.count(200) == 10 and codes.count(429) == 20, codes
    assert codes[:10] == [200] * 10  # both processes counted every request, neither its own


@pytest.mark.integration
def test_two_serve_processes_sharing_redis_and_postgres_allow_one_limit(tmp_path, redis_db):
    if not postgres_available():
        pytest.skip("Postgres is not running on 127.0.0.1:5432 (.ci/run starts it)")
    database = fresh_postgres_database()
    env = {
        "SLIMFORMER_MODE": "production",
        "SLIMFORMER_API_KEY_PEPPER": "p" * 32,
        "SLIMFORMER_TOKEN_ENCRYPTION_KEY": "t" * 32,
        "SLIMFORMER_RATE_LIMIT_PER_MINUTE": "12",
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "SLIMFORMER_API_WORKERS": "1",
    }
    services = []
    try:
        for name in ("a", "b"):
            data = tmp_path / name
            data.mkdir()
            port = free_port()
            services.append(
                Service(
                    data,
                    {
                        **_plain_env(),
                        **env,
                        "SLIMFORMER_DATA_DIR": str(data),
                        "SLIMFORMER_PORT": str(port),
                    },
                    port,
                )
            )
        assert services[0].command("migrate").returncode == 0
        secret = services[0].command("keys", "create", "--name", "alice").stdout.strip()
        for service in services:
            service.start_api(worker=False)
        codes = []
        for i in range(36):
            r = httpx.get(services[i % 2].url + "/v1/jobs", headers=bearer(secret), timeout=10)
            codes.append(r.status_code)
        assert codes.count(200) == 12 and codes.count(429) == 24, codes
    finally:
        for service in services:
            service.kill()
        drop_postgres_database(database)


def _plain_env() -> dict:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIMFORMER_", "REDIS_URL", "DATABASE_URL"))
    }


def test_redis_windows_and_leases(redis_db):
    import redis

    windows = RedisWindows(redis.Redis(port=6379, db=redis_db), window=1.0)
    assert [windows.hit("k", 2) for _ in range(3)][:2] == [None, None]
    assert 0 < windows.hit("k", 2) <= 1.0
    windows.add(["a", "b"])
    assert windows.blocked(["a", "b"], 2) is None
    windows.add(["b"])
    wait = windows.blocked(["a", "b"], 2)
    assert wait is not None and 0 < wait <= 1.0
    assert windows.acquire("s", "t1", 2, 30) and windows.acquire("s", "t2", 2, 30)
    assert not windows.acquire("s", "t3", 2, 30)
    windows.release("s", "t1")
    assert windows.acquire("s", "t3", 2, 30)
    windows.renew("s", "t2", 0.2)  # a lease not renewed in time ends by itself
    time.sleep(0.4)
    assert windows.acquire("s", "t4", 2, 30)


def test_limits_fall_back_to_this_process_when_redis_is_unreachable(tmp_path):
    limits = make_limits(
        settings(tmp_path, redis_url="redis://127.0.0.1:1/0", rate_limit_per_minute=3)
    )
    assert limits.shared
    assert [limits.hit("alice") for _ in range(4)][:3] == [None] * 3
    assert limits.hit("alice") is not None


def test_memory_windows_block_until_the_nth_latest_failure_ages_out():
    windows = MemoryWindows(window=1.0)
    windows.add(["x"])
    time.sleep(0.2)
    windows.add(["x"])
    wait = windows.blocked(["x", "y"], 2)
    assert wait is not None and wait <= 0.81  # until the older failure is a window old
    assert windows.blocked(["x", "y"], 3) is None
    time.sleep(wait + 0.05)
    assert windows.blocked(["x"], 2) is None


# -- event streams ---------------------------------------------------------------------------------
@contextmanager
def serving(app) -> Iterator[str]:
    """The app behind a real uvicorn server in a thread (TestClient cannot hold streams open)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, http="h11")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@contextmanager
def open_stream(client: httpx.Client, job_id: str, secret: str) -> Iterator[httpx.Response]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=bearer(secret)) as r:
        if r.status_code == 200:
            lines = r.iter_lines()
            assert next(lines).startswith("retry:")
            assert next(lines) == "" and next(lines) == "event: progress"
        else:
            r.read()
        yield r


def test_a_key_holds_a_bounded_number_of_event_streams(tmp_path):
    app = make_app(tmp_path, max_event_streams_per_key=2, events_poll_seconds=0.2)
    _, alice = app.state.store.create_key("alice")
    _, bob = app.state.store.create_key("bob")
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        job = client.post("/v1/jobs", json=SPEC, headers=bearer(alice)).json()
        other = client.post("/v1/jobs", json=SPEC, headers=bearer(bob)).json()
        with open_stream(client, job["id"], alice) as first, open_stream(client, job["id"], alice):
            assert first.status_code == 200
            with open_stream(client, job["id"], alice) as third:
                assert third.status_code == 429
                body = third.json()["error"]
                assert body["code"] == "too_many_streams" and "2 event streams" in body["message"]
                assert int(third.headers["retry-after"]) >= 1
            with open_stream(client, other["id"], bob) as bobs:  # the cap is per key
                assert bobs.status_code == 200
        # closed streams give their slots back
        deadline = time.monotonic() + 10
        while True:
            with open_stream(client, job["id"], alice) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "closed streams kept their slots"
            time.sleep(0.1)


def test_the_streams_of_one_process_share_one_poll_of_the_store(tmp_path):
    app = make_app(tmp_path, events_poll_seconds=0.1)
    store = app.state.store
    polls: list[list[str]] = []
    reads: list[str] = []
    narrow, full, single = store.job_change_keys, store.get_jobs, store.get_job
    store.job_change_keys = lambda ids: polls.append(list(ids)) or narrow(ids)
    store.get_jobs = lambda ids: reads.extend(ids) or full(ids)
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        job = client.post("/v1/jobs", json=SPEC).json()
        with (
            open_stream(client, job["id"], "x"),
            open_stream(client, job["id"], "x"),
            open_stream(client, job["id"], "x"),
        ):
            store.get_job = lambda *a, **k: reads.append("get_job") or single(*a, **k)
            polls.clear()
            started = time.monotonic()
            while len(polls) < 5:
                assert time.monotonic() - started < 30, "the streams' job was not polled"
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            # one narrow query per interval for the three streams together, no row reads while
            # nothing changes
            assert all(ids == [job["id"]] for ids in polls)
            assert len(polls) <= elapsed / 0.1 + 2 and reads == []
            store.get_job = single
            assert store.claim(job["id"], "w:1", stale_after=60)
            store.finish(job["id"], "w:1", "succeeded", stage="done", progress=1.0)
        text = client.get(f"/v1/jobs/{job['id']}/events").text
        assert "event: end" in text and '"status": "succeeded"' in text


# -- what serve asks of uvicorn -------------------------------------------------------------------
def test_serve_bounds_request_heads_and_runs_two_api_processes_in_production(tmp_path):
    local = settings(tmp_path)
    options = uvicorn_options(local)
    assert options["http"] == "h11" and options["h11_max_incomplete_event_size"] <= 64 * 1024
    assert options["timeout_keep_alive"] == local.keep_alive_seconds
    assert options["limit_concurrency"] == local.max_connections
    assert local.resolved_api_workers == 1
    production = settings(
        tmp_path,
        mode="production",
        redis_url="redis://r:6379/0",
        database_url="postgresql://u@db/s",
        **SECRETS,
    )
    assert production.resolved_api_workers == 2
    with pytest.raises(ValueError, match="REDIS_URL"):
        settings(tmp_path, api_workers=2)
