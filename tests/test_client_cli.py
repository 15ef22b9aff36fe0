"""The client commands
(`slimformer login | submit | jobs | status | watch | cancel | download | card`) against a real
`slimformer serve` (API and worker processes) pulling a tiny model from the Hub test server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest

from slimformer.cli import main
from slimformer.client import Client, ClientError
from testkit.services import ROOT, free_port, start_service_with_keys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_classifier_folder):
    """`slimformer serve` with auth on (keys for alice and bob) and the Hub test server holding
    acme/tiny."""
    svc, hub = start_service_with_keys(
        tmp_path_factory.mktemp("client-service"), tiny_classifier_folder
    )
    yield svc
    svc.kill()
    hub.stop()


@pytest.fixture
def cli(service, monkeypatch, tmp_path, capsys):
    """Runs `slimformer ...` in this process as alice; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("SLIMFORMER_SERVER", service.url)
    monkeypatch.setenv("SLIMFORMER_API_KEY", service.keys["alice"])
    monkeypatch.setenv("SLIMFORMER_CONFIG", str(tmp_path / "no-config.toml"))

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _data(folder: Path) -> tuple[Path, Path]:
    rows = ["sentence,label"] + [
        f"{w} movie number {i},{lab}"
        for i in range(24)
        for w, lab in (("great", "positive"), ("awful", "negative"))
    ]
    (folder / "data").mkdir(exist_ok=True)
    train, held_out = folder / "data" / "reviews.csv", folder / "data" / "held-out.csv"
    train.write_text("\n".join(rows) + "\n")
    held_out.write_text("\n".join(rows[:1] + rows[1:17]) + "\n")
    return train, held_out


