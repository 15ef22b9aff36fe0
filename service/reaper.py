"""The reaper: jobs whose worker died are requeued (bounded attempts) or failed with "worker lost".

Runs as a thread in every API and worker process; the store's conditional updates make concurrent
reapers safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.store import JobStore

logger = logging.getLogger(__name__)

Send = Callable[[str, str, float | None], None]  # (job id, queue, countdown)


def reap_once(store: JobStore, send: Send, *, stale_after: float,
              requeue_queued_after: float) -> tuple[int, int]:
    to_send, failed = store.reap(stale_after=stale_after, requeue_queued_after=requeue_queued_after)
    for job in to_send:
        logger.warning("job %s: worker lost or message lost; sending it to the %s queue again",
                       job["id"], job["queue"])
        send(job["id"], job["queue"], None)
    for job in failed:
        logger.warning("job %s: worker lost and no attempts left; failed", job["id"])
    return len(to_send), len(failed)


class Reaper:
    def __init__(self, store: JobStore, send: Send, *, interval: float, stale_after: float,
                 requeue_queued_after: float) -> None:
        self.store, self.send, self.interval = store, send, interval
        self.stale_after, self.requeue_queued_after = stale_after, requeue_queued_after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reap_once(self.store, self.send, stale_after=self.stale_after,
                          requeue_queued_after=self.requeue_queued_after)
            except Exception:  # a database blip must not kill the reaper
                logger.warning("reaper pass failed", exc_info=True)
