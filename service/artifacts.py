"""The artifact store: finished model folders and uploaded datasets, by key (``jobs/<id>/...``, ``uploads/<id>/...``).

Two backends with one interface: a local folder (embedded mode, or a shared volume) and S3-compatible object
storage (``service/artifacts_s3.py``). A job's folder is published all at once: readers see either nothing or
every file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

CHUNK = 1 << 20


class ArtifactNotFound(LookupError):
    pass


class BadArtifactPath(ValueError):
    pass


def clean_key(key: str) -> str:
    """A relative POSIX key with no ``..``, no absolute part and no empty segment, or BadArtifactPath."""
    if not key or "\\" in key or "\x00" in key:
        raise BadArtifactPath(f"invalid artifact path {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", ".", "") for part in key.split("/")):
        raise BadArtifactPath(f"invalid artifact path {key!r}: it must stay inside the job's folder")
    return str(path)


class ArtifactStore(Protocol):
    def publish_folder(self, prefix: str, folder: Path) -> list[dict]:
        """Copy every file of ``folder`` under ``prefix``, replacing what was there, all at once."""

    def put_file(self, key: str, source: Path) -> None: ...

    def fetch_file(self, key: str, destination: Path) -> Path: ...

    def list(self, prefix: str) -> list[dict]:
        """Files under ``prefix`` as ``{"path": relative path, "size": bytes}``, sorted by path."""

    def size(self, key: str) -> int: ...

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive; None = to the end) in chunks."""

    def delete_prefix(self, prefix: str) -> None: ...

    def ping(self) -> None: ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / clean_key(key)).resolve()
        if self.root not in path.parents:
            raise BadArtifactPath(f"invalid artifact path {key!r}")
        return path

    def publish_folder(self, prefix: str, folder: Path) -> list[dict]:
        target = self._path(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
        shutil.copytree(folder, staging)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(staging, target)  # atomic on one filesystem: readers never see a half-copied folder
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.list(prefix)

    def put_file(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        shutil.copyfile(source, partial)
        os.replace(partial, target)

    def fetch_file(self, key: str, destination: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise ArtifactNotFound(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        return destination

    def list(self, prefix: str) -> list[dict]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return [{"path": p.relative_to(base).as_posix(), "size": p.stat().st_size}
                for p in sorted(base.rglob("*")) if p.is_file()]

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)
        return path.stat().st_size

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise ArtifactNotFound(key)
        remaining = (end if end is not None else path.stat().st_size - 1) - start + 1
        with path.open("rb") as fh:
            fh.seek(start)
            while remaining > 0:
                chunk = fh.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"artifact folder {self.root} is not writable")


def make_artifact_store(settings) -> ArtifactStore:
    if settings.artifact_backend == "s3":
        from service.artifacts_s3 import S3ArtifactStore

        return S3ArtifactStore(settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url)
    return LocalArtifactStore(settings.resolved_artifact_dir)