@pytest.fixture(scope="module")
def finished(service, tmp_path_factory):
    """A job submitted with `slimformer submit SPEC.yaml --wait` in a fresh process: its id and what
    it printed."""
    folder = tmp_path_factory.mktemp("spec")
    _data(folder)
    (folder / "job.yaml").write_text(
        "model: {id: acme/tiny}\n"
        "dataset: {path: data/reviews.csv, eval_path: data/held-out.csv, text_column: sentence}\n"
        "method: prune\n"
        "prune: {heads: 0.5, ffn: 0.3}\n"
        "evaluation: {latency: false}\n"
    )
    env = dict(
        service.env,
        SLIMFORMER_SERVER=service.url,
        SLIMFORMER_API_KEY=service.keys["alice"],
        SLIMFORMER_CONFIG=str(folder / "none.toml"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "slimformer.cli", "submit", str(folder / "job.yaml"), "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr + service.logs()[-3000:]
    return {"id": done.stdout.splitlines()[0].strip(), "stdout": done.stdout, "stderr": done.stderr}


# -- submit ----------------------------------------------------------------------------------------
def test_submit_uploads_the_spec_files_and_waits_until_it_succeeds(service, finished):
    job_id = finished["id"]
    uuid.UUID(job_id)
    err = finished["stderr"]
    assert "uploaded reviews.csv: 48 rows, columns sentence, label" in err
    assert "uploaded held-out.csv: 16 rows" in err
    assert f"job {job_id} succeeded" in err and "accuracy" in err and "parameters" in err
    dataset = service.job(job_id)["spec"]["dataset"]
    assert dataset["upload_id"] and dataset["eval_upload_id"] and dataset["path"] is None
    assert dataset["eval_path"] is None and dataset["text_column"] == "sentence"
    # the progress went to stderr, the id alone to stdout (for JOB=$(slimformer submit ...))
    assert finished["stdout"].strip() == job_id


def test_submit_from_flags_prints_the_id_and_json(cli, service, tmp_path):
    train, _ = _data(tmp_path)
    code, out, err = cli(
        "submit",
        "--model",
        "acme/tiny",
        "--data",
        str(train),
        "--heads",
        "0.5",
        "--no-latency",
        "--keep-first-layers",
        "2",
        "--reconstruction",
        "on",
        "--bias-compensation",
        "off",
        "--layers",
        "1",
        "--onnx-int8",
        "--json",
    )
    assert code == 0, err
    view = json.loads(out)
    assert view["spec"]["prune"]["heads"] == 0.5 and view["spec"]["evaluation"]["latency"] is False
    prune = view["spec"]["prune"]
    assert (prune["keep_first_layers"], prune["reconstruction"]) == (2, True)
    assert (prune["bias_compensation"], prune["layers"]) == (False, 1)
    assert prune["keep_last_layers"] is None and view["spec"]["evaluation"]["onnx_int8"]
    assert view["spec"]["dataset"]["upload_id"] and view["status"] in ("queued", "running")
    code, out, err = cli(
        "cancel", view["id"]
    )  # the worker is free to take it at once: either way it stops
    assert code == 0 and view["id"] in err
    code, out, err = cli("watch", view["id"])
    assert code in (0, 1)
    if code == 1:
        assert err.strip().splitlines()[-1] == f"error: job {view['id']} was cancelled"


def test_a_failing_job_exits_1_with_its_error(cli, tmp_path):
    train, _ = _data(tmp_path)
    code, out, err = cli(
        "submit", "--model", "acme/no-such-model", "--data", str(train), "--heads", "0.5", "--wait"
    )
    assert code == 1
    job_id = out.strip()
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: job {job_id} failed: ") and "acme/no-such-model" in last


def test_invalid_specs_are_one_line_from_the_api(cli, tmp_path):
    code, out, err = cli(
        "submit", "--model", "acme/tiny", "--hub-dataset", "glue", "--method", "prune"
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "needs something to remove" in err
    code, out, err = cli(
        "submit",
        "--model",
        "acme/tiny",
        "--hub-dataset",
        "glue",
        "--heads",
        "0.5",
        "--layout",
        "per_layer",
        "--targets",
        "transformers,vllm",
    )
    assert code == 2 and "vllm, which cannot read the per_layer layout" in err
    code, out, err = cli("submit", "--heads", "0.5")
    assert code == 2 and "give a spec file, or --model and a data source" in err
    code, out, err = cli(
        "submit", "--model", "acme/tiny", "--data", str(tmp_path / "missing.csv"), "--heads", "0.5"
    )
    assert code == 2 and "missing.csv does not exist" in err
    (tmp_path / "notes.docx").write_text("hello\n")
    code, out, err = cli(
        "submit", "--model", "acme/tiny", "--data", str(tmp_path / "notes.docx"), "--heads", "0.5"
    )
    assert code == 2 and "upload a .csv, .tsv, .json, .jsonl, .parquet or .txt file" in err


class _LoseFirstAnswer(httpx.BaseTransport):
    """Sends each request to the server, then drops the first answer to POST /v1/jobs as if the
    network had."""

    def __init__(self) -> None:
        self.inner, self.dropped, self.keys = httpx.HTTPTransport(), 0, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.keys.append(request.headers.get("idempotency-key"))
            if not self.dropped:
                self.dropped += 1
                response.read()
                raise httpx.ReadError("connection reset", request=request)
        return response


def test_a_retried_submit_makes_one_job(service, tmp_path):
    transport = _LoseFirstAnswer()
    before = len(service.client().get("/v1/jobs", params={"limit": 100}).json()["items"])
    spec = {
        "model": {"id": "acme/no-such-model"},
        "dataset": {"hub_id": "glue"},
        "prune": {"heads": 0.5},
    }
    with Client(service.url, api_key=service.keys["alice"], transport=transport) as client:
        view = client.submit(spec)
    assert (
        transport.dropped == 1
        and len(transport.keys) == 2
        and transport.keys[0] == transport.keys[1]
    )
    items = service.client().get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert len(items) == before + 1 and items[0]["id"] == view["id"]
    service.wait(view["id"])


# -- reading ---------------------------------------------------------------------------------------
def test_jobs_table_filter_and_json(cli, finished):
    code, out, err = cli("jobs")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == ["ID", "STATUS", "STAGE", "PROGRESS", "MODEL", "METHOD", "CREATED"]
    line = next(row for row in out.splitlines() if row.startswith(finished["id"]))
    assert "succeeded" in line and "100%" in line and "acme/tiny" in line and "prune" in line
    code, out, err = cli("jobs", "--status", "succeeded", "--json")
    listing = json.loads(out)
    assert listing["items"] and {j["status"] for j in listing["items"]} == {"succeeded"}
    code, out, err = cli("jobs", "--status", "queued", "--limit", "1", "--json")
    assert code == 0 and all(j["status"] == "queued" for j in json.loads(out)["items"])
    code, out, err = cli("jobs", "--limit", "500")
    assert code == 2 and "from 1 to 100" in err


def test_status_and_json(cli, finished):
    code, out, err = cli("status", finished["id"])
    assert code == 0
    assert "succeeded" in out and "acme/tiny" in out and "accuracy" in out and "scoring" in out
    code, out, err = cli("status", finished["id"], "--json")
    view = json.loads(out)
    assert (
        view["id"] == finished["id"] and view["status"] == "succeeded" and view["progress"] == 1.0
    )


def test_watch_of_a_finished_job_and_its_json_lines(cli, finished):
    code, out, err = cli("watch", finished["id"])
    assert code == 0 and f"job {finished['id']} succeeded" in err
    code, out, err = cli("watch", finished["id"], "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines[-1]["status"] == "succeeded"


def test_follow_falls_back_to_polling_when_the_stream_drops(service, finished):
    class NoStream(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner, self.paths = httpx.HTTPTransport(), []

        def handle_request(self, request):
            self.paths.append(request.url.path)
            if request.url.path.endswith("/events"):
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            return self.inner.handle_request(request)

    transport = NoStream()
    with Client(service.url, api_key=service.keys["alice"], transport=transport) as client:
        views = list(client.follow(finished["id"]))
    assert views[-1]["status"] == "succeeded"
    assert transport.paths[-1] == f"/v1/jobs/{finished['id']}"


def test_card_prints_the_markdown(cli, finished):
    code, out, err = cli("card", finished["id"])
    assert (
        code == 0
        and out.startswith("---")
        and "base_model: acme/tiny" in out
        and "head_importance.png" in out
    )
    code, out, err = cli("card", finished["id"], "--json")
    assert json.loads(out)["card"].startswith("---")
    code, out, err = cli("card", finished["id"], "--html")
    assert code == 0 and "<table>" in out


# -- download --------------------------------------------------------------------------------------
def test_download_verifies_sizes_and_resumes_partial_files(cli, service, finished, tmp_path):
    job_id = finished["id"]
    listing = {
        f["path"]: f["size"]
        for f in service.client().get(f"/v1/jobs/{job_id}/artifacts").json()["files"]
    }
    out = tmp_path / "model"
    code, _, err = cli("download", job_id, "--out", str(out))
    assert (
        code == 0
        and f"downloaded {len(listing)} files" in err
        and "sizes and SHA-256 verified" in err
    )
    assert {
        p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()
    } == listing
    assert {"config.json", "model.safetensors", "README.md", "head_importance.png"} <= set(listing)
    weights = (out / "model.safetensors").read_bytes()

    # an interrupted download: half the weights on disk, the tokenizer missing
    half = len(weights) // 2
    with (out / "model.safetensors").open("r+b") as fh:
        fh.truncate(half)
    (out / "tokenizer.json").unlink()
    code, text, err = cli("download", job_id, "--out", str(out), "--json")
    assert code == 0
    files = {f["path"]: f for f in json.loads(text)["files"]}
    assert files["model.safetensors"] == {
        "path": "model.safetensors",
        "size": len(weights),
        "fetched": len(weights) - half,
        "resumed_from": half,
    }
    assert files["tokenizer.json"]["fetched"] == listing["tokenizer.json"]
    assert all(
        f["fetched"] == 0
        for p, f in files.items()
        if p not in ("model.safetensors", "tokenizer.json")
    )
    assert (
        out / "model.safetensors"
    ).read_bytes() == weights  # the server's Range answer was the right bytes

    # a file longer than the server's is not a prefix of it: fetched again whole
    (out / "config.json").write_bytes((out / "config.json").read_bytes() + b"garbage")
    code, text, err = cli("download", job_id, "--out", str(out))
    assert code == 0 and (out / "config.json").stat().st_size == listing["config.json"]

    # the same size but other bytes: the listing's SHA-256 catches it and the file is fetched again
    config = (out / "config.json").read_bytes()
    (out / "config.json").write_bytes(config.replace(b"{", b"[", 1))
    code, text, err = cli("download", job_id, "--out", str(out))
    assert code == 0 and (out / "config.json").read_bytes() == config


def test_download_as_one_archive(cli, finished, tmp_path):
    code, out, err = cli("download", finished["id"], "--tar", "--out", str(tmp_path))
    assert code == 0
    with tarfile.open(tmp_path / f"{finished['id']}.tar.gz") as tar:
        names = tar.getnames()
    assert f"{finished['id']}/model.safetensors" in names and f"{finished['id']}/README.md" in names


def test_download_of_an_unfinished_job_is_refused(cli, service):
    view = service.submit(
        {
            "model": {"id": "acme/no-such-model"},
            "dataset": {"hub_id": "glue"},
            "prune": {"heads": 0.5},
        }
    )
    service.wait(view["id"])
    code, out, err = cli("download", view["id"])
    assert (
        code == 2
        and err == f"error: job {view['id']} is failed; artifacts exist only once it succeeded\n"
    )


# -- errors and configuration ----------------------------------------------------------------------
def test_unknown_job_is_one_line_and_exit_2(cli):
    for command in ("status", "watch", "cancel", "card", "download"):
        code, out, err = cli(command, "no-such-job")
        assert code == 2 and err == "error: no job no-such-job\n", (command, err)


def test_cancel_of_a_finished_job_says_why(cli, finished):
    code, out, err = cli("cancel", finished["id"])
    assert code == 2 and err == f"error: job {finished['id']} already ended with status succeeded\n"


def test_server_down_is_a_clear_message(cli):
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (
        ["jobs"],
        ["status", "x"],
        ["submit", "--model", "m", "--hub-dataset", "d", "--heads", "0.5"],
    ):
        code, out, err = cli(*argv, "--server", url)
        assert (
            code == 2
            and err == f"error: cannot reach the server at {url}: is `slimformer serve` running?\n"
        )


def test_debug_shows_the_traceback(cli):
    with pytest.raises(ClientError, match="no job nope"):
        cli("status", "nope", "--debug")
    with pytest.raises(ClientError, match="no job nope"):
        cli("--debug", "status", "nope")


def test_keys_decide_what_one_sees(cli, service, finished, monkeypatch):
    monkeypatch.delenv("SLIMFORMER_API_KEY")
    code, out, err = cli("jobs")
    assert (
        code == 2
        and "missing API key" in err
        and "slimformer login" in err
        and err.count("\n") == 1
    )
    code, out, err = cli("status", finished["id"], "--api-key", service.keys["bob"])
    assert code == 2 and err == f"error: no job {finished['id']}\n"
    code, out, err = cli("jobs", "--json", "--api-key", service.keys["bob"])
    assert code == 0 and finished["id"] not in out


def test_login_writes_a_private_config_that_later_commands_use(
    cli, service, finished, monkeypatch, tmp_path
):
    config = tmp_path / "conf" / "config.toml"
    monkeypatch.setenv("SLIMFORMER_CONFIG", str(config))
    monkeypatch.delenv("SLIMFORMER_API_KEY")
    monkeypatch.delenv("SLIMFORMER_SERVER")
    code, out, err = cli("login", "--server", service.url, "--api-key", "sf_wrong")
    assert code == 2 and "refused the key" in err and not config.exists()
    code, out, err = cli("login", "--server", service.url, "--api-key", service.keys["alice"])
    assert code == 0 and str(config) in err
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert service.keys["alice"] in config.read_text()
    code, out, err = cli(
        "status", finished["id"], "--json"
    )  # no flag, no environment: the config file
    assert code == 0 and json.loads(out)["id"] == finished["id"]
    monkeypatch.setenv("SLIMFORMER_API_KEY", service.keys["bob"])  # the environment beats the file
    code, out, err = cli("status", finished["id"])
    assert code == 2
    code, out, err = cli(
        "status", finished["id"], "--api-key", service.keys["alice"]
    )  # and the flag beats both
    assert code == 0


def test_client_commands_do_not_import_torch(service):
    probe = (
        "import sys; from slimformer.cli import main; code = main(['jobs', '--json']); "
        "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
        "print(heavy); sys.exit(code)"
    )
    env = dict(os.environ, SLIMFORMER_SERVER=service.url, SLIMFORMER_API_KEY=service.keys["alice"])
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
