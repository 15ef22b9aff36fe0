"""Alembic environment: online migrations only, on the URL given by the caller, `-x url=` or
DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from service.store.schema import metadata

config = context.config
url = (
    config.attributes.get("url")
    or context.get_x_argument(as_dictionary=True).get("url")
    or os.environ.get("DATABASE_URL")
)
if not url:
    raise SystemExit("no database URL: pass -x url=... or set DATABASE_URL")
if url.startswith(("postgres://", "postgresql://")):
    url = "postgresql+psycopg://" + url.split("://", 1)[1]

engine = create_engine(url)
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=url.startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
