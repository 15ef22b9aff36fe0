#!/bin/sh
# One image, several roles: the first argument picks what the container runs.
#   api        the HTTP API only (workers run in their own containers)
#   worker     a Celery worker (queues by hardware, or SLIMFORMER_WORKER_QUEUES / --queues)
#   migrate    create or upgrade the job store's schema, then exit
#   wait-migrated  wait until the job store's schema is at this image's revision (Kubernetes init container)
#   healthcheck  what the image's HEALTHCHECK runs: /healthz for the API, the metrics port for a worker
# Anything else runs as a command (`slimformer keys create --name ops`, `bash`).
set -eu

role="${1:-api}"
[ "$#" -gt 0 ] && shift

case "$role" in
    api)
        exec slimformer serve --no-worker --host "${SLIMFORMER_HOST:-0.0.0.0}" "$@"
        ;;
    worker)
        if [ -n "${SLIMFORMER_WORKER_QUEUES:-}" ]; then
            exec slimformer worker --queues "$SLIMFORMER_WORKER_QUEUES" "$@"
        fi
        exec slimformer worker "$@"
        ;;
    migrate)
        exec slimformer migrate "$@"
        ;;
    wait-migrated)
        exec python -c '
import sys, time
from alembic.script import ScriptDirectory
from service.migrations import config, current
from service.settings import Settings
url = Settings().resolved_database_url
head = ScriptDirectory.from_config(config(url)).get_current_head()
deadline = time.monotonic() + float(sys.argv[1])
while True:
    try:
        found = current(url)
    except Exception as err:  # the database may still be starting
        found = f"unreachable ({type(err).__name__})"
    if found == head:
        sys.exit(0)
    if time.monotonic() > deadline:
        sys.exit(f"job store schema is {found}, this image needs {head}: run the migrate job")
    print(f"waiting for the job store schema {head} (now {found})", flush=True)
    time.sleep(5)
' "${SLIMFORMER_MIGRATION_WAIT_SECONDS:-600}"
        ;;
    healthcheck)
        # the process the container runs says which check applies
        if tr '\0' ' ' < /proc/1/cmdline | grep -q ' worker'; then
            [ -n "${SLIMFORMER_WORKER_METRICS_PORT:-}" ] || exit 0
            url="http://127.0.0.1:${SLIMFORMER_WORKER_METRICS_PORT}/metrics"
        else
            url="http://127.0.0.1:${SLIMFORMER_PORT:-8000}/healthz"
        fi
        exec python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4).read()' "$url"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
