"""An HTTP client for the slimformer service's v1 API (httpx only: importing it never imports
torch).

Example:
    >>> client = Client("http://127.0.0.1:8000", api_key="sk-...")
    >>> job = client.submit({"model": {"id": "acme/tiny"},
    ...                      "dataset": {"hub_id": "glue", "config": "sst2"},
    ...                      "prune": {"heads": 0.5}})
    >>> for view in client.follow(job["id"]):
    ...     print(view["stage"], view["progress"])
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from slimformer.checksum import file_sha256
from slimformer.errors import SlimformerError

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (502, 503, 504)


class ClientError(SlimformerError):
    """A request the service refused or could not answer; ``str(err)`` is one line a person
    understands."""

    code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: dict | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status = status
        if code:
            self.code = code


class ServerUnreachable(ClientError, ConnectionError):
    """Nothing answers at the server URL (connection refused, unknown host, timeout)."""

    code = "server_unreachable"


# -- configuration ---------------------------------------------------------------------------------
def config_path() -> Path:
    """``$SLIMFORMER_CONFIG``, else ``~/.config/slimformer/config.toml`` (``$XDG_CONFIG_HOME``
    honoured)."""
    if os.environ.get("SLIMFORMER_CONFIG"):
        return Path(os.environ["SLIMFORMER_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "slimformer" / "config.toml"


def read_config(path: Path | None = None) -> dict[str, str]:
    """The saved ``server`` and ``api_key`` (an empty dict when there is no config file)."""
    import tomllib

    path = path or config_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ClientError(
            f"{path} is not valid TOML ({err}); fix it or run `slimformer login` again"
        ) from None
    return {k: str(v) for k, v in data.items() if k in ("server", "api_key") and v}


def write_config(values: dict[str, str], path: Path | None = None) -> Path:
    """Write ``server`` / ``api_key`` to the config file, readable by its owner only (mode 0600)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # TOML basic strings accept JSON's escapes for everything json.dumps emits with ensure_ascii
    text = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items() if value)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# written by `slimformer login`\n" + text)
    os.chmod(tmp, 0o600)  # an existing file keeps its old mode through O_CREAT
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Connection:
    server: str
    api_key: str | None


def resolve_connection(
    server: str | None = None, api_key: str | None = None, config: dict[str, str] | None = None
) -> Connection:
    """Flag, then environment (``SLIMFORMER_SERVER``, ``SLIMFORMER_API_KEY``), then the config file,
    then defaults."""
    config = read_config() if config is None else config
    server = server or os.environ.get("SLIMFORMER_SERVER") or config.get("server") or DEFAULT_SERVER
    api_key = api_key or os.environ.get("SLIMFORMER_API_KEY") or config.get("api_key") or None
    return Connection(server.rstrip("/"), api_key)


# -- downloads -------------------------------------------------------------------------------------
@dataclass
class FileDownload:
    path: str
    size: int
    fetched: int  # bytes transferred in this run
    resumed_from: int  # bytes already on disk when it started (0: fresh, size: already complete)

    @property
    def skipped(self) -> bool:
        return self.fetched == 0 and self.resumed_from == self.size


