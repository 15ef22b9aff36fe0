"""The server-side commands behind ``slimformer serve | worker | keys | migrate`` (imported lazily by the CLI)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from service.logs import configure_logging
from service.settings import Settings, is_loopback
from service.store import JobStore

logger = logging.getLogger("slimformer.serve")


class StartupError(RuntimeError):
    """A reason the server refuses to start; the CLI prints it as one line."""


def settings_from(args) -> Settings:
    overrides = {}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def open_store(settings: Settings, *, migrate: bool) -> JobStore:
    from service.migrations import current

    store = JobStore(settings.resolved_database_url, pepper=settings.api_key_pepper,
                     token_secret=settings.token_encryption_key)
    if migrate or settings.resolved_database_url.startswith("sqlite"):
        store.create_schema()
    elif current(settings.resolved_database_url) is None:
        raise StartupError("the job store has no schema yet: run `slimformer migrate` once (DATABASE_URL="
                           f"{settings.public_summary()['database']})")
    return store


def migrate(args) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from service.migrations import current, upgrade

    upgrade(settings.resolved_database_url)
    print(f"job store at revision {current(settings.resolved_database_url)} "
          f"({settings.public_summary()['database']})")
    return 0


def keys(args) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings, migrate=False)
    if args.keys_command == "create":
        key, secret = store.create_key(args.name, admin=args.admin)
        print(secret)
        print(f"created {'admin ' if key.admin else ''}key {key.id} ({key.name}); this is the only time the key is "
              "shown", file=sys.stderr)
    elif args.keys_command == "list":
        for row in store.list_keys():
            state = "revoked" if row["revoked_at"] else "active"
            print(f"{row['id']}  {row['name']:<24} {'admin' if row['admin'] else 'user':<6} {state}")
    elif args.keys_command == "revoke":
        if not store.revoke_key(args.key_id):
            raise StartupError(f"no active key {args.key_id}")
        print(f"revoked {args.key_id}")
    return 0


def worker(args) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    open_store(settings, migrate=False).dispose()
    from workers.tasks import run_worker

    queues = args.queues.split(",") if args.queues else None
    run_worker(settings, queues=queues, concurrency=args.concurrency, hostname=args.hostname)
    return 0


def serve(args) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings, migrate=False)
    keys_exist = store.active_key_count() > 0
    store.dispose()
    if not keys_exist and settings.mode == "local":
        if not is_loopback(settings.host):
            raise StartupError(f"refusing to listen on {settings.host}: no API key exists, so auth is off and anyone "
                               "who can reach the port could use the server. Create a key first with "
                               "`slimformer keys create --name NAME`, or listen on 127.0.0.1")
        logger.warning("auth is off (no API key exists); listening on %s only. Create a key with "
                       "`slimformer keys create --name NAME` to turn it on", settings.host)
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    supervisor = None
    if not args.no_worker:
        supervisor = WorkerSupervisor(settings).start()
        # uvicorn re-raises SIGTERM/SIGINT after its shutdown, so stop the worker in the app's shutdown
        app.state.shutdown_hooks.append(supervisor.stop)
    logger.info("serving on http://%s:%d with %s", settings.host, settings.port, settings.public_summary())
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                    timeout_graceful_shutdown=10)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def _die_with_parent() -> None:
    """In the worker child (Linux): die when the serve process dies, however it dies (its pool children follow:
    Celery gives them the same parent-death signal). A job it was running is picked up again by the reaper."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerSupervisor:
    """The embedded worker: a ``slimformer worker`` process that is started again if it dies (killed, OOM).

    Its in-flight job is not lost: the reaper sees the stale heartbeat and sends the job again.
    """

    def __init__(self, settings: Settings) -> None:
        self.env = dict(os.environ, SLIMFORMER_DATA_DIR=str(Path(settings.data_dir).resolve()))
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-m", "slimformer.cli", "worker"], env=self.env,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        logger.info("started a worker process (pid %d)", self.child.pid)

    def start(self) -> WorkerSupervisor:
        self._spawn()
        self._thread.start()
        return self

    def _watch(self) -> None:
        delay = 1.0
        while not self._stop.wait(1.0):
            if self.child is not None and self.child.poll() is not None:
                code = self.child.returncode
                try:  # take down what is left of its process group (pool children)
                    os.killpg(self.child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                logger.warning("the worker process exited (code %s); starting a new one in %.0f s", code, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
                self._spawn()
            else:
                delay = 1.0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        child = self.child
        if child is not None and child.poll() is None:
            # SIGTERM to Celery's main process only (its documented warm shutdown); a job still running after
            # a few seconds is stopped hard and resumes, from its last checkpoint, when the service next runs
            child.terminate()
            try:
                child.wait(timeout=8)
            except subprocess.TimeoutExpired:
                logger.warning("the worker is still busy; stopping it (its job resumes at the next start)")
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=10)
