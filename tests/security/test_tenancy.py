"""Tenants cannot hurt or hide from each other through auth, and can see what they own.

- Revoking a key takes effect on the next request in every API process, however long the
  processes cache checked keys (a revocation generation in the job store, bumped in the
  revocation's transaction).
- The failed-login throttle of a client address never refuses a valid key: tenants behind one NAT
  cannot lock each other out with bad keys, while bad keys from that address still get 429.
- ``GET /v1/datasets`` lists the caller's uploads (all for an admin), paged like ``GET /v1/jobs``;
  ``GET /v1/datasets/{id}`` answers another key's upload exactly like a missing one.

Store-dependent tests run on SQLite and on Postgres (skipped where Postgres is not running); the
throttle test on both limit backends (skipped where Redis is not running).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.app import create_app
from service.settings import Settings
from service.store import JobStore
from testkit.services import (
    drop_postgres_database,
    fresh_postgres_database,
    postgres_available,
    redis_available,
    redis_database,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN_SECRET = "a-token-encryption-secret-for-tests"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> Iterator[str | None]:
    """None (the default SQLite file under the data dir) or a fresh Postgres database."""
    if request.param == "sqlite":
        yield None
        return
    if not postgres_available():
        pytest.skip("Postgres is not running on 127.0.0.1:5432 (.ci/run starts it)")
    name = fresh_postgres_database()
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    drop_postgres_database(name)


@pytest.fixture
def redis_db() -> Iterator[int]:
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    with redis_database() as number:
        yield number


@pytest.fixture(params=["memory", "redis"])
def limits_backend(request) -> dict:
    if request.param == "memory":
        return {}
    return {"redis_url": f"redis://127.0.0.1:6379/{request.getfixturevalue('redis_db')}"}


def make_app(tmp_path: Path, database_url: str | None = None, **overrides) -> FastAPI:
    """One API process over the job store in ``tmp_path`` (two calls: two processes, one store)."""
    settings = dict(
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


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key_lookups(app: FastAPI) -> list[str]:
    """Every statement of this app's store that looks an API key up by its id, from now on."""
    seen: list[str] = []

    @event.listens_for(app.state.store.engine, "before_cursor_execute")
    def _spy(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if "FROM api_keys" in statement and "api_keys.id =" in statement:
            seen.append(statement)

    return seen


# -- 8. revocation is immediate in every process ---------------------------------------------------
def test_a_revoked_key_is_refused_at_once_by_a_process_that_cached_it(tmp_path, database_url):
    # a cache far longer than the test: only the revocation generation can end the trust
    a = make_app(tmp_path, database_url, auth_cache_seconds=3600)
    b = make_app(tmp_path, database_url, auth_cache_seconds=3600)
    alice, alice_secret = a.state.store.create_key("alice")
    _, bob_secret = a.state.store.create_key("bob")
    lookups = key_lookups(b)
    with TestClient(a) as client_a, TestClient(b) as client_b:
        for _ in range(5):
            assert client_b.get("/v1/me", headers=bearer(alice_secret)).status_code == 200
            assert client_b.get("/v1/me", headers=bearer(bob_secret)).status_code == 200
        assert len(lookups) == 2  # each key checked once, then trusted from the cache
        assert client_a.get("/v1/me", headers=bearer(alice_secret)).status_code == 200
        assert a.state.store.revoke_key(alice.id)  # what `slimformer keys revoke` does
        r = client_b.get("/v1/me", headers=bearer(alice_secret))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert client_a.get("/v1/me", headers=bearer(alice_secret)).status_code == 401
        assert client_b.get("/v1/jobs", headers=bearer(alice_secret)).status_code == 401
        # the other key keeps working (checked once more after the revocation, then cached)
        before = len(lookups)
        for _ in range(3):
            assert client_b.get("/v1/me", headers=bearer(bob_secret)).status_code == 200
        assert len(lookups) == before + 1
        # revoking an unknown or already revoked key changes nothing
        assert not a.state.store.revoke_key(alice.id)
        assert not a.state.store.revoke_key("0123456789ab")
        assert client_b.get("/v1/me", headers=bearer(bob_secret)).status_code == 200
        assert len(lookups) == before + 1


def test_keys_revoke_on_the_command_line_reaches_a_running_process(tmp_path, database_url):
    app = make_app(tmp_path, database_url, auth_cache_seconds=3600)
    alice, secret = app.state.store.create_key("alice")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIMFORMER_", "REDIS_URL", "DATABASE_URL"))
    }
    env["SLIMFORMER_DATA_DIR"] = str(tmp_path / "data")
    env["SLIMFORMER_TOKEN_ENCRYPTION_KEY"] = TOKEN_SECRET
    if database_url:
        env["DATABASE_URL"] = database_url
    with TestClient(app) as client:
        assert client.get("/v1/me", headers=bearer(secret)).status_code == 200
        done = subprocess.run(
            [sys.executable, "-m", "slimformer.cli", "keys", "revoke", alice.id],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert client.get("/v1/me", headers=bearer(secret)).status_code == 401


def test_the_revocation_generation_moves_only_with_a_revocation(tmp_path, database_url):
    url = database_url or f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url, pepper="p", token_secret="t")
    store.create_schema()
    start = store.revocation_generation()
    key, secret = store.create_key("alice")
    assert store.revocation_generation() == start
    assert store.check_key(secret)[0].id == key.id
    assert store.check_key(secret)[1] == start
    assert store.revoke_key(key.id)
    assert store.revocation_generation() == start + 1
    assert store.check_key(secret) == (None, start + 1)
    assert not store.revoke_key(key.id)
    assert store.revocation_generation() == start + 1
    store.dispose()


