"""What every artifact backend shares: the errors, key checking, the store protocol and the
streamed ``.tar.gz`` of a folder (built on the backend's own ``iter_bytes``)."""

from __future__ import annotations

import io
import logging
import queue
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
TAR_QUEUE = 16  # chunks of tarball held in memory at most while the client reads slowly


class ArtifactNotFound(LookupError):
    pass


class BadArtifactPath(ValueError):
    pass


def clean_key(key: str) -> str:
    """A relative POSIX key with no ``..``, no absolute part and no empty segment, or
    BadArtifactPath."""
    if not key or "\\" in key or "\x00" in key:
        raise BadArtifactPath(f"invalid artifact path {key!r}")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", ".", "") for part in key.split("/")):
        raise BadArtifactPath(
            f"invalid artifact path {key!r}: it must stay inside the job's folder")
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

    def iter_tar_gz(self, prefix: str, files: list[dict], *, root: str) -> Iterator[bytes]:
        """``files`` (from ``list(prefix)``) as a streamed .tar.gz, each under ``root/``."""

    def delete_prefix(self, prefix: str) -> None: ...

    def ping(self) -> None: ...


class _QueueWriter(io.RawIOBase):
    """A write-only file whose bytes go to a bounded queue: the tarball streams instead of
    sitting in memory."""

    def __init__(self, q: queue.Queue) -> None:
        self.q = q

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        if data:
            self.q.put(bytes(data))
        return len(data)


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.it = chunks
        self.buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001
        while not self.buf:
            chunk = next(self.it, None)
            if chunk is None:
                return 0
            self.buf = chunk
        n = min(len(b), len(self.buf))
        b[:n], self.buf = self.buf[:n], self.buf[n:]
        return n


class TarballMixin:
    """``iter_tar_gz`` for any store with ``iter_bytes``."""

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        raise NotImplementedError

    def iter_tar_gz(self, prefix: str, files: list[dict], *, root: str) -> Iterator[bytes]:
        """``files`` under ``prefix`` as a .tar.gz whose members are ``root/<path>``.

        A thread starts writing the tarball at once into a bounded queue; the returned iterator
        reads it. A failure part-way is logged and ends the stream (the client sees a short
        file).
        """
        q: queue.Queue = queue.Queue(maxsize=TAR_QUEUE)
        done = object()

        def produce() -> None:
            try:
                with tarfile.open(fileobj=_QueueWriter(q), mode="w|gz") as tar:
                    for f in files:
                        info = tarfile.TarInfo(f"{root}/{f['path']}")
                        info.size = f["size"]
                        info.mode = 0o644
                        reader = _ChunkReader(self.iter_bytes(f"{prefix}/{f['path']}"))
                        tar.addfile(info, io.BufferedReader(reader, CHUNK))
            except Exception:
                logger.exception("streaming the tarball of %s failed", prefix)
            finally:
                q.put(done)

        threading.Thread(target=produce, daemon=True, name=f"tar-{root[:8]}").start()

        def chunks() -> Iterator[bytes]:
            while True:
                chunk = q.get()
                if chunk is done:
                    return
                yield chunk

        return chunks()
