"""What every part of the job store shares: the clock, the status names, the errors, and
:class:`StoreBase`, the engine (and its autocommit reader), the key pepper and the token cipher."""

from __future__ import annotations

import time

from sqlalchemy import Engine, Select, Table, select

from service.store.crypto import TokenCipher
from service.store.engine import forget_wiped_tokens, make_engine

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")

LOCAL_OWNER = "local"  # owner of everything while auth is off (embedded mode without keys)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now() -> float:
    return time.time()


class StoreBase:
    """One SQLAlchemy engine and what the parts of :class:`~service.store.JobStore` use with it.
    Methods return plain dicts (rows)."""

    def __init__(
        self, url: str, *, pepper: str, token_secret: str, busy_timeout: float = 30.0
    ) -> None:
        self.url = url
        self.engine = make_engine(url, busy_timeout=busy_timeout)
        # single-statement reads: no BEGIN/ROLLBACK round trips around them
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pepper = pepper.encode()
        self.cipher = TokenCipher(token_secret)

    def create_schema(self) -> None:
        """Bring the schema to the newest Alembic revision (also creates it on an empty
        database)."""
        from service.migrations import upgrade

        upgrade(self.url)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def dispose(self) -> None:
        self.engine.dispose()

    def _owned_row(self, table: Table, row_id: str, owner: str | None, *, via: Engine) -> dict:
        """The row ``row_id`` of ``table``, read through ``via``.

        Raises:
            NotFound: no such row, or ``owner`` is given and it is another's.
        """
        query = select(table).where(table.c.id == row_id)
        if owner is not None:
            query = query.where(table.c.owner == owner)
        with via.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(row_id)
        return dict(row)

    def _newest_first(
        self, query: Select, table: Table, *, limit: int, before: tuple[float, str] | None
    ) -> list[dict]:
        """One page of ``query``'s rows of ``table``, newest first; ``before`` is the
        ``(created_at, id)`` of the last row of the previous page."""
        if before is not None:
            created, row_id = before
            query = query.where(
                (table.c.created_at < created)
                | ((table.c.created_at == created) & (table.c.id < row_id))
            )
        query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings().all()]

    def _forget_wiped_tokens(self) -> None:
        """See :func:`~service.store.engine.forget_wiped_tokens`."""
        forget_wiped_tokens(self.engine)
