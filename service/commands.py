"""The server-side commands ``slimformer serve | keys | migrate`` (``worker`` is in workers).

The CLI finds them through the ``slimformer.commands`` entry points; each is a :class:`Command`,
which fits the contract ``slimformer.cli.server.ServerCommand``.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.logs import configure_logging
from service.settings import Settings, is_loopback
from service.store import JobStore

logger = logging.getLogger("slimformer.serve")


class StartupError(RuntimeError):
    """A reason the server refuses to start; the CLI prints it as one line."""


@dataclass(frozen=True)
class Command:
    """One ``slimformer`` server command, as a ``slimformer.commands`` entry point names it.

    ``run`` returns the exit code; a :class:`StartupError` (or another of ``expected_errors``)
    is printed by the CLI as one ``error: ...`` line, exit 2.
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    expected_errors: tuple[type[Exception], ...] = (StartupError,)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "workers", None) is not None:
        overrides["api_workers"] = args.workers
    return Settings(**overrides)


def open_store(settings: Settings, *, migrate: bool) -> JobStore:
    from service.migrations import current  # Alembic: only needed to check a server database

    store = JobStore(
        settings.resolved_database_url,
        pepper=settings.api_key_pepper,
        token_secret=settings.token_encryption_key,
    )
    if migrate or settings.resolved_database_url.startswith("sqlite"):
        store.create_schema()
    elif current(settings.resolved_database_url) is None:
        raise StartupError(
            "the job store has no schema yet: run `slimformer migrate` once "
            f"(DATABASE_URL={settings.public_summary()['database']})"
        )
    return store


def add_data_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` as every command but ``serve`` words it."""
    parser.add_argument("--data-dir", help="as for serve (SLIMFORMER_DATA_DIR)")


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser)


def migrate(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from service.migrations import current, upgrade  # Alembic: only this command needs it

    upgrade(settings.resolved_database_url)
    print(
        f"job store at revision {current(settings.resolved_database_url)} "
        f"({settings.public_summary()['database']})"
    )
    return 0


def _keys_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir_argument(parser)
    keys_sub = parser.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="the key sees every key's jobs")
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the id shown by `keys list`")


def keys(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings, migrate=False)
    if args.keys_command == "create":
        key, secret = store.create_key(args.name, admin=args.admin)
        print(secret)
        print(
            f"created {'admin ' if key.admin else ''}key {key.id} ({key.name}); this is the "
            "only time the key is shown",
            file=sys.stderr,
        )
    elif args.keys_command == "list":
        for row in store.list_keys():
            state = "revoked" if row["revoked_at"] else "active"
            role = "admin" if row["admin"] else "user"
            print(f"{row['id']}  {row['name']:<24} {role:<6} {state}")
    elif args.keys_command == "revoke":
        if not store.revoke_key(args.key_id):
            raise StartupError(f"no active key {args.key_id}")
        print(f"revoked {args.key_id}")
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; SLIMFORMER_HOST)")
    parser.add_argument("--port", type=int, help="port (default 8000; SLIMFORMER_PORT)")
    parser.add_argument(
        "--data-dir",
        help="job store, queue and artifacts folder (default ./data; SLIMFORMER_DATA_DIR)",
    )
    parser.add_argument(
        "--no-worker", action="store_true", help="API only; run `slimformer worker` elsewhere"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="API processes (default 2 in production mode, else 1; SLIMFORMER_API_WORKERS)",
    )


def check_auth(settings: Settings, store: JobStore) -> str | None:
    """Serve's start-up check of auth (``SLIMFORMER_AUTH``): a warning to log, or None.

    Raises:
        StartupError: auth would be off on an address other than loopback.
    """
    if settings.auth == "off":  # Settings refuses it in production and off loopback; to be sure:
        if settings.mode == "production" or not is_loopback(settings.host):
            raise StartupError(
                f"refusing to listen on {settings.host} with SLIMFORMER_AUTH=off: "
                "without auth the API listens on loopback only"
            )
        return (
            f"auth is off (SLIMFORMER_AUTH=off): every request acts as the local admin; "
            f"listening on {settings.host} only"
        )
    if settings.mode == "production" or settings.auth == "on" or store.any_key_created():
        if store.active_key_count() == 0:
            return (
                "auth is on but no active API key exists, so every request gets 401; create "
                "one with `slimformer keys create --name NAME`"
            )
        return None
    if not is_loopback(settings.host):
        raise StartupError(
            f"refusing to listen on {settings.host}: no API key was ever created, "
            "so auth is off and anyone who can reach the port could use the "
            "server. Create a key first with `slimformer keys create --name "
            "NAME`, set SLIMFORMER_AUTH=on, or listen on 127.0.0.1"
        )
    return (
        f"auth is off (no API key was created yet); listening on {settings.host} only. Create "
        "a key with `slimformer keys create --name NAME` to turn it on"
    )


