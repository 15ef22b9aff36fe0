"""Prometheus metrics of the API: HTTP latency, and on each scrape jobs by status, queue depth,
stale heartbeats and stage durations (read from the job store, which the workers write)."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily

from service.store import STATUSES

logger = logging.getLogger(__name__)


class StoreCollector:
    def __init__(self, store, settings, queue_depths) -> None:
        self.store, self.settings, self.queue_depths = store, settings, queue_depths

    def collect(self):
        try:
            counts = self.store.counts_by_status()
            by_status = GaugeMetricFamily(
                "slimformer_jobs",
                "Jobs in the store by status and queue",
                labels=["status", "queue"],
            )
            for status in STATUSES:
                for queue in ("cpu", "gpu"):
                    by_status.add_metric([status, queue], counts.get((status, queue), 0))
            yield by_status
            stale = GaugeMetricFamily(
                "slimformer_jobs_stale_heartbeat",
                "Running jobs whose heartbeat is older than the stale limit",
            )
            stale.add_metric([], self.store.stale_running(self.settings.stale_after_seconds))
            yield stale
            durations = SummaryMetricFamily(
                "slimformer_stage_seconds",
                "Seconds spent per stage by recent succeeded jobs",
                labels=["stage"],
            )
            totals: dict[str, list[float]] = {}
            for seconds in self.store.stage_durations():
                for stage, value in seconds.items():
                    totals.setdefault(stage, []).append(float(value))
            for stage, values in sorted(totals.items()):
                durations.add_metric([stage], len(values), sum(values))
            yield durations
        except Exception:  # a scrape must not fail because the store blinked
            logger.warning("metrics: job store unreachable", exc_info=True)
        try:
            depth = GaugeMetricFamily(
                "slimformer_queue_depth", "Messages waiting in the broker", labels=["queue"]
            )
            for queue, n in self.queue_depths().items():
                depth.add_metric([queue], n)
            yield depth
        except Exception:
            logger.warning("metrics: broker unreachable", exc_info=True)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "slimformer_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.jobs_submitted = Counter(
            "slimformer_jobs_submitted", "Jobs accepted by this API process", registry=self.registry
        )

    def watch_store(self, store, settings, queue_depths) -> None:
        self.registry.register(StoreCollector(store, settings, queue_depths))
