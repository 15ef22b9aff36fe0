"""What a hostile tenant or a careless operator could do to auth and the job store, closed.

- Revoking every key never turns auth off: auth is off only when the operator says so
  (``SLIMFORMER_AUTH=off``), never on a public address and never in production mode.
- The per-key concurrent-job limit holds under any concurrency (count and insert are one
  transaction, serialised per owner).
- A wiped Hub token cannot be read back from the SQLite files (``-wal`` included).
- A locked job store answers 503 ``store_busy`` with ``Retry-After`` within seconds.
- A body that is not UTF-8 or nests too deep is ``malformed_json``, as documented.

The store-dependent tests run on SQLite and on Postgres (skipped where Postgres is not running).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from service.store import JobStore, TokenCipher
from testkit.services import drop_postgres_database, fresh_postgres_database, postgres_available

SPEC = {
    "model": {"id": "acme/tiny"},
    "dataset": {"hub_id": "glue", "config": "sst2", "text_column": "sentence"},
    "method": "prune",
    "prune": {"heads": 0.5},
}
TOKEN_SECRET = "a-token-encryption-secret-for-tests"
FERNET = re.compile(rb"gAAAAA[A-Za-z0-9_\-]{40,}={0,2}")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str | None]:
    """None (the default SQLite file under the data dir) or a fresh Postgres database."""
    if request.param == "sqlite":
        yield None
        return
    if not postgres_available():
        pytest.skip("Postgres is not running on 127.0.0.1:5432 (.ci/run starts it)")
    name = fresh_postgres_database()
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    drop_postgres_database(name)


def make_app(tmp_path: Path, database_url: str | None = None, **overrides) -> FastAPI:
    """The API in-process, with the per-process key cache and login throttle out of the way."""
    settings = dict(
        auth_cache_seconds=0,
        auth_failures_per_minute=10_000,
        rate_limit_per_minute=10_000,
        token_encryption_key=TOKEN_SECRET,
    )
    app = create_app(
        Settings(data_dir=tmp_path / "data", database_url=database_url, **(settings | overrides)),
        run_reaper=False,
    )
    app.state.store.create_schema()
    return app


def recover_tokens(raw: bytes, cipher: TokenCipher) -> set[str]:
    """Every Hub token that decrypts from Fernet tokens anywhere in ``raw``. A stored value may
    run into the next column's bytes, so each candidate is tried at every valid Fernet length."""
    found = set()
    for match in FERNET.finditer(raw):
        text = match.group().decode()
        for blocks in range(64):  # version + time + IV + 16-byte blocks + HMAC, base64
            size = 4 * -(-(57 + 16 * blocks) // 3)
            if size > len(text):
                break
            token = cipher.decrypt(text[:size])
            if token is not None:
                found.add(token)
    return found


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


# -- 2. revoking every key never turns auth off -------------------------------------------------
def test_revoking_every_key_leaves_auth_on_and_revoked_keys_get_401(tmp_path, database_url):
    app = make_app(tmp_path, database_url)
    store: JobStore = app.state.store
    alice, alice_secret = store.create_key("alice")
    bob, bob_secret = store.create_key("bob")
    with TestClient(app) as client:
        assert client.post("/v1/jobs", json=SPEC, headers=bearer(alice_secret)).status_code == 202
        assert client.post("/v1/jobs", json=SPEC, headers=bearer(bob_secret)).status_code == 202
        assert_unauthorized(client.get("/v1/jobs"))
        assert store.revoke_key(alice.id) and store.revoke_key(bob.id)  # `slimformer keys revoke`
        time.sleep(2.5)  # longer than any cache of "is auth on" in the API process
        for headers in ({}, bearer(alice_secret), bearer(bob_secret), bearer("sf_x_y")):
            assert_unauthorized(client.get("/v1/jobs", headers=headers))
            assert_unauthorized(client.get("/v1/me", headers=headers))
            assert_unauthorized(client.post("/v1/jobs", json=SPEC, headers=headers))
    # a restart over the same store: still on
    with TestClient(make_app(tmp_path, database_url)) as client:
        assert_unauthorized(client.get("/v1/jobs"))
        assert_unauthorized(client.get("/v1/jobs", headers=bearer(alice_secret)))
        _, carol = store.create_key("carol")
        me = client.get("/v1/me", headers=bearer(carol)).json()
        assert me["name"] == "carol" and me["auth_enabled"] is True
        assert client.get("/v1/jobs", headers=bearer(carol)).json()["items"] == []
    store.dispose()


def test_auth_turns_on_with_the_first_key_in_auto_mode(tmp_path, database_url):
    app = make_app(tmp_path, database_url)
    with TestClient(app) as client:
        me = client.get("/v1/me").json()
        assert me["key_id"] == "local" and me["auth_enabled"] is False  # no key ever: local use
        _, secret = app.state.store.create_key("alice")
        assert_unauthorized(client.get("/v1/jobs"))  # at once, not after a cache expires
        assert client.get("/v1/me", headers=bearer(secret)).json()["auth_enabled"] is True


def test_auth_on_needs_a_key_even_before_one_exists(tmp_path, database_url):
    with TestClient(make_app(tmp_path, database_url, auth="on")) as client:
        assert_unauthorized(client.get("/v1/jobs"))
        assert_unauthorized(client.post("/v1/jobs", json=SPEC))


def test_auth_off_is_explicit_and_only_on_loopback_outside_production(tmp_path, database_url):
    app = make_app(tmp_path, database_url, auth="off")
    app.state.store.create_key("alice")
    with TestClient(app) as client:  # the operator's explicit choice, on 127.0.0.1
        me = client.get("/v1/me").json()
        assert me == {"key_id": "local", "name": "local", "admin": True, "auth_enabled": False}
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(ValidationError, match="SLIMFORMER_AUTH=off"):
            Settings(data_dir=tmp_path, auth="off", host=host)
    production = dict(
        mode="production",
        api_key_pepper="p" * 32,
        token_encryption_key="t" * 32,
        database_url="postgresql://db/x",
        redis_url="redis://r",
    )
    with pytest.raises(ValidationError, match="SLIMFORMER_AUTH=off"):
        Settings(auth="off", **production)
    assert Settings(auth="auto", **production).auth == "auto"  # on: production forces it


def test_serve_startup_checks_follow_the_auth_setting(tmp_path):
    from service.commands import StartupError, check_auth

    stores: list[JobStore] = []

    def store_with(*names: str) -> JobStore:
        """A store where keys ``names`` were created, then revoked."""
        folder = tmp_path / f"store{len(stores)}"
        folder.mkdir()
        store = JobStore(f"sqlite:///{folder / 'db'}", pepper="p", token_secret="t")
        store.create_schema()
        for name in names:
            store.revoke_key(store.create_key(name)[0].id)
        stores.append(store)
        return store

    public = Settings(data_dir=tmp_path, host="0.0.0.0")
    with pytest.raises(StartupError, match="refusing to listen on 0.0.0.0"):
        check_auth(public, store_with())  # auto, no key ever: auth would be off
    # every key revoked: auth stays on, so a public address is allowed (and nobody gets in)
    assert "no active API key" in check_auth(public, store_with("alice", "bob"))
    assert "no active API key" in check_auth(public.model_copy(update={"auth": "on"}), store_with())
    assert "auth is off" in check_auth(Settings(data_dir=tmp_path, auth="off"), store_with("x"))
    assert check_auth(Settings(data_dir=tmp_path), store_with()).startswith("auth is off")
    for store in stores:
        store.dispose()


def test_serve_refuses_auth_off_on_a_public_address(tmp_path):
    env = {
        "SLIMFORMER_DATA_DIR": str(tmp_path / "d"),
        "PATH": "/usr/bin:/bin",
        "SLIMFORMER_AUTH": "off",
    }
    r = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2, r.stderr
    assert "SLIMFORMER_AUTH=off" in r.stderr and "loopback" in r.stderr


# -- 3. the concurrent-job limit is atomic -------------------------------------------------------
def test_forty_simultaneous_posts_create_exactly_the_limit(tmp_path, database_url):
    app = make_app(tmp_path, database_url, max_concurrent_jobs=3)
    _, secret = app.state.store.create_key("alice")
    barrier = threading.Barrier(40)
    responses = []

    def post(client: TestClient, seed: int) -> None:
        barrier.wait()
        responses.append(
            client.post("/v1/jobs", json=SPEC | {"seed": seed}, headers=bearer(secret))
        )

    with TestClient(app) as client:
        threads = [threading.Thread(target=post, args=(client, i)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {202: 3, 429: 37}, [r.text for r in responses if r.status_code != 429]
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {
            "too_many_jobs"
        }
        assert len(client.get("/v1/jobs", headers=bearer(secret)).json()["items"]) == 3


def test_the_store_limit_holds_across_threads_and_owners(tmp_path, database_url):
    url = database_url or f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url, pepper="p", token_secret="t", busy_timeout=30)
    store.create_schema()
    barrier = threading.Barrier(40)
    created: list[str] = []
    refused: list[str] = []

    def create(owner: str) -> None:
        barrier.wait()
        try:
            job, _ = store.create_job(owner, SPEC, queue="cpu", max_attempts=1, max_active=3)
            created.append(job["owner"])
        except Exception as err:  # noqa: BLE001 - the test counts what happened
            refused.append(getattr(err, "code", repr(err)))

    threads = [threading.Thread(target=create, args=(f"o{i % 2}",)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    store.dispose()
    assert Counter(created) == {"o0": 3, "o1": 3}
    assert refused == ["too_many_jobs"] * 34


# -- 6. a wiped Hub token is gone from the data dir ------------------------------------------------
def test_wiped_hub_tokens_cannot_be_recovered_from_the_sqlite_files(tmp_path):
    """SQLite only: on Postgres, dead row versions are the operator's to vacuum
    (docs/security.md)."""
    app = make_app(tmp_path, max_attempts=1)
    store: JobStore = app.state.store
    data_dir = Path(app.state.settings.data_dir)
    tokens = {
        name: f"hf_{name}_secret_token_{i:04d}"
        for i, name in enumerate(("cancelled", "succeeded", "reaped", "still_queued"))
    }
    with TestClient(app) as client:
        ids = {}
        for name, token in tokens.items():
            r = client.post("/v1/jobs", json=SPEC | {"hub_token": token})
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        assert client.post(f"/v1/jobs/{ids['cancelled']}/cancel").status_code == 202
        worker = JobStore(
            app.state.settings.resolved_database_url, pepper="p", token_secret=TOKEN_SECRET
        )  # a worker process's own store
        assert worker.claim(ids["succeeded"], "w1", stale_after=60)
        assert worker.finish(ids["succeeded"], "w1", "succeeded", stage="done", progress=1.0)
        assert worker.claim(ids["reaped"], "w1", stale_after=60)
        time.sleep(0.2)
        _, failed = store.reap(stale_after=0.1, requeue_queued_after=3600)
        assert [j["id"] for j in failed] == [ids["reaped"]]
        worker.dispose()
        for name in ("cancelled", "succeeded", "reaped"):
            assert client.get(f"/v1/jobs/{ids[name]}").json()["status"] in (
                "cancelled",
                "succeeded",
                "failed",
            )
        # the server is still running: read every file of the data dir as an attacker would
        cipher = TokenCipher(TOKEN_SECRET)
        raw = b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())
        assert (data_dir / "slimformer.db-wal").exists()
        recovered = recover_tokens(raw, cipher)
    assert tokens["still_queued"] in recovered  # the scan does find a live token
    for name in ("cancelled", "succeeded", "reaped"):
        assert tokens[name] not in recovered, f"the {name} job's token is still in the data dir"
        assert tokens[name].encode() not in raw


# -- 9. a locked store is 503 store_busy, quickly --------------------------------------------------
def _post_while_locked(app: FastAPI, lock: threading.Event) -> tuple[object, float]:
    """POST /v1/jobs from a thread (an unpatched server may never answer); the status and time."""
    result: dict = {}

    def post() -> None:
        started = time.monotonic()
        with TestClient(app, raise_server_exceptions=False) as client:
            result["response"] = client.post("/v1/jobs", json=SPEC)
        result["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    thread.join(timeout=15)
    lock.set()  # release the lock either way
    thread.join(timeout=60)
    assert "response" in result, "no answer within 15 s while the store was locked"
    return result["response"], result["seconds"]


def test_a_locked_store_answers_503_store_busy_within_seconds(tmp_path, database_url):
    app = make_app(tmp_path, database_url)
    release, locked = threading.Event(), threading.Event()

    def hold_lock() -> None:
        if database_url is None:
            db = sqlite3.connect(
                app.state.settings.data_dir / "slimformer.db", isolation_level=None
            )
            db.execute("BEGIN EXCLUSIVE")
        else:
            import psycopg

            db = psycopg.connect(database_url.replace("+psycopg", ""))
            db.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        locked.set()
        release.wait(120)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    assert locked.wait(30)
    response, seconds = _post_while_locked(app, release)
    holder.join(timeout=30)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_busy"
    assert 1 <= int(response.headers["retry-after"]) <= 10
    assert seconds < 6, f"answered after {seconds:.1f} s"
    with TestClient(app) as client:  # and the lock gone, it works again
        assert client.post("/v1/jobs", json=SPEC).status_code == 202


def test_the_store_busy_timeout_is_a_parameter(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'db'}", pepper="p", token_secret="t", busy_timeout=1.5)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1500
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
    store.dispose()
    assert Settings(data_dir=tmp_path).store_busy_timeout_seconds <= 5


# -- 12. bodies that are not JSON are malformed_json ----------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"model": {"id": "acme/\xff\xfe"}}',
        b"\xc3\x28",
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,
    ],
    ids=["bad-utf8-in-string", "bad-utf8", "deep-array", "deep-object"],
)
def test_bodies_that_are_not_json_are_malformed_json(tmp_path, body):
    with TestClient(make_app(tmp_path)) as client:
        r = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "malformed_json" and "JSON" in error["message"]
