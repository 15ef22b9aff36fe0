"""What every artifact backend shares: the errors, key checking, the store protocol and the
streamed ``.tar.gz`` of a folder (built on the backend's own ``iter_bytes``)."""

from __future__ import annotations

import asyncio
import collections
import errno
import io
import logging
import re
import tarfile
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Protocol

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
TAR_QUEUE = 16  # chunks of tarball held in memory at most while the client reads slowly
MAX_NAME_BYTES = 255  # one path component (NAME_MAX of Linux file systems)
MAX_KEY_BYTES = 1000  # a whole key: S3 allows 1024 with its prefix; far below a local PATH_MAX


class ArtifactNotFound(LookupError):
    pass


class BadArtifactPath(ValueError):
    pass


def _shown(key: str) -> str:
    """A key as error messages quote it: long ones cut to their first characters."""
    return repr(key if len(key) <= 80 else key[:60] + "...")


def clean_key(key: str) -> str:
    """A relative POSIX key with no ``..``, no absolute part, no empty segment and no name longer
    than a file system allows (255 bytes a component, ``MAX_KEY_BYTES`` in all), or
    BadArtifactPath."""
    if not key or "\\" in key or "\x00" in key:
        raise BadArtifactPath(f"invalid artifact path {_shown(key)}")
    path = PurePosixPath(key)
    if path.is_absolute() or any(part in ("..", ".", "") for part in key.split("/")):
        raise BadArtifactPath(
            f"invalid artifact path {_shown(key)}: it must stay inside the job's folder"
        )
    encoded = key.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_KEY_BYTES or any(
        len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")
    ):
        raise BadArtifactPath(f"invalid artifact path {_shown(key)}: the name is too long")
    return str(path)


def is_name_too_long(err: BaseException) -> bool:
    """Whether ``err`` is the file system refusing a name or path as too long."""
    return isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG


# -- server paths out of messages --------------------------------------------------------------
_PATH = re.compile(r"(?<![\w.~:/\\-])(/[^\s'\"`/:,;()\[\]{}<>]+(?:/[^\s'\"`/:,;()\[\]{}<>]*)*)")
_PUBLIC_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


def server_roots(*folders: Path | str | None) -> list[str]:
    """The folders whose paths never leave the server: the given ones, the home folder, the
    temporary folder and the Python installation."""
    import sys

    roots = {str(Path(f).expanduser().resolve()) for f in folders if f}
    roots |= {str(Path.home()), tempfile.gettempdir(), sys.prefix, sys.base_prefix}
    return sorted((r for r in roots if r not in ("", "/")), key=len, reverse=True)


def scrub_paths(text: str, roots: Iterable[str] = ()) -> str:
    """``text`` with every absolute path on this machine replaced by ``.../<its last name>``.

    ``roots`` (from ``server_roots``) are replaced wherever they appear; any other absolute path of
    two or more components is replaced too, except the API's own routes (``/v1/...``).
    """
    for root in roots:
        if root in text:  # the root as a whole path or a path's start, not inside another
            pattern = (
                r"(?<![\w.~:/\\-])"
                + re.escape(root)
                + r"(?=$|[/\s'\"`:,;()\[\]{}<>])(/[^\s'\"`:,;()\[\]{}<>]*)?"
            )
            text = re.sub(pattern, lambda m: _short(m.group(0)), text)

    def replace(match: re.Match) -> str:
        path = match.group(1)
        if path.startswith(_PUBLIC_PREFIXES) or path.count("/") < 2:
            return path
        return _short(path)

    return _PATH.sub(replace, text)


