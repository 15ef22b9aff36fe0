"""Alembic migrations of the job store. ``upgrade(url)`` brings any database to the newest revision.

From a shell: ``slimformer migrate`` (uses DATABASE_URL), or
``alembic -c service/migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head``.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def config(url: str):
    from alembic.config import Config

    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(config(url), revision)


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
