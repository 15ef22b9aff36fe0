"""API keys: create, check (with the revocation generation), list and revoke."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update

from service.store.base import StoreBase, now
from service.store.schema import REVOCATIONS_ROW, api_keys, key_revocations


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    admin: bool
    created_at: float


class KeysMixin(StoreBase):
    def _hash_key(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def create_key(self, name: str, *, admin: bool = False) -> tuple[ApiKey, str]:
        """Returns the key row and the secret, which is shown once and stored only as a hash."""
        key_id = secrets.token_hex(6)
        secret = f"sf_{key_id}_{secrets.token_urlsafe(32)}"
        created = now()
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    key_hash=self._hash_key(secret),
                    admin=admin,
                    created_at=created,
                )
            )
        return ApiKey(key_id, name, admin, created), secret

    def authenticate(self, secret: str) -> ApiKey | None:
        return self.check_key(secret)[0]

    def check_key(self, secret: str) -> tuple[ApiKey | None, int | None]:
        """The key of ``secret`` (None: malformed, unknown, revoked or wrong), and the revocation
        generation read in the same statement (None when the key id is unknown): a key found
        valid stays valid while the generation has not moved. One primary-key read; a malformed
        secret costs no query."""
        parts = secret.split("_")
        if len(parts) < 3 or parts[0] != "sf" or not parts[1]:
            return None, None
        generation = (
            select(key_revocations.c.generation)
            .where(key_revocations.c.id == REVOCATIONS_ROW)
            .scalar_subquery()
            .label("revocation_generation")
        )
        query = select(api_keys, generation).where(api_keys.c.id == parts[1])
        with self.reader.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None, None
        seen = row["revocation_generation"] or 0
        if row["revoked_at"] is not None:
            return None, seen
        if not hmac.compare_digest(row["key_hash"], self._hash_key(secret)):
            return None, seen
        return ApiKey(row["id"], row["name"], row["admin"], row["created_at"]), seen

    def revocation_generation(self) -> int:
        """How many keys were ever revoked (one single-row primary-key read)."""
        query = select(key_revocations.c.generation).where(key_revocations.c.id == REVOCATIONS_ROW)
        with self.reader.connect() as conn:
            return conn.execute(query).scalar() or 0

    def list_keys(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(
                        api_keys.c.id,
                        api_keys.c.name,
                        api_keys.c.admin,
                        api_keys.c.created_at,
                        api_keys.c.revoked_at,
                    ).order_by(api_keys.c.created_at)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        """Revoke an active key and, in the same transaction, bump the revocation generation, so
        every API process refuses the key on its next request. False if no such active key."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
            if done.rowcount != 1:
                return False
            bumped = conn.execute(
                update(key_revocations)
                .where(key_revocations.c.id == REVOCATIONS_ROW)
                .values(generation=key_revocations.c.generation + 1)
            )
            if bumped.rowcount != 1:  # the migration inserts the row; this is a safety net
                conn.execute(key_revocations.insert().values(id=REVOCATIONS_ROW, generation=1))
        return True

    def active_key_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_(None))
            ).scalar_one()

    def any_key_created(self) -> bool:
        """Whether a key was ever created (revoked ones count: revoking never turns auth off)."""
        with self.engine.connect() as conn:
            return conn.execute(select(api_keys.c.id).limit(1)).first() is not None
