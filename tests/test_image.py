"""The container image builds and serves: podman builds it (no Docker engine needed), then the API
runs from the image's filesystem (podman mount + chroot, since `podman run` needs cgroups these
machines lack) against the real Postgres and Redis, and answers /healthz and /readyz.

Slow the first time (a base image from the Debian mirror, then every dependency from PyPI); later
runs reuse podman's layer cache and take about a minute.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("SLIMFORMER_TEST_BASE_IMAGE", "localhost/slimformer-base:bookworm")
IMAGE = "localhost/slimformer:test"
TORCH_WHEEL = "torch-2.13.0+cpu-*.whl"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        shutil.which("podman") is None,
        reason="podman is not installed (apt-get install podman debootstrap builds the image here)",
    ),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


def local_torch_wheels() -> list[Path]:
    """The exact torch build where pip finds it on this machine (PIP_FIND_LINKS), so the build
    downloads none."""
    folders = [
        p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p and not p.startswith("http")
    ]
    found = []
    for folder in folders + ["/opt/wheels"]:
        found += [Path(p) for p in glob.glob(str(Path(folder) / TORCH_WHEEL))]
    return found[:1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_context(tmp_path: Path) -> Path:
    """What `podman build .` in the repository sends, with the torch wheel linked in (the repo stays
    clean)."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for package in ("slimformer", "service", "workers"):
        shutil.copytree(
            ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    (context / "deploy/image/wheels").mkdir(parents=True)
    shutil.copy2(ROOT / "deploy/image/entrypoint.sh", context / "deploy/image/entrypoint.sh")
    for wheel in local_torch_wheels():
        target = context / "deploy/image/wheels" / wheel.name
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
    return context


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE_IMAGE}, and building one needs root and debootstrap")
        result = subprocess.run(
            [str(ROOT / "deploy/image/make-base.sh"), BASE_IMAGE],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    context = build_context(tmp_path_factory.mktemp("image"))
    args = [
        "build",
        "--isolation=chroot",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        IMAGE,
    ]
    if (
        CA_BUNDLE.is_file()
    ):  # pip inside the build trusts what this machine trusts (an intercepting proxy)
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    podman(*args, str(context), timeout=3000)
    return IMAGE


@pytest.fixture
def rootfs(image):
    """The image's filesystem, writable, as a container that never runs."""
    name = f"slimformer-test-{uuid.uuid4().hex[:8]}"
    podman("create", "--name", name, image)
    try:
        yield Path(podman("mount", name).stdout.strip())
    finally:
        podman("umount", name, check=False)
        podman("rm", "-f", name, check=False)


def in_image(rootfs: Path, args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen:
    """Run the image's entrypoint as its non-root user in the image's filesystem, with /proc and
    /dev bound in a private mount namespace (gone when the process exits)."""
    config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    image_env = dict(item.split("=", 1) for item in config["Env"])
    script = (
        f"mount --bind /proc {rootfs}/proc && mount --rbind /dev {rootfs}/dev && "
        f'cd {rootfs}/data && exec chroot --userspec={config["User"]} {rootfs} "$@"'
    )
    return subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *config["Entrypoint"],
            *args,
        ],
        env={**image_env, **env, "HOME": "/data"},
        **kwargs,
    )


