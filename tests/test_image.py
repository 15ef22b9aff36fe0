"""The container image builds and serves: podman builds it (no Docker engine needed), then the API runs from
the image's filesystem (podman mount + chroot, since `podman run` needs cgroups these machines lack) against
the real Postgres and Redis, and answers /healthz and /readyz.

Slow the first time (a base image from the Debian mirror, then every dependency from PyPI); later runs reuse
podman's layer cache and take about a minute.
"""

from __future__ import annotations

import glob
import json
import os
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
    pytest.mark.skipif(shutil.which("podman") is None,
                       reason="podman is not installed (apt-get install podman debootstrap builds the image here)"),
]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-4000:]}")
    return result


def local_torch_wheels() -> list[Path]:
    """The exact torch build where pip finds it on this machine (PIP_FIND_LINKS), so the build downloads none."""
    folders = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p and not p.startswith("http")]
    found = []
    for folder in folders + ["/opt/wheels"]:
        found += [Path(p) for p in glob.glob(str(Path(folder) / TORCH_WHEEL))]
    return found[:1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_context(tmp_path: Path) -> Path:
    """What `podman build .` in the repository sends, with the torch wheel linked in (the repo stays clean)."""
    context = tmp_path / "context"
    context.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for package in ("slimformer", "service", "workers"):
        shutil.copytree(ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
        result = subprocess.run([str(ROOT / "deploy/image/make-base.sh"), BASE_IMAGE], capture_output=True,
                                text=True, timeout=1800)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    context = build_context(tmp_path_factory.mktemp("image"))
    args = ["build", "--isolation=chroot", "--network", "host", "--format", "docker",
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", IMAGE]
    if CA_BUNDLE.is_file():  # pip inside the build trusts what this machine trusts (an intercepting proxy)
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
    """Run the image's entrypoint as its non-root user in the image's filesystem, with /proc and /dev
    bound in a private mount namespace (gone when the process exits)."""
    config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    image_env = dict(item.split("=", 1) for item in config["Env"])
    script = (f"mount --bind /proc {rootfs}/proc && mount --rbind /dev {rootfs}/dev && "
              f'cd {rootfs}/data && exec chroot --userspec={config["User"]} {rootfs} "$@"')
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                             *config["Entrypoint"], *args],
                            env={**image_env, **env, "HOME": "/data"}, **kwargs)


def run_in_image(rootfs: Path, args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    process = in_image(rootfs, args, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{args} failed:\n{output[-4000:]}"
    return output


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def production_env():
    """A fresh Postgres database and the local Redis, as the image's production settings; else embedded mode."""
    try:
        import psycopg
        import redis

        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
        admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True, connect_timeout=3)
    except Exception:
        yield {"SLIMFORMER_MODE": "local", "SLIMFORMER_HOST": "127.0.0.1"}
        return
    database = f"slimformer_image_{uuid.uuid4().hex[:8]}"
    with admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        yield {"SLIMFORMER_MODE": "production", "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{database}",
               "REDIS_URL": "redis://127.0.0.1:6379/15", "SLIMFORMER_API_KEY_PEPPER": "image-test-pepper-0123456789",
               "SLIMFORMER_TOKEN_ENCRYPTION_KEY": "image-test-token-key-0123456789", "SLIMFORMER_HOST": "127.0.0.1"}
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_image_is_non_root_with_a_healthcheck_and_roles(image):
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"].split(":")[0] not in ("", "0", "root")
    healthcheck = config.get("Healthcheck") or inspected.get("Healthcheck")  # podman lists it beside Config
    assert healthcheck["Test"] == ["CMD", "slimformer-entrypoint", "healthcheck"]
    assert config["Entrypoint"] == ["slimformer-entrypoint"] and config["Cmd"] == ["api"]
    assert "SLIMFORMER_LOG_FORMAT=json" in config["Env"]


def test_image_migrates_then_serves_healthz_and_readyz(rootfs, production_env):
    port = free_port()
    env = {**production_env, "SLIMFORMER_PORT": str(port)}
    if env["SLIMFORMER_MODE"] == "production":
        assert "job store at revision" in run_in_image(rootfs, ["migrate"], env)
        run_in_image(rootfs, ["wait-migrated"], env)
    server = in_image(rootfs, ["api"], env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()[0][-4000:]
        assert status == 200 and body["status"] == "ok"
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert body["checks"] == {"store": "ok", "broker": "ok", "artifacts": "ok"}
        run_in_image(rootfs, ["healthcheck"], env, timeout=30)  # what HEALTHCHECK runs
    finally:
        server.terminate()
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines and all("level" in json.loads(line) for line in lines)  # JSON logs, as SLIMFORMER_LOG_FORMAT says
