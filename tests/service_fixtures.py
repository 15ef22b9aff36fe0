"""pytest fixtures of real service processes (:mod:`testkit.services`): the Hub test server holding
a tiny model, ``slimformer serve``, and the production shape (API, Redis, Postgres).

Import the fixtures in a test module with ``from service_fixtures import *  # noqa: F403``.
"""

from __future__ import annotations

import pytest

from testkit.hub_server import HubServer
from testkit.services import (
    Service,
    base_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    postgres_available,
    redis_available,
    redis_database,
)


@pytest.fixture
def hub_with_model(tiny_classifier_folder):
    """The Hub test server holding ``acme/tiny`` (a tiny BERT classifier) and a user with a write
    token."""
    server = HubServer().start()
    server.add_repo("acme/tiny", tiny_classifier_folder)
    server.add_user("alice", "hf_alice_secret_token_123456", orgs=("acme",))
    yield server
    server.stop()


@pytest.fixture
def embedded_service(tmp_path, hub_with_model):
    """``slimformer serve`` (API + supervised embedded worker; SQLite, filesystem broker)."""
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = base_env(data_dir, hub_with_model, port)
    env["SLIMFORMER_WORKER_METRICS_PORT"] = str(free_port())
    service = Service(data_dir, env, port)
    service.hub = hub_with_model
    service.start_api(worker=True)
    yield service
    service.kill()


@pytest.fixture
def production_service(tmp_path, hub_with_model):
    """The production shape on this machine: API without worker, Redis broker, a fresh Postgres
    database. Workers are started by the test (``service.start_worker()``)."""
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    if not postgres_available():
        pytest.skip("Postgres is not running on 127.0.0.1:5432 (.ci/run starts it)")
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = fresh_postgres_database()
    with redis_database() as redis_db:
        env = base_env(data_dir, hub_with_model, port)
        env.update(
            {
                "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
                "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
                "SLIMFORMER_MAX_CONCURRENT_JOBS": "1000",
            }
        )
        service = Service(data_dir, env, port)
        service.hub = hub_with_model
        migrated = service.command("migrate")
        assert migrated.returncode == 0, migrated.stderr
        service.start_api(worker=False)
        yield service
        service.kill()
    drop_postgres_database(database)


__all__ = ["embedded_service", "production_service", "hub_with_model"]