def run_in_image(rootfs: Path, args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    process = in_image(rootfs, args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output, errors = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{args} failed:\n{output[-3000:]}\n{errors[-3000:]}"
    return output


def stop(process: subprocess.Popen) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def request(
    url: str,
    key: str | None = None,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if data is not None:
        headers["Content-Type"] = content_type
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=10
        ) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def multipart(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture
def production_env():
    """A fresh Postgres database and the local Redis, as the image's production settings; else
    embedded mode."""
    try:
        import psycopg
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
        admin = psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3
        )
    except Exception:
        yield {"SLIMFORMER_MODE": "local", "SLIMFORMER_HOST": "127.0.0.1"}
        return
    database = f"slimformer_image_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f"CREATE DATABASE {database}")
    # an empty Redis database: another test's worker on the same database would take this test's job
    redis_db = next(
        (
            db
            for db in (15, *random.sample(range(1, 15), 14))
            if redis.Redis(host="127.0.0.1", port=6379, db=db).dbsize() == 0
        ),
        15,
    )
    broker = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    broker.flushdb()
    try:
        yield {
            "SLIMFORMER_MODE": "production",
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
            "SLIMFORMER_API_KEY_PEPPER": "image-test-pepper-0123456789",
            "SLIMFORMER_TOKEN_ENCRYPTION_KEY": "image-test-token-key-0123456789",
            "SLIMFORMER_HOST": "127.0.0.1",
        }
    finally:
        broker.flushdb()
        with psycopg.connect(
            "postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True
        ) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_image_is_non_root_with_a_healthcheck_and_roles(image):
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"].split(":")[0] not in ("", "0", "root")
    healthcheck = config.get("Healthcheck") or inspected.get(
        "Healthcheck"
    )  # podman lists it beside Config
    assert healthcheck["Test"] == ["CMD", "slimformer-entrypoint", "healthcheck"]
    assert config["Entrypoint"] == ["slimformer-entrypoint"] and config["Cmd"] == ["api"]
    assert "SLIMFORMER_LOG_FORMAT=json" in config["Env"]


def wait_for_api(server: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the API from the image did not answer:\n{stop(server)[-4000:]}")


def test_image_migrates_serves_and_its_worker_runs_a_job(
    rootfs, production_env, tiny_classifier_folder, labelled_csv, tmp_path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**production_env, "SLIMFORMER_PORT": str(port)}
    production = env["SLIMFORMER_MODE"] == "production"
    key = None
    if production:
        assert "job store at revision" in run_in_image(rootfs, ["migrate"], env)
        run_in_image(rootfs, ["wait-migrated"], env)
        key = run_in_image(
            rootfs, ["slimformer", "keys", "create", "--name", "image-test"], env
        ).strip()
    server = in_image(
        rootfs, ["api"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    worker = None
    try:
        wait_for_api(server, url)
        status, body = request(url + "/healthz")
        assert status == 200 and body["status"] == "ok"
        status, body = request(url + "/readyz")
        assert status == 200, body
        assert body["checks"] == {
            "store": "ok",
            "broker": "ok",
            "artifacts": "ok",
            "data_dir": "ok",
        }
        run_in_image(rootfs, ["healthcheck"], env, timeout=30)  # what HEALTHCHECK runs
        if not production:
            return
        # the same image as a worker: a real job, its model from the Hub test server on this machine
        from testkit.hub_server import HubServer

        hub = HubServer().start()
        try:
            hub.add_repo("acme/tiny", tiny_classifier_folder)
            metrics_port = free_port()
            worker_log = (tmp_path / "worker.log").open("w")
            worker = in_image(
                rootfs,
                ["worker", "--hostname", "image@%h"],
                {
                    **env,
                    "HF_ENDPOINT": hub.url,
                    "HF_HUB_DISABLE_XET": "1",
                    "OMP_NUM_THREADS": "1",
                    "SLIMFORMER_WORKER_QUEUES": "cpu",
                    "SLIMFORMER_WORKER_METRICS_PORT": str(metrics_port),
                },
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                text=True,
            )

            def worker_output() -> str:
                worker_log.flush()
                return (tmp_path / "worker.log").read_text(errors="replace")

            status, upload = request(
                url + "/v1/datasets", key, *multipart("reviews.csv", labelled_csv.read_bytes())
            )
            assert status == 201, upload
            spec = {
                "model": {"id": "acme/tiny"},
                "dataset": {"upload_id": upload["upload_id"]},
                "method": "prune",
                "prune": {"heads": 0.5, "ffn": 0.3},
                "evaluation": {"latency": False},
            }
            status, job = request(url + "/v1/jobs", key, json.dumps(spec).encode())
            assert status == 202, job
            deadline = time.monotonic() + 300
            while (
                job["status"] not in ("succeeded", "failed", "cancelled")
                and time.monotonic() < deadline
            ):
                assert worker.poll() is None, worker_output()[-6000:]
                time.sleep(1)
                job = request(f"{url}/v1/jobs/{job['id']}", key)[1]
            if job["status"] != "succeeded":
                import redis

                broker = redis.Redis.from_url(env["REDIS_URL"])
                raise AssertionError(
                    f"{job}\nbroker keys {broker.keys('*')}, cpu list {broker.llen('cpu')}\n"
                    f"{worker_output()[-3000:]}\nAPI:\n{stop(server)[-5000:]}"
                )
            status, listing = request(f"{url}/v1/jobs/{job['id']}/artifacts", key)
            assert status == 200 and "config.json" in {f["path"] for f in listing["files"]}
            metrics = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
            assert (
                'slimformer_worker_jobs_total{outcome="succeeded"} 1.0' in metrics
            )  # what Prometheus scrapes
        finally:
            hub.stop()
        stop(worker)
        worker = None
        worker_lines = [
            json.loads(line) for line in worker_output().splitlines() if line.startswith("{")
        ]
        assert any(
            line.get("job_id") == job["id"] for line in worker_lines
        )  # JSON logs carry the job id
    finally:
        if worker is not None:
            stop(worker)
        api_output = stop(server)
    lines = [line for line in api_output.splitlines() if line.startswith("{")]
    assert lines and all(
        "level" in json.loads(line) for line in lines
    )  # JSON logs, as SLIMFORMER_LOG_FORMAT says
