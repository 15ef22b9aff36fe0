"""Real service processes for tests and benchmarks: ``slimformer serve`` (API + embedded worker) or
the production shape (API, N workers, Redis, Postgres), pointed at the Hub test server
(:mod:`testkit.hub_server`). The pytest fixtures built on these live in tests/service_fixtures.py.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from testkit.hub_server import HubServer

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def _redis(*args: str, db: int = 0) -> str:
    return subprocess.run(
        ["redis-cli", "-n", str(db), *args], capture_output=True, text=True
    ).stdout.strip()


@contextmanager
def redis_database() -> Iterator[int]:
    """A Redis database number (1 to 15) to the caller alone, emptied before and after: claimed
    with ``SET NX`` in database 0, so test processes running side by side (pytest-xdist workers,
    another checkout's suite) never share one. Waits while all are taken."""
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + 300
    while True:
        for number in random.sample(range(1, 16), 15):
            key = f"slimformer-tests:db:{number}"
            if _redis("SET", key, owner, "NX", "EX", "3600") == "OK":
                break
        else:
            if time.monotonic() > deadline:
                raise TimeoutError("every Redis database of 1..15 is claimed")
            time.sleep(0.5)
            continue
        break
    _redis("FLUSHDB", db=number)
    try:
        yield number
    finally:
        _redis("FLUSHDB", db=number)
        if _redis("GET", key) == owner:
            _redis("DEL", key)


def _psql(sql: str, *, check: bool = False) -> subprocess.CompletedProcess:
    """``sql`` run by the local Postgres's superuser on its ``postgres`` database."""
    return subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql],
        check=check,
        capture_output=True,
    )


def postgres_available() -> bool:
    return shutil.which("psql") is not None and _psql("select 1").returncode == 0


def fresh_postgres_database() -> str:
    name = f"slimformer_test_{uuid.uuid4().hex[:10]}"
    _psql(f"CREATE DATABASE {name}", check=True)
    return name


def drop_postgres_database(name: str) -> None:
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.args, self.log = args, log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill9(self) -> None:
        """SIGKILL the whole process group: the process and its pool children die at once, like a
        lost machine."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        self._fh.close()

    def kill(self) -> None:
        """:meth:`kill9`, and close the log."""
        self.kill9()
        self._fh.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def processes_of(data_dir: Path) -> list[int]:
    """The pids of the processes started with ``SLIMFORMER_DATA_DIR=data_dir`` (a deployment's
    API, workers and their pool children)."""
    wanted = {f"SLIMFORMER_DATA_DIR={d}".encode() for d in (data_dir, Path(data_dir).resolve())}
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted & set(environ.read_bytes().split(b"\0")):
                pids.append(int(environ.parent.name))
        except (OSError, ValueError):
            pass
    return pids


class Service:
    """Processes of one slimformer deployment, and an HTTP client for its API."""

    def __init__(self, data_dir: Path, env: dict, port: int) -> None:
        self.data_dir, self.env, self.port = data_dir, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self.headers: dict[str, str] = {}

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "slimformer.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )

    def start_api(self, *, worker: bool = True) -> Service:
        args = [sys.executable, "-m", "slimformer.cli", "serve", "--port", str(self.port)]
        if not worker:
            args.append("--no-worker")
        self.api = Proc(args, self.env, self.data_dir / "api.log")
        self.wait_ready()
        return self

    def start_worker(self, name: str | None = None) -> Proc:
        name = name or f"w{len(self.workers)}"
        proc = Proc(
            [sys.executable, "-m", "slimformer.cli", "worker", "--hostname", f"{name}@%h"],
            self.env,
            self.data_dir / f"worker-{name}.log",
        )
        self.workers.append(proc)
        return proc

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api is not None and self.api.popen.poll() is not None:
                raise RuntimeError(f"the API exited:\n{self.api.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(
            f"API not up after {timeout} s:\n{self.api.output()[-3000:] if self.api else ''}"
        )

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)

    def upload(self, path: Path) -> dict:
        with self.client() as c, path.open("rb") as fh:
            r = c.post("/v1/datasets", files={"file": (path.name, fh, "text/csv")})
        assert r.status_code == 201, r.text
        return r.json()

    def submit(self, spec: dict, **headers: str) -> dict:
        with self.client() as c:
            r = c.post("/v1/jobs", json=spec, headers=headers)
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(
        self, job_id: str, *, until=lambda job: job["status"] in TERMINAL, timeout: float = 300
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.25)
        raise TimeoutError(
            f"job {job_id} still {job['status']} / {job['stage']} after {timeout} s:\n"
            + "\n".join(p.output()[-2000:] for p in [self.api, *self.workers] if p)
        )

    def logs(self) -> str:
        return "\n".join(p.output() for p in [self.api, *self.workers] if p)

    def stop(self) -> None:
        """SIGTERM each process and wait for its graceful shutdown (Celery's warm shutdown takes
        seconds)."""
        for proc in [*self.workers, self.api]:
            if proc is not None:
                proc.stop()

    def kill(self, timeout: float = 30) -> None:
        """Stop at once, like a lost machine (SIGKILL to every process group), and wait until no
        process of the deployment is left: the embedded worker and its pool children die with
        ``serve`` (their parent-death signal). The teardown of a test's service."""
        for proc in [*self.workers, self.api]:
            if proc is not None:
                proc.kill()
        deadline = time.monotonic() + timeout
        while (left := processes_of(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def base_env(data_dir: Path, hub: HubServer, port: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIMFORMER_", "HF_", "REDIS_URL", "DATABASE_URL"))
    }
    env.update(
        {
            "SLIMFORMER_DATA_DIR": str(data_dir),
            "SLIMFORMER_PORT": str(port),
            "SLIMFORMER_HEARTBEAT_SECONDS": "1",
            "SLIMFORMER_STALE_AFTER_SECONDS": "6",
            "SLIMFORMER_REAPER_INTERVAL_SECONDS": "1",
            "SLIMFORMER_RETRY_BACKOFF_SECONDS": "1",
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(data_dir / "hf-home"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "TRANSFORMERS_VERBOSITY": "error",
        }
    )
    return env


def start_service_with_keys(
    data_dir: Path, model_folder: str, names=("alice", "bob")
) -> tuple[Service, HubServer]:
    """``slimformer serve`` with auth on (one key per name; requests go as the first) and the Hub
    test server holding ``acme/tiny``. Stop both with ``service.stop(); hub.stop()``."""
    hub = HubServer().start()
    hub.add_repo("acme/tiny", model_folder)
    port = free_port()
    service = Service(data_dir, base_env(data_dir, hub, port), port)
    service.keys = {}
    for name in names:
        created = service.command("keys", "create", "--name", name)
        assert created.returncode == 0, created.stderr
        service.keys[name] = created.stdout.strip()
    service.headers = {"Authorization": f"Bearer {service.keys[names[0]]}"}
    service.start_api(worker=True)
    return service, hub