def _short(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return f".../{name}" if name and name != "..." else "..."


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

    def iter_tar_gz(self, prefix: str, files: list[dict], *, root: str) -> TarStream:
        """``files`` (from ``list(prefix)``) as a streamed .tar.gz, each under ``root/``; close
        the stream when its reader goes."""

    def delete_prefix(self, prefix: str) -> None: ...

    def ping(self) -> None: ...


class _Closed(Exception):
    """Raised in the producer thread once the reader is gone."""


class _Channel:
    """A bounded buffer of byte chunks between one producer thread and one reader (a thread or an
    event loop)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.chunks: collections.deque[bytes] = collections.deque()
        self.cond = threading.Condition()
        self.done = False  # the producer wrote its last chunk (or failed)
        self.closed = False  # the reader went away: the producer stops at its next write
        self.wake: Callable[[], None] | None = None  # tells an async reader that data came

    def _notify_reader(self) -> None:
        wake = self.wake
        if wake is not None:
            try:
                wake()
            except RuntimeError:  # the event loop is gone; nobody is waiting any more
                pass

    def put(self, chunk: bytes) -> None:
        with self.cond:
            while len(self.chunks) >= self.capacity and not self.closed:
                self.cond.wait()
            if self.closed:
                raise _Closed
            self.chunks.append(chunk)
            self.cond.notify_all()
        self._notify_reader()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()
        self._notify_reader()

    def close(self) -> None:
        """The reader is gone: drop what is buffered and release a producer waiting for room."""
        with self.cond:
            self.closed = True
            self.chunks.clear()
            self.cond.notify_all()

    def take(self, block: bool) -> bytes | None:
        """The next chunk; None at the end; ``b""`` when ``block`` is false and none is ready."""
        with self.cond:
            while block and not self.chunks and not self.done and not self.closed:
                self.cond.wait()
            if self.chunks:
                chunk = self.chunks.popleft()
                self.cond.notify_all()
                return chunk
            if self.done or self.closed:
                return None
            return b""


class _ChannelWriter(io.RawIOBase):
    """A write-only file whose bytes go to a channel: the tarball streams instead of sitting in
    memory."""

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001
        if data:
            self.channel.put(bytes(data))
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


def _close_iterator(it: object) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


class TarStream:
    """A tarball a producer thread writes while it is read, by iteration (``for``) or by async
    iteration (``async for``, which holds no thread while waiting).

    ``close()`` (or dropping the stream) stops the producer at its next write: its thread ends
    and the files it had open are closed, whether or not the tarball was read to the end.
    """

    def __init__(
        self, write: Callable[[io.RawIOBase], None], *, name: str, capacity: int = TAR_QUEUE
    ) -> None:
        self._channel = channel = _Channel(capacity)
        self._thread = threading.Thread(
            target=_produce, args=(channel, write, name), daemon=True, name=name
        )
        # a reader that forgets to close still stops the producer once the stream is collected
        self._finalizer = weakref.finalize(self, channel.close)
        self._thread.start()

    def close(self) -> None:
        self._finalizer()

    @property
    def producer_alive(self) -> bool:
        return self._thread.is_alive()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = self._channel.take(block=True)
        if chunk is None:
            raise StopIteration
        return chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        channel = self._channel
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        channel.wake = lambda: loop.call_soon_threadsafe(ready.set)
        try:
            while True:
                ready.clear()
                chunk = channel.take(block=False)
                if chunk is None:
                    raise StopAsyncIteration
                if chunk:
                    return chunk
                await ready.wait()
        finally:
            channel.wake = None


def _produce(channel: _Channel, write: Callable[[io.RawIOBase], None], name: str) -> None:
    try:
        write(_ChannelWriter(channel))
    except _Closed:
        logger.info("%s: the reader went away; stopped writing the tarball", name)
    except Exception:
        logger.exception("%s: streaming the tarball failed", name)
    finally:
        channel.finish()


class ClosingIterator:
    """An iterator over another whose ``close()`` may come from any thread, even while a
    ``next()`` runs in another: the inner iterator (and the file it reads) is closed at once or
    right after that ``next()`` returns, never left for the garbage collector."""

    def __init__(self, inner: Iterator[bytes]) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        with self._lock:
            if self._closed:
                _close_iterator(self._inner)
                raise StopIteration
            try:
                return next(self._inner)
            finally:
                if self._closed:
                    _close_iterator(self._inner)

    def close(self) -> None:
        self._closed = True
        if self._lock.acquire(blocking=False):
            try:
                _close_iterator(self._inner)
            finally:
                self._lock.release()


class TarballMixin:
    """``iter_tar_gz`` for any store with ``iter_bytes``."""

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        raise NotImplementedError

    def iter_tar_gz(self, prefix: str, files: list[dict], *, root: str) -> TarStream:
        """``files`` under ``prefix`` as a .tar.gz whose members are ``root/<path>``.

        A thread starts writing the tarball at once into a bounded buffer; the returned stream
        reads it. A failure part-way is logged and ends the stream (the client sees a short
        file). Close the stream when the client goes: the thread stops and closes its files.
        """

        def write(out: io.RawIOBase) -> None:
            with tarfile.open(fileobj=out, mode="w|gz") as tar:
                for f in files:
                    info = tarfile.TarInfo(f"{root}/{f['path']}")
                    info.size = f["size"]
                    info.mode = 0o644
                    chunks = self.iter_bytes(f"{prefix}/{f['path']}")
                    try:
                        tar.addfile(info, io.BufferedReader(_ChunkReader(chunks), CHUNK))
                    finally:
                        _close_iterator(chunks)  # its file now, not when collected

        return TarStream(write, name=f"tar-{root[:8]}")