# -- 9. bad keys from an address do not lock out the valid keys behind it -------------------------
def test_bad_keys_from_an_address_do_not_lock_out_a_valid_key_from_it(tmp_path, limits_backend):
    # no cache: every request of the valid key is checked while the address is over its budget
    app = make_app(tmp_path, auth_failures_per_minute=5, auth_cache_seconds=0, **limits_backend)
    alice, alice_secret = app.state.store.create_key("alice")
    _, bob_secret = app.state.store.create_key("bob")
    lookups = key_lookups(app)
    nat = TestClient(app, client=("203.0.113.5", 4000))  # one address, several tenants
    codes = [
        nat.get("/v1/me", headers=bearer(f"sf_{uuid.uuid4().hex[:12]}_guess")).status_code
        for _ in range(12)
    ]
    assert codes == [401] * 5 + [429] * 7
    # the valid keys behind that address still work, every time
    for secret, name in ((alice_secret, "alice"), (bob_secret, "bob")) * 2:
        r = nat.get("/v1/me", headers=bearer(secret))
        assert r.status_code == 200 and r.json()["name"] == name
    assert nat.get("/v1/jobs", headers=bearer(alice_secret)).status_code == 200
    # while a bad key from there is refused with 429, whatever its shape: no oracle
    for bad in (f"sf_{uuid.uuid4().hex[:12]}_guess", f"sf_{alice.id}_wrong", "not-a-key"):
        r = nat.get("/v1/me", headers=bearer(bad))
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "too_many_auth_failures"
        assert 1 <= int(r.headers["retry-after"]) <= 60
    # and the valid key still works after that
    assert nat.get("/v1/me", headers=bearer(alice_secret)).status_code == 200
    # an over-budget address costs at most one key lookup per attempt
    before = len(lookups)
    for _ in range(5):
        nat.get("/v1/me", headers=bearer(f"sf_{uuid.uuid4().hex[:12]}_guess"))
    assert len(lookups) - before <= 5


def test_the_key_id_throttle_still_holds_for_an_over_budget_address(tmp_path, limits_backend):
    app = make_app(tmp_path, auth_failures_per_minute=3, auth_cache_seconds=0, **limits_backend)
    alice, alice_secret = app.state.store.create_key("alice")
    lookups = key_lookups(app)
    nat = TestClient(app, client=("203.0.113.6", 4000))
    codes = [
        nat.get("/v1/me", headers=bearer(f"sf_{alice.id}_guess{i}")).status_code for i in range(8)
    ]
    assert codes == [401] * 3 + [429] * 5
    assert len(lookups) == 3  # a key id over its budget is refused before any query
    # guessing one key id is still throttled from every address
    other = TestClient(app, client=("198.51.100.20", 4000))
    assert other.get("/v1/me", headers=bearer(f"sf_{alice.id}_guess")).status_code == 429


# -- 10. a tenant lists and inspects its own uploads -----------------------------------------------
def upload(client: TestClient, secret: str, name: str, rows: int = 3) -> dict:
    body = "text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(rows))
    r = client.post(
        "/v1/datasets", files={"file": (name, body.encode(), "text/csv")}, headers=bearer(secret)
    )
    assert r.status_code == 201, r.text
    return r.json()


def list_all(client: TestClient, secret: str, limit: int) -> tuple[list[dict], int]:
    """Every page of ``GET /v1/datasets``: the items, and how many pages it took."""
    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/datasets", params=params, headers=bearer(secret))
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages


def test_a_tenant_lists_and_gets_only_its_own_uploads(tmp_path, database_url):
    app = make_app(tmp_path, database_url, auth_cache_seconds=0)
    store: JobStore = app.state.store
    _, alice = store.create_key("alice")
    _, bob = store.create_key("bob")
    _, root = store.create_key("root", admin=True)
    with TestClient(app) as client:
        assert client.get("/v1/datasets").status_code == 401
        mine = [upload(client, alice, f"a{i}.csv", rows=i + 1) for i in range(5)]
        theirs = upload(client, bob, "b.csv")
        # alice: hers only, newest first, over three pages
        items, pages = list_all(client, alice, limit=2)
        assert pages == 3
        assert [d["id"] for d in items] == [u["upload_id"] for u in reversed(mine)]
        first = items[-1]
        assert first["filename"] == "a0.csv" and first["format"] == "csv"
        assert first["rows"] == 1 and first["columns"] == ["text", "label"]
        assert first["bytes"] == mine[0]["size"] and first["created_at"] == mine[0]["created_at"]
        assert set(first) >= {"id", "filename", "format", "bytes", "rows", "created_at"}
        assert "path" not in first and "owner" not in first
        listing = client.get("/v1/datasets", headers=bearer(alice))
        assert str(tmp_path) not in listing.text and "uploads/" not in listing.text
        # one upload: the same view as in the list
        r = client.get(f"/v1/datasets/{first['id']}", headers=bearer(alice))
        assert r.status_code == 200 and r.json() == first
        # bob: his only; alice's upload does not exist for him, exactly like a random id
        assert [d["id"] for d in list_all(client, bob, limit=10)[0]] == [theirs["upload_id"]]
        hidden = client.get(f"/v1/datasets/{first['id']}", headers=bearer(bob))
        missing_id = str(uuid.uuid4())
        missing = client.get(f"/v1/datasets/{missing_id}", headers=bearer(bob))
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == json.loads(missing.text.replace(missing_id, first["id"]))
        assert hidden.json()["error"]["code"] == "upload_not_found"
        assert set(hidden.headers) - {"content-length"} == set(missing.headers) - {"content-length"}
        # an admin sees everybody's
        everything, _ = list_all(client, root, limit=4)
        assert {d["id"] for d in everything} == {u["upload_id"] for u in [*mine, theirs]}
        got = client.get(f"/v1/datasets/{theirs['upload_id']}", headers=bearer(root))
        assert got.status_code == 200 and got.json()["filename"] == "b.csv"
        # a deleted upload leaves the list
        deleted = client.delete(f"/v1/datasets/{first['id']}", headers=bearer(alice))
        assert deleted.status_code == 204
        assert client.get(f"/v1/datasets/{first['id']}", headers=bearer(alice)).status_code == 404
        assert len(list_all(client, alice, limit=100)[0]) == 4


def test_dataset_paging_is_stable_and_refuses_a_forged_cursor(tmp_path):
    app = make_app(tmp_path, auth_cache_seconds=0)
    _, alice = app.state.store.create_key("alice")
    with TestClient(app) as client:
        ids = {upload(client, alice, f"d{i}.csv")["upload_id"] for i in range(7)}
        for limit in (1, 3, 7, 100):
            items, pages = list_all(client, alice, limit)
            assert [d["id"] for d in items if d["id"] in ids] == [d["id"] for d in items]
            assert len(items) == len({d["id"] for d in items}) == 7
            assert pages == -(-7 // limit)  # no empty last page
        for cursor in ("not-base64!", base64.urlsafe_b64encode(b"[1]").decode()):
            r = client.get("/v1/datasets", params={"cursor": cursor}, headers=bearer(alice))
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_cursor"
        assert (
            client.get("/v1/datasets", params={"limit": 0}, headers=bearer(alice)).status_code
            == 422
        )


def test_an_upload_shows_when_retention_will_delete_it(tmp_path):
    app = make_app(tmp_path, auth_cache_seconds=0, upload_retention_days=2)
    _, alice = app.state.store.create_key("alice")
    with TestClient(app) as client:
        created = upload(client, alice, "kept.csv")
        view = client.get(f"/v1/datasets/{created['upload_id']}", headers=bearer(alice)).json()
        assert view["expires_at"] is not None and view["expires_at"] > view["created_at"]
    app = make_app(tmp_path / "forever", auth_cache_seconds=0)
    _, alice = app.state.store.create_key("alice")
    with TestClient(app) as client:
        created = upload(client, alice, "kept.csv")
        view = client.get(f"/v1/datasets/{created['upload_id']}", headers=bearer(alice)).json()
        assert view["expires_at"] is None
