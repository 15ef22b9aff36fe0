"""The store's SQLAlchemy engine and its tuning: SQLite pragmas, the Postgres lock timeout, the
pool, pinging idle connections, and truncating SQLite's WAL after a Hub token was wiped."""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, OperationalError

logger = logging.getLogger(__name__)

POOL_SIZE = 20  # connections per process, at most; see make_engine


PING_AFTER_IDLE_SECONDS = 10.0


def ping_idle_connections(engine: Engine) -> None:
    """Ping a pooled connection that sat idle for ``PING_AFTER_IDLE_SECONDS`` before handing it
    out; a dead one (the database restarted) is replaced, as ``pool_pre_ping`` would, but a busy
    pool pays nothing."""

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection, record) -> None:  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection, record, _proxy) -> None:  # noqa: ANN001
        idle = time.monotonic() - record.info.get("idle_since", time.monotonic())
        if idle < PING_AFTER_IDLE_SECONDS:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_connection.rollback()
        except Exception as err:  # the pool retries with a fresh connection
            raise DisconnectionError(str(err)) from err


def make_engine(url: str, *, busy_timeout: float = 30.0) -> Engine:
    """The store's engine. ``busy_timeout``: seconds a statement waits for a lock another
    connection holds (SQLite's busy timeout, Postgres's ``lock_timeout``) before it fails with an
    ``OperationalError``. The API passes a few seconds (then answers 503 ``store_busy``); workers
    keep the default."""
    millis = max(1, int(busy_timeout * 1000))
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            # WAL lets the API read while a worker writes; one writer waits instead of failing
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={millis}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # deleted bytes (a wiped Hub token) are zeroed, not left in a page's free space
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    # A fixed pool: overflow connections are closed on check-in, and under load that meant a new
    # Postgres connection (a forked backend) per request. LIFO keeps the few busy connections warm
    # (and their prepared statements). Only a connection idle for a while is pinged before use
    # (pool_pre_ping would add a round trip to every query).
    engine = create_engine(
        url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=30, pool_use_lifo=True
    )
    ping_idle_connections(engine)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "connect")
        def _postgres_lock_timeout(dbapi_connection, _record):  # noqa: ANN001
            autocommit = dbapi_connection.autocommit
            dbapi_connection.autocommit = True
            cursor = dbapi_connection.cursor()
            cursor.execute(f"SET lock_timeout = {millis}")
            cursor.close()
            dbapi_connection.autocommit = autocommit

    return engine


def forget_wiped_tokens(engine: Engine) -> None:
    """After a Hub token was wiped, make its old copies unreadable from the data dir.

    SQLite keeps old row versions in the ``-wal`` file until a checkpoint, and freed bytes in
    pages (zeroed here: ``secure_delete``). A TRUNCATE checkpoint copies the current pages
    into the database file and empties the WAL. Postgres keeps dead row versions until
    VACUUM; that is the operator's (docs/security.md). A checkpoint that cannot finish now
    (readers busy) is logged, not raised: the wipe itself is committed.
    """
    if engine.dialect.name != "sqlite":
        return
    for attempt in range(5):
        try:
            with engine.connect() as conn:
                busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()[0]
        except OperationalError:
            busy = 1
        if not busy:
            return
        time.sleep(0.05 * (attempt + 1))
    logger.warning(
        "could not truncate the SQLite WAL after wiping a Hub token; its old "
        "copy stays in %s-wal until the next checkpoint",
        engine.url.database,
    )
