"""Uploaded data sets: their records (the files are the caller's). (Not ``uploads.py``:
``service.store.uploads`` is the table.)"""

from __future__ import annotations

from sqlalchemy import select

from service.store.base import StoreBase, now
from service.store.schema import uploads


class UploadsMixin(StoreBase):
    def add_upload(
        self,
        owner: str,
        *,
        upload_id: str,
        filename: str,
        size: int,
        rows: int,
        columns: list[str],
        path: str,
    ) -> dict:
        values = dict(
            id=upload_id,
            owner=owner,
            filename=filename,
            size=size,
            rows=rows,
            columns=columns,
            path=path,
            created_at=now(),
        )
        with self.engine.begin() as conn:
            conn.execute(uploads.insert().values(**values))
        return values

    def list_uploads(
        self, *, owner: str | None, limit: int = 20, before: tuple[float, str] | None = None
    ) -> list[dict]:
        """Newest first, like :meth:`list_jobs`; ``owner`` None: everybody's (an admin)."""
        query = select(uploads)
        if owner is not None:
            query = query.where(uploads.c.owner == owner)
        return self._newest_first(query, uploads, limit=limit, before=before)

    def get_upload(self, upload_id: str, *, owner: str | None = None) -> dict:
        return self._owned_row(uploads, upload_id, owner, via=self.engine)

    def delete_upload(self, upload_id: str, *, owner: str | None) -> dict:
        """Remove an upload's record and return it (its file is the caller's to delete).

        Raises:
            NotFound: no such upload, or it belongs to another owner.
        """
        upload = self.get_upload(upload_id, owner=owner)
        with self.engine.begin() as conn:
            conn.execute(uploads.delete().where(uploads.c.id == upload_id))
        return upload
