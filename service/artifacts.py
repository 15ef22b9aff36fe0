"""The artifact store: finished model folders and uploaded datasets, by key (``jobs/<id>/...``,
``uploads/<id>/...``).

Two backends with one interface (``service/artifacts_base.py``): a local folder (embedded mode, or
a shared volume) and S3-compatible object storage (``service/artifacts_s3.py``). A job's folder is
published all at once: readers see either nothing or every file.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from service.artifacts_base import (
    CHUNK,
    ArtifactNotFound,
    ArtifactStore,
    BadArtifactPath,
    TarballMixin,
    clean_key,
)
from service.artifacts_s3 import S3ArtifactStore
from service.settings import Settings

__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "BadArtifactPath",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "check_writable",
    "clean_key",
    "make_artifact_store",
]

VERSION_NAME = re.compile(r"\..+\.(v|link)-[0-9a-f]+")  # matched whole (fullmatch)
PATH_MAX = 4096  # Linux's limit on a whole path


class LocalArtifactStore(TarballMixin):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / clean_key(key)).resolve()
        if self.root not in path.parents:
            raise BadArtifactPath(f"invalid artifact path {key!r}")
        if len(os.fsencode(path)) >= PATH_MAX:  # the file system would answer ENAMETOOLONG
            raise BadArtifactPath("invalid artifact path: the name is too long")
        return path

    def publish_folder(self, prefix: str, folder: Path) -> list[dict]:
        """Copy into a new version folder, then swap the ``prefix`` symlink to it in one rename: a
        reader that resolved the link keeps reading one complete version; the version before is
        removed at the next publish."""
        link = self.root / clean_key(prefix)
        link.parent.mkdir(parents=True, exist_ok=True)
        version = link.parent / f".{link.name}.v-{uuid.uuid4().hex[:12]}"
        shutil.copytree(folder, version)
        previous = os.readlink(link) if link.is_symlink() else None
        if link.exists() and not link.is_symlink():  # a plain folder from an older layout
            shutil.rmtree(link)
        staging_link = link.parent / f".{link.name}.link-{uuid.uuid4().hex[:8]}"
        os.symlink(version.name, staging_link)
        # atomic: readers see the old version or the new, never neither
        os.replace(staging_link, link)
        for old in link.parent.glob(f".{link.name}.v-*"):
            if old.name not in (version.name, previous):
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
        # a published folder's listing comes from one version: the link is resolved once per walk,
        # and a walk whose version a later publish removed meanwhile is done again
        for _ in range(10):
            base = self._path(prefix)
            if not base.is_dir():
                if (self.root / clean_key(prefix)).is_dir():
                    continue  # the version resolved a moment ago was replaced: resolve again
                return []
            files, complete = self._walk(base)
            if complete and base.is_dir():
                return files
        return []

    @staticmethod
    def _walk(base: Path) -> tuple[list[dict], bool]:
        """The files below ``base`` and whether none vanished while they were listed."""
        files, complete = [], True

        def vanished(_err: OSError) -> None:
            nonlocal complete
            complete = False

        for folder, dirs, names in os.walk(base, followlinks=True, onerror=vanished):
            # version folders and link staging are internal; published folders show through
            # their links
            dirs[:] = sorted(d for d in dirs if not VERSION_NAME.fullmatch(d))
            for name in names:
                path = Path(folder) / name
                if VERSION_NAME.fullmatch(name):
                    continue
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # removed by a later publish while we walked it
                    complete = False
                    continue
                files.append({"path": path.relative_to(base).as_posix(), "size": size})
        return sorted(files, key=lambda f: f["path"]), complete

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
        link = self.root / clean_key(prefix)
        for version in link.parent.glob(f".{link.name}.v-*"):
            shutil.rmtree(version, ignore_errors=True)
        if link.is_symlink():
            link.unlink()
        else:
            shutil.rmtree(link, ignore_errors=True)

    def ping(self) -> None:
        """Raise unless a file can be created and removed in the artifact folder."""
        check_writable(self.root)


def check_writable(folder: Path) -> None:
    """Create and remove a small file in ``folder``; the OSError if either fails (a full,
    read-only or foreign-owned disk). ``os.access`` would not do: it says yes to root and knows
    nothing of a full disk."""
    probe = Path(folder) / f".slimformer-probe-{uuid.uuid4().hex[:12]}"
    try:
        with probe.open("wb") as fh:
            fh.write(b"ok")
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        probe.unlink(missing_ok=True)


def make_artifact_store(settings: Settings) -> ArtifactStore:
    if settings.artifact_backend == "s3":
        return S3ArtifactStore(
            settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url
        )
    return LocalArtifactStore(settings.resolved_artifact_dir)
