"""What a worker does with one job id: lease it, run the pipeline, write progress, publish, record
the result.

Kept apart from Celery so that it reads as a recipe and can be driven from tests directly. The
pipeline is imported lazily (it imports torch).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from service.artifacts import ArtifactNotFound, ArtifactStore
from service.artifacts_base import scrub_paths, server_roots
from service.logs import current_job_id, forget_secret, redact, register_secret
from service.settings import Settings
from service.store import JobStore
from slimformer.checksum import file_sha256
from slimformer.spec import overall_progress, stages_for

logger = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# A job that hits one of these is requeued (bounded attempts), with a message naming the problem
# and no path: the disk may be freed, or the next attempt may land on another worker.
DISK_ERRORS = {
    errno.ENOSPC: "the worker's disk is full",
    errno.EDQUOT: "the worker's disk quota is used up",
    errno.EROFS: "the worker's disk is read-only",
    errno.EACCES: "the worker may not write to its disk (permission denied)",
    errno.EPERM: "the worker may not write to its disk (operation not permitted)",
    errno.EIO: "the worker's disk failed (input/output error)",
}
# libraries that wrap an OSError in their own exception keep only its text
DISK_TEXTS = (
    ("no space left on device", errno.ENOSPC),
    ("storagefull", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
)


def disk_error(err: BaseException) -> int | None:
    """The errno of a disk problem anywhere in ``err``'s chain of causes, else None."""
    stack: list[BaseException | None] = [err]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRORS:
            return current.errno
        text = str(current).lower()
        for needle, code in DISK_TEXTS:
            if needle in text:
                return code
        stack += [current.__cause__, current.__context__]
    return None


def summarise(report: dict) -> dict:
    """The metrics summary a job view shows: primary metric before/after, the size and speed
    ratios, and the card's side-by-side table as formatted rows (``table``)."""
    from slimformer.card.tables import side_by_side
    from slimformer.report import CompressionReport

    evaluation = report.get("evaluation") or {}
    original, compressed = evaluation.get("original") or {}, evaluation.get("compressed") or {}
    metric = evaluation.get("primary_metric")
    return {
        "task": evaluation.get("task"),
        "metric": metric,
        "original": (original.get("metrics") or {}).get(metric),
        "compressed": (compressed.get("metrics") or {}).get(metric),
        "parameters": {
            "original": original.get("parameters"),
            "compressed": compressed.get("parameters"),
        },
        "ratios": evaluation.get("ratios"),
        "agreement": evaluation.get("agreement"),
        "base_model_commit": (report.get("base_model") or {}).get("commit"),
        # a report without an evaluation (a job cut short, a stand-in pipeline) has no table
        "table": side_by_side(CompressionReport.model_validate(report)) if evaluation else [],
    }


class _Lease:
    """Writes the heartbeat on a thread, so a long step without progress callbacks still counts as
    alive."""

    def __init__(self, store: JobStore, job_id: str, worker: str, interval: float) -> None:
        self.store, self.job_id, self.worker, self.interval = store, job_id, worker, interval
        self.cancelled = self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True
        )

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def write(self, **fields) -> None:
        state = self.store.heartbeat(self.job_id, self.worker, **fields)
        self.cancelled = self.cancelled or state == "cancel"
        self.lost = self.lost or state == "lost"

    def should_cancel(self) -> bool:
        """The job was cancelled, or taken from this worker (its lease lost): stop."""
        return self.cancelled or self.lost

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except (
                Exception
            ):  # the database may blink; the next beat retries, the reaper tolerates a few misses
                logger.warning("heartbeat failed", exc_info=True)