class Client:
    """The service's API. Errors raise :class:`ClientError` with the API's own message.

    Args:
        server: base URL, for example ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer``; None when the server runs without auth.
        timeout: seconds to connect and between bytes of an answer.
        transport: an ``httpx`` transport (tests).
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": "slimformer-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing
    def _unreachable(self, err: Exception) -> ServerUnreachable:
        return ServerUnreachable(
            f"cannot reach the server at {self.server}: is `slimformer serve` running?"
        )

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        try:
            error = response.json()["error"]
            code, message, details = (
                error.get("code"),
                error.get("message") or "",
                error.get("details") or {},
            )
        except (ValueError, KeyError, TypeError):
            code, details = None, {}
            message = (
                f"the server answered {response.status_code} {response.reason_phrase} to "
                f"{response.request.method} {response.request.url.path}"
            )
        if response.status_code == 401:
            message += " (give a key with --api-key, SLIMFORMER_API_KEY or `slimformer login`)"
        raise ClientError(message, status=response.status_code, code=code, details=details)

    def request(self, method: str, path: str, *, retries: int = 0, **kwargs) -> httpx.Response:
        """One request; ``retries`` more tries on connection errors and 502/503/504 (safe requests
        only)."""
        for attempt in range(retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                refused = isinstance(
                    err, httpx.ConnectError
                )  # nothing listens: retrying only delays the answer
                if attempt < retries and not refused:
                    time.sleep(min(8.0, 0.5 * 2**attempt))
                    continue
                if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
                    raise self._unreachable(err) from err
                raise ClientError(
                    f"the request to {self.server}{path} failed: {err or type(err).__name__}"
                ) from err
            if response.status_code in RETRY_STATUSES and attempt < retries:
                time.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            self._raise_for(response)
            return response
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self.request(method, path, **kwargs).json()

    # -- jobs
    def submit(
        self,
        spec: dict,
        *,
        hub_token: str | None = None,
        idempotency_key: str | None = None,
        retries: int = 3,
    ) -> dict:
        """POST /v1/jobs; retried on network errors with the same ``Idempotency-Key``, so one job at
        most."""
        body = dict(spec)
        if hub_token:
            body["hub_token"] = hub_token
        key = idempotency_key or str(uuid.uuid4())
        return self._json(
            "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, retries=retries
        )

    def jobs(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return self._json("GET", "/v1/jobs", params=params, retries=2)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}", retries=2)

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    def card(self, job_id: str, *, format: str = "markdown") -> str:
        return self.request(
            "GET", f"/v1/jobs/{_segment(job_id)}/card", params={"format": format}, retries=2
        ).text

    def artifacts(self, job_id: str) -> list[dict]:
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}/artifacts", retries=2)["files"]

    # -- datasets
    def upload(self, path: str | Path) -> dict:
        """POST /v1/datasets with a local file; returns the upload (``upload_id``, ``rows``,
        ``columns``)."""
        path = Path(path)
        if not path.is_file():
            raise ClientError(f"data file {path} does not exist")
        with path.open("rb") as fh:
            return self._json(
                "POST",
                "/v1/datasets",
                files={"file": (path.name, fh, "application/octet-stream")},
                timeout=httpx.Timeout(self.http.timeout.connect, read=600.0, write=600.0),
            )

    # -- progress
    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """The job's server-sent events as ``(event, data)``: ``progress`` with a job view, then
        ``end``."""
        timeout = httpx.Timeout(
            self.http.timeout.connect, read=60.0
        )  # the server sends a keep-alive every 15 s
        try:
            with self.http.stream(
                "GET",
                f"/v1/jobs/{_segment(job_id)}/events",
                timeout=timeout,
                headers={"Accept": "text/event-stream"},
            ) as response:
                self._raise_for(response)
                event, data = "message", []
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, json.loads("\n".join(data))
                        event, data = "message", []
                    elif line.startswith(":"):
                        continue
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
        except httpx.TransportError as err:
            if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
                raise self._unreachable(err) from err
            raise StreamDropped(str(err) or type(err).__name__) from err

    def follow(self, job_id: str, *, poll_seconds: float = 1.0) -> Iterator[dict]:
        """Job views as the job moves, ending with its final view. Streams events; polls if the
        stream drops."""
        last = None
        try:
            for event, data in self.events(job_id):
                if event == "progress":
                    last = data
                    yield data
                elif event == "end":
                    break
        except (StreamDropped, ValueError):
            pass  # fall back to polling below
        except ClientError as err:
            if err.status not in RETRY_STATUSES:
                raise
        if last is None or last["status"] not in TERMINAL:
            while True:
                view = self.job(job_id)
                if last is None or view != last:
                    yield view
                last = view
                if view["status"] in TERMINAL:
                    return
                time.sleep(poll_seconds)

    # -- downloads
    def download(
        self,
        job_id: str,
        out: str | Path,
        *,
        on_bytes: Callable[[str, int], None] | None = None,
        on_file: Callable[[str, int, int], None] | None = None,
    ) -> list[FileDownload]:
        """Every artifact of a finished job into ``out``, resuming partial files with HTTP Range
        requests.

        A file already on disk with the expected size is skipped; a shorter one is continued from
        its end; a longer one is fetched again. Every file's final size is checked against the
        listing.

        Args:
            on_file: called as ``on_file(path, size, bytes_already_there)`` before each file.
            on_bytes: called as ``on_bytes(path, n)`` for each chunk written.

        Raises:
            ClientError: the job has not succeeded, a file came back with the wrong size, or the
                server failed.
        """
        out = Path(out)
        results = []
        for item in self.artifacts(job_id):
            rel = item["path"]
            target = (out / rel).resolve()
            if out.resolve() not in target.parents:
                raise ClientError(f"refusing artifact path {rel!r}: it leaves {out}")
            result = self._download_file(job_id, rel, item["size"], target, on_bytes, on_file)
            expected = item.get("sha256")
            if expected and file_sha256(target) != expected:
                # a file of the right size but other content (an older download): fetch it whole
                # once more
                target.unlink()
                result = self._download_file(job_id, rel, item["size"], target, on_bytes, on_file)
                if file_sha256(target) != expected:
                    target.unlink()
                    raise ClientError(
                        f"{rel}: its SHA-256 does not match the server's; the file was removed, "
                        "run the same command again"
                    )
            results.append(result)
        return results

    def _download_file(
        self,
        job_id: str,
        rel: str,
        size: int,
        target: Path,
        on_bytes: Callable[[str, int], None] | None,
        on_file: Callable[[str, int, int], None] | None,
    ) -> FileDownload:
        target.parent.mkdir(parents=True, exist_ok=True)
        have = target.stat().st_size if target.is_file() else 0
        if have > size:  # not a prefix of this file: start over
            target.unlink()
            have = 0
        start = have
        if on_file:
            on_file(rel, size, have)
        fetched = 0
        attempts = 0
        url = (
            f"/v1/jobs/{_segment(job_id)}/artifacts/{'/'.join(_segment(p) for p in rel.split('/'))}"
        )
        while have < size:
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self.http.stream(
                    "GET",
                    url,
                    headers=headers,
                    timeout=httpx.Timeout(self.http.timeout.connect, read=120.0),
                ) as response:
                    self._raise_for(response)
                    if (
                        have and response.status_code != 206
                    ):  # the server ignored the range: start over
                        have = 0
                    with target.open("r+b" if have else "wb") as fh:
                        fh.seek(have)
                        fh.truncate()
                        for chunk in response.iter_bytes(1 << 20):
                            fh.write(chunk)
                            have += len(chunk)
                            fetched += len(chunk)
                            if on_bytes:
                                on_bytes(rel, len(chunk))
            except httpx.TransportError as err:
                attempts += 1
                if attempts > 3:
                    if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
                        raise self._unreachable(err) from err
                    raise ClientError(
                        f"downloading {rel} failed after {attempts} tries ({err}); run the same "
                        "command again to resume"
                    ) from err
                time.sleep(0.5 * 2**attempts)
                continue
            if have != size:
                break
        actual = target.stat().st_size if target.is_file() else 0
        if size == 0 and not target.exists():
            target.touch()
        elif actual != size:
            raise ClientError(
                f"{rel}: got {actual} bytes, the server lists {size}; run the same command again "
                "to resume"
            )
        return FileDownload(rel, size, fetched, start)

    def download_tarball(
        self, job_id: str, out: str | Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Path:
        """GET /v1/jobs/{id}/download (a streamed .tar.gz of the whole model) into
        ``out/{id}.tar.gz``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{job_id}.tar.gz"
        partial = target.with_name(target.name + ".part")
        try:
            with self.http.stream(
                "GET",
                f"/v1/jobs/{_segment(job_id)}/download",
                timeout=httpx.Timeout(self.http.timeout.connect, read=300.0),
            ) as response:
                self._raise_for(response)
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
        except httpx.TransportError as err:
            partial.unlink(missing_ok=True)
            if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
                raise self._unreachable(err) from err
            raise ClientError(f"downloading the archive failed ({err}); try again") from err
        partial.replace(target)
        return target


class StreamDropped(ClientError):
    """The event stream ended without its ``end`` event (a proxy or the server cut it)."""

    code = "stream_dropped"


def _segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