def serve(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    configure_logging(settings.log_level, settings.log_format)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings, migrate=False)
    try:
        warning = check_auth(settings, store)
    finally:
        store.dispose()
    if warning:
        logger.warning("%s", warning)
    # uvicorn and the app (FastAPI, routes, dashboard): only `serve` needs them
    import uvicorn

    from service.app import create_app

    workers = settings.resolved_api_workers
    app = None
    if workers == 1:
        app = create_app(settings)
    else:  # each uvicorn worker process builds its app from the environment
        os.environ.update(
            SLIMFORMER_HOST=settings.host,
            SLIMFORMER_PORT=str(settings.port),
            SLIMFORMER_DATA_DIR=str(Path(settings.data_dir).resolve()),
            SLIMFORMER_API_WORKERS=str(workers),
        )
    supervisor = None
    if not args.no_worker:
        supervisor = WorkerSupervisor(settings).start()
        if app is not None:
            # uvicorn re-raises SIGTERM/SIGINT after its shutdown, so stop the worker in the
            # app's shutdown
            app.state.shutdown_hooks.append(supervisor.stop)
    logger.info(
        "serving on http://%s:%d with %s (%d API process%s)",
        settings.host,
        settings.port,
        settings.public_summary(),
        workers,
        "es" if workers > 1 else "",
    )
    try:
        uvicorn.run(
            app or "service.app:app_from_environment",
            factory=app is None,
            workers=workers if app is None else None,
            **uvicorn_options(settings),
        )
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def uvicorn_options(settings: Settings) -> dict:
    """What ``slimformer serve`` asks of uvicorn. The h11 parser, because it bounds a request's
    head (16 KiB) where httptools buffers headers without limit. No uvicorn setting times out a
    request head sent slowly (slowloris): that needs a reverse proxy in front (docs/security.md)."""
    return dict(
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        http="h11",
        h11_max_incomplete_event_size=16 * 1024,
        timeout_keep_alive=settings.keep_alive_seconds,
        limit_concurrency=settings.max_connections,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )


serve_command = Command(
    help="run the API (and, by default, one worker process)",
    add_arguments=_serve_arguments,
    run=serve,
)
keys_command = Command(
    help="create, list and revoke API keys", add_arguments=_keys_arguments, run=keys
)
migrate_command = Command(
    help="create or upgrade the job store's schema (Alembic)",
    add_arguments=_migrate_arguments,
    run=migrate,
)


def _die_with_parent() -> None:
    """In the worker child (Linux): die when the serve process dies, however it dies (its pool
    children follow: Celery gives them the same parent-death signal). A job it was running is
    picked up again by the reaper."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class WorkerSupervisor:
    """The embedded worker: a ``slimformer worker`` process that is started again if it dies
    (killed, OOM).

    Its in-flight job is not lost: the reaper sees the stale heartbeat and sends the job again.
    """

    def __init__(self, settings: Settings) -> None:
        self.env = dict(os.environ, SLIMFORMER_DATA_DIR=str(Path(settings.data_dir).resolve()))
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-m", "slimformer.cli", "worker"],
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
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
                logger.warning(
                    "the worker process exited (code %s); starting a new one in %.0f s", code, delay
                )
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
            # SIGTERM to Celery's main process only (its documented warm shutdown); a job still
            # running after a few seconds is stopped hard and resumes, from its last checkpoint,
            # when the service next runs
            child.terminate()
            try:
                child.wait(timeout=8)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "the worker is still busy; stopping it (its job resumes at the next start)"
                )
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=10)