class _Progress:
    """A job's ``on_progress``: writes its stage, overall progress, estimated time left and the
    seconds each stage took through the lease (at once on a new stage, else at most every 0.5 s).
    """

    def __init__(self, lease: _Lease, stages: list[str], clean: Callable[[str], str]) -> None:
        self.lease, self.stages, self.clean = lease, stages, clean
        self.started = time.monotonic()
        self.stage: str | None = None
        self.stage_started = time.time()
        self.written = 0.0
        self.seconds: dict[str, float] = {}

    def report(self, stage: str, fraction: float, message: str) -> None:
        now = time.time()
        changed = stage != self.stage
        if changed and self.stage is not None:
            self.seconds[self.stage] = round(now - self.stage_started, 3)
            self.stage_started = now
        self.stage = stage
        if not changed and now - self.written < 0.5:
            return
        self.written = now
        progress = overall_progress(self.stages, stage, fraction)
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - progress) / progress if progress > 0.02 else None
        self.lease.write(
            stage=stage,
            progress=round(progress, 4),
            message=self.clean(message)[:500],
            eta_seconds=round(eta, 1) if eta is not None else None,
            stage_started_at=self.stage_started,
            stage_seconds=dict(self.seconds),
        )

    def end_stage(self) -> None:
        """Count the seconds of the stage running now (the pipeline has returned)."""
        if self.stage is not None:
            self.seconds[self.stage] = round(time.time() - self.stage_started, 3)


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        artifacts: ArtifactStore,
        send: Callable[[str, str, float | None], None],
    ) -> None:
        self.settings, self.store, self.artifacts, self.send = settings, store, artifacts, send
        self.worker = worker_name()
        # no path under these leaves the worker in a stored message
        self.roots = server_roots(
            settings.data_dir,
            settings.work_dir,
            settings.upload_dir,
            settings.broker_dir,
            settings.hf_cache_dir or settings.data_dir / "hf-cache",
            settings.resolved_artifact_dir if settings.artifact_backend == "local" else None,
            *(os.environ.get(v) for v in ("HF_HOME", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE")),
        )

    def clean(self, text: str) -> str:
        """``text`` as a job may store it: no secret, no server path."""
        return scrub_paths(redact(text), self.roots)

    def run(self, job_id: str) -> str:
        """Run one job to an end state. Returns ``succeeded``, ``failed``, ``cancelled``,
        ``retrying`` or ``skipped``."""
        token_ctx = current_job_id.set(job_id)
        try:
            job = self.store.claim(
                job_id, self.worker, stale_after=self.settings.stale_after_seconds
            )
            if job is None:
                logger.info(
                    "job %s is not ours to run (taken, finished or cancelled); skipping", job_id
                )
                return "skipped"
            logger.info(
                "running job %s (attempt %d of %d)", job_id, job["attempts"], job["max_attempts"]
            )
            started = time.monotonic()
            outcome = self._run(job)
            try:
                from workers import metrics

                m = metrics.get()
                m["jobs"].labels(outcome).inc()
                m["job_seconds"].labels(outcome).observe(time.monotonic() - started)
                for stage, seconds in (
                    self.store.get_job(job_id).get("stage_seconds") or {}
                ).items():
                    m["stage_seconds"].labels(stage).observe(float(seconds))
            except Exception:  # metrics must never change a job's outcome
                logger.debug("could not record worker metrics", exc_info=True)
            return outcome
        finally:
            current_job_id.reset(token_ctx)

    def _run(self, job: dict) -> str:
        """Run a claimed job under its lease to an end state: the pipeline, then its result
        stored; or the job cancelled, retried or failed."""
        from slimformer.errors import Cancelled

        job_id, settings = job["id"], self.settings
        hub_token = self.store.hub_token(job)
        register_secret(hub_token)
        workdir = settings.work_dir / job_id
        stages = stages_for(job["spec"])
        lease = _Lease(self.store, job_id, self.worker, settings.heartbeat_seconds)
        progress = _Progress(lease, stages, self.clean)

        with lease:
            try:
                result = self._run_pipeline(job, workdir, hub_token, lease, progress)
                return self._succeed(job_id, workdir, result, progress)
            except Cancelled:
                return self._cancelled(job_id, workdir, lease, progress.seconds)
            except Exception as err:  # noqa: BLE001 - anything else is our bug or the machine's; say what it was
                return self._failed(job, workdir, err, progress.seconds)
            finally:
                forget_secret(hub_token)

    def _run_pipeline(
        self, job: dict, workdir: Path, hub_token: str | None, lease: _Lease, progress: _Progress
    ):
        """The job's spec validated and the pipeline run; ``Cancelled`` when the job was cancelled
        or its lease lost meanwhile."""
        from slimformer.errors import Cancelled
        from slimformer.spec import JobSpec

        spec = JobSpec.model_validate(job["spec"], context={"local_files": False})
        result = self._pipeline(spec, job, workdir, hub_token, progress.report, lease.should_cancel)
        progress.end_stage()
        if lease.should_cancel():
            raise Cancelled("the job was cancelled")
        return result

    def _succeed(self, job_id: str, workdir: Path, result, progress: _Progress) -> str:
        """Store the result's files and mark the job succeeded (``skipped`` when it was taken from
        this worker meanwhile: the result is discarded)."""
        progress.report(
            "publishing" if "publishing" in progress.stages else "writing_card",
            1.0,
            "storing the artifacts",
        )
        files = self._store_files(job_id, result.folder)
        summary = summarise(result.report) | {
            "files": files,
            "published": getattr(result, "published", None),
        }
        if not self.store.finish(
            job_id,
            self.worker,
            "succeeded",
            stage="done",
            progress=1.0,
            message="finished",
            result=summary,
            stage_seconds=progress.seconds,
        ):
            logger.warning(
                "job %s was taken from this worker before it finished; result discarded", job_id
            )
            return "skipped"
        shutil.rmtree(workdir, ignore_errors=True)
        logger.info("job %s succeeded", job_id)
        return "succeeded"

    def _store_files(self, job_id: str, folder: Path) -> list[dict]:
        """The result folder published to the artifact store: its files, each with its sha256."""
        digests = {
            p.relative_to(folder).as_posix(): file_sha256(p)
            for p in folder.rglob("*")
            if p.is_file()
        }
        return [
            f | {"sha256": digests.get(f["path"])}
            for f in self.artifacts.publish_folder(f"jobs/{job_id}", folder)
        ]

    def _cancelled(self, job_id: str, workdir: Path, lease: _Lease, seconds: dict) -> str:
        """Mark the job cancelled, its partial files deleted; ``skipped`` when the lease was lost
        (the reaper took the job: it is no longer ours to touch)."""
        if lease.lost:
            logger.warning(
                "job %s: lease lost (reaped as stale); stopping without touching it", job_id
            )
            return "skipped"
        self.artifacts.delete_prefix(f"jobs/{job_id}")
        shutil.rmtree(workdir, ignore_errors=True)
        self.store.finish(
            job_id, self.worker, "cancelled", message="cancelled", stage_seconds=seconds
        )
        logger.info("job %s cancelled", job_id)
        return "cancelled"

    def _failed(self, job: dict, workdir: Path, err: Exception, seconds: dict) -> str:
        """Retry or fail the job after ``err``: disk errors and the library's transient errors are
        retried, everything else fails with a code and a message that name the problem."""
        from pydantic import ValidationError

        from slimformer.errors import SlimformerError

        job_id = job["id"]
        disk = disk_error(err)
        if disk is not None:  # before the library's own verdict: it may wrap the OSError
            logger.warning(
                "job %s: disk error %s", job_id, errno.errorcode.get(disk), exc_info=True
            )
            if disk in (errno.ENOSPC, errno.EDQUOT):  # free what this job wrote
                shutil.rmtree(workdir, ignore_errors=True)
            return self._retry(job, workdir, "worker_disk_error", DISK_ERRORS[disk], {}, seconds)
        if isinstance(err, SlimformerError):
            end = self._retry if getattr(err, "transient", False) else self._fail_job
            return end(job, workdir, err.code, err.message, err.details, seconds)
        if isinstance(err, ValidationError):
            return self._fail(job_id, workdir, "invalid_spec", str(err), {}, seconds)
        logger.exception("job %s failed with an unexpected error", job_id)
        code = "time_limit" if type(err).__name__ == "SoftTimeLimitExceeded" else "internal_error"
        message = (
            "the job ran past the time limit"
            if code == "time_limit"
            else f"internal error: {type(err).__name__}: {err}"
        )
        return self._fail(job_id, workdir, code, message, {}, seconds)

    def _retry(
        self, job: dict, workdir: Path, code: str, message: str, details: dict, seconds: dict
    ) -> str:
        """Requeue after a transient failure, with backoff, while attempts are left; else fail."""
        job_id = job["id"]
        if job["attempts"] >= job["max_attempts"]:
            return self._fail(job_id, workdir, code, message, details, seconds)
        delay = (
            self.settings.retry_backoff_seconds
            * 2 ** (job["attempts"] - 1)
            * random.uniform(0.8, 1.2)
        )
        error = {"code": code, "message": self.clean(message)[:4000]}
        if self.store.requeue(
            job_id,
            self.worker,
            delay=delay,
            error=error,
            message=f"transient failure, retrying in {delay:.0f} s: {error['message']}"[:500],
        ):
            self.send(job_id, job["queue"], delay)
        logger.warning("job %s: transient failure (%s); retry in %.0f s", job_id, code, delay)
        return "retrying"

    def _fail_job(
        self, job: dict, workdir: Path, code: str, message: str, details: dict, seconds: dict
    ) -> str:
        return self._fail(job["id"], workdir, code, message, details, seconds)

    def _fail(
        self, job_id: str, workdir: Path, code: str, message: str, details: dict, seconds: dict
    ) -> str:
        try:
            self.artifacts.delete_prefix(f"jobs/{job_id}")
        except Exception:  # a broken store must not keep the job from being marked failed
            logger.warning("job %s: could not delete its partial artifacts", job_id, exc_info=True)
        shutil.rmtree(workdir, ignore_errors=True)
        safe_details = {
            k: self.clean(v) if isinstance(v, str) else v for k, v in (details or {}).items()
        }
        self.store.finish(
            job_id,
            self.worker,
            "failed",
            error_code=code,
            error_message=self.clean(message)[:4000],
            error_details=safe_details,
            message="failed",
            stage_seconds=seconds,
        )
        logger.info("job %s failed: %s", job_id, code)
        return "failed"

    def _pipeline(self, spec, job, workdir, hub_token, on_progress, should_cancel):
        from slimformer import pipeline
        from slimformer.data import file_row_limits
        from slimformer.hub.policy import HubPolicy

        settings = self.settings
        policy = HubPolicy(
            allow_pickle=settings.allow_pickle,
            allow_remote_code=settings.allow_remote_code,
            max_model_bytes=settings.max_model_bytes,
            endpoint=settings.hf_endpoint,
            cache_dir=settings.hf_cache_dir or settings.data_dir / "hf-cache",
            allow_local_files=False,  # every id in a job is a Hub id, never a path on this machine
            ambient_token=False,  # a job without a token reads public repos, never as the worker
        )

        def resolve_upload(upload_id: str) -> Path:
            from service.store import NotFound
            from slimformer.errors import DatasetError

            gone = DatasetError(
                f"upload {upload_id} was deleted (or never belonged to this key); "
                "upload the file again and submit a new job",
                details={"upload_id": upload_id},
            )
            try:
                upload = self.store.get_upload(upload_id, owner=job["owner"])
                path = self.artifacts.fetch_file(
                    upload["path"], workdir / "uploads" / upload_id / upload["filename"]
                )
            except (NotFound, ArtifactNotFound):
                raise gone from None
            # only the rows the job uses are read: max_samples of the training file, the
            # evaluation's max_samples of an evaluation file (the pipeline asks for that second)
            train = upload_id == spec.dataset.upload_id and not resolved
            resolved.append(upload_id)
            limits.limit(path, spec.dataset.max_samples if train else spec.evaluation.max_samples)
            return path

        resolved: list[str] = []

        with file_row_limits() as limits:
            return pipeline.run(
                spec,
                workdir,
                on_progress=on_progress,
                should_cancel=should_cancel,
                out_dir=workdir / "model",
                overwrite=True,
                token=hub_token,
                resolve_upload=resolve_upload,
                job_id=job["id"],
                hub_policy=policy,
            )
