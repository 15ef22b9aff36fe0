"""The web dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a
real `slimformer serve` pulling a tiny model from the Hub test server. Screenshots land in
test-artifacts/dashboard/."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import httpx
import pytest

from testkit.services import ROOT, start_service_with_keys

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "test-artifacts" / "dashboard"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason="Debian's chromium is not installed at /usr/bin/chromium "
        "(apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_classifier_folder):
    """`slimformer serve` with auth on (keys for alice and bob) and the Hub test server holding
    acme/tiny."""
    svc, hub = start_service_with_keys(
        tmp_path_factory.mktemp("dashboard-service"), tiny_classifier_folder
    )
    svc.hub = hub
    yield svc
    svc.kill()
    hub.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.problems = []
    page.on("pageerror", lambda err: page.problems.append(f"page error: {err}"))
    page.on(
        "console",
        lambda msg: (
            page.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error"
            and not any(f"status of {s}" in msg.text for s in (401, 404, 422))
            else None
        ),
    )
    yield page
    context.close()


def _csv(folder: Path) -> Path:
    rows = ["sentence,label"] + [
        f"{w} movie number {i},{lab}"
        for i in range(24)
        for w, lab in (("great", "positive"), ("awful", "negative"))
    ]
    path = folder / "reviews.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_submit_watch_inspect_and_download_a_job(service, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(service.url + "/")
    expect(page.locator("#banner")).to_contain_text(
        "missing API key"
    )  # no key yet: the page asks for one
    page.fill("#key-input", service.keys["alice"])
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-state")).to_have_text(f"key …{service.keys['alice'][-4:]}")
    expect(page.locator("#banner")).to_be_hidden()

    page.click("nav >> text=New job")
    page.fill("input[name='model.id']", "acme/tiny")
    page.set_input_files("#train-file", str(_csv(tmp_path)))
    page.fill("input[name='dataset.text_column']", "sentence")
    page.fill("input[name='prune.heads']", "1.5")
    page.fill("input[name='prune.ffn']", "0.3")
    page.uncheck("input[name='evaluation.latency']")
    page.click("#submit-button")
    # the API's own message, next to the field it is about
    message = page.locator("p.field-error[data-for='prune.heads']")
    expect(message).to_contain_text("less than 1")
    expect(page.locator("input[name='prune.heads']")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#form-error")).to_contain_text("prune.heads")
    expect(page.locator("#upload-info")).to_contain_text(
        "reviews.csv: 48 rows; columns sentence, label"
    )
    page.screenshot(path=SHOTS / "1-submit-validation.png", full_page=True)

    page.fill("input[name='prune.heads']", "0.5")
    page.click("#submit-button")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    spec = service.job(job_id)["spec"]
    assert (
        spec["prune"]["heads"] == 0.5
        and spec["prune"]["ffn"] == 0.3
        and spec["dataset"]["upload_id"]
    )
    assert spec["evaluation"]["latency"] is False and spec["dataset"]["text_column"] == "sentence"

    # record every value the progress bar shows, then wait for 100%
    page.evaluate("""() => {
        const bar = document.getElementById('progress');
        window.seen = [bar.getAttribute('aria-valuenow')];
        new MutationObserver(() => window.seen.push(bar.getAttribute('aria-valuenow')))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""")
    page.wait_for_function(
        "() => Number(document.getElementById('progress').getAttribute('aria-valuenow')) > 0",
        timeout=300_000,
    )
    page.screenshot(path=SHOTS / "2-job-running.png", full_page=True)
    page.wait_for_function(
        "() => document.getElementById('progress').getAttribute('aria-valuenow') === '100'",
        timeout=300_000,
    )
    expect(page.locator("#status")).to_have_text("succeeded")
    seen = [int(v) for v in page.evaluate("window.seen")]
    assert seen[-1] == 100 and len(set(seen)) >= 2, seen

    expect(page.locator("#timeline li.done[data-stage='scoring']")).to_be_visible()
    expect(page.locator("#timeline li.done[data-stage='evaluating']")).to_be_visible()
    page.wait_for_function(
        "() => document.getElementById('heatmap').naturalWidth > 100", timeout=30_000
    )
    assert page.locator("#heatmap").get_attribute("src").startswith("blob:")
    rows = page.locator("#metrics tbody tr")
    expect(rows.first).to_be_visible()
    table = {
        rows.nth(i).locator("th").inner_text(): [
            c.inner_text() for c in rows.nth(i).locator("td").all()
        ]
        for i in range(rows.count())
    }
    sizes = {"Parameters", "Non-embedding parameters", "MACs per sequence", "Size on disk"}
    assert {"Accuracy"} | sizes <= set(table)
    original, compressed = (int(v.replace(",", "")) for v in table["Parameters"][:2])
    assert compressed < original
    assert table["Accuracy"][0].endswith("%") and table["Accuracy"][2].endswith(" pt")
    # the page shows the rows the API serves, formatted as the card formats them: a size's change
    # is a signed percentage, not a share of the original
    served = service.job(job_id)["table"]
    assert table == {r["name"]: [r["original"], r["compressed"], r["change"]] for r in served}
    for name in ("Parameters", "Non-embedding parameters"):  # both shares removed
        assert re.fullmatch(r"-\d+\.\d%", table[name][2]), table[name]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#card img')].some(i => i.naturalWidth > 100)"
    )
    expect(page.locator("#card table").first).to_be_visible()
    page.screenshot(path=SHOTS / "3-job-succeeded.png", full_page=True)

    with page.expect_download() as download:
        page.click("#download-tar")
    archive = tmp_path / "model.tar.gz"
    download.value.save_as(archive)
    assert download.value.suggested_filename == f"{job_id}.tar.gz"
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {f"{job_id}/model.safetensors", f"{job_id}/config.json", f"{job_id}/README.md"} <= names
    with page.expect_download() as download:
        page.click("#files button[data-path='config.json']")
    download.value.save_as(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bert"

    page.goto(service.url + "/")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row.locator(".bar")).to_have_attribute("aria-valuenow", "100")
    expect(row.locator(".model")).to_have_text("acme/tiny")
    page.screenshot(path=SHOTS / "4-jobs.png", full_page=True)
    page.click("#filters button[data-status='failed']")
    expect(page).to_have_url(service.url + "/?status=failed")
    expect(row).to_have_count(0)
    page.click("#filters button[data-status='succeeded']")
    expect(row).to_have_count(1)
    assert not page.problems, "\n".join(page.problems)


def test_live_progress_in_the_list_and_cancel_on_the_job_page(service, page, tmp_path):
    from playwright.sync_api import expect

    page.add_init_script(
        f"sessionStorage.setItem('slimformer.apiKey', {json.dumps(service.keys['alice'])})"
    )
    upload = service.upload(_csv(tmp_path))
    view = service.submit(
        {
            "model": {"id": "acme/tiny"},
            "dataset": {"upload_id": upload["upload_id"]},
            "method": "distill",
            "distill": {"student": {"layers": 1}, "epochs": 100},
            "evaluation": {"latency": False},
        }
    )
    page.goto(service.url + "/")
    row = page.locator(f"tr[data-job-id='{view['id']}']")
    expect(row.locator(".badge")).to_have_text("running", timeout=120_000)
    page.wait_for_function(
        f"""() => Number(document.querySelector("tr[data-job-id='{view["id"]}'] .bar")
                                .getAttribute('aria-valuenow')) > 0""",
        timeout=120_000,
    )
    expect(row.locator(".label")).to_contain_text("%")
    page.screenshot(path=SHOTS / "5-jobs-live.png", full_page=True)
    row.locator("a").click()
    page.wait_for_url(f"**/jobs/{view['id']}")
    expect(page.locator("#cancel")).to_be_visible()
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=60_000)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#download-tar")).to_be_hidden()
    page.screenshot(path=SHOTS / "6-job-cancelled.png", full_page=True)
    assert not page.problems, "\n".join(page.problems)


def test_no_page_or_asset_shows_another_keys_jobs(service, page):
    from playwright.sync_api import expect

    alice_job = service.submit(
        {
            "model": {"id": "acme/no-such-model"},
            "dataset": {"hub_id": "glue"},
            "prune": {"heads": 0.5},
        }
    )
    service.wait(alice_job["id"])
    # the HTML shells and assets, fetched without a key, hold no job data
    for path in (
        "/",
        "/submit",
        "/static/common.js",
        "/static/jobs.js",
        "/static/job.js",
        "/static/submit.js",
        "/static/app.css",
    ):
        response = httpx.get(service.url + path)
        assert response.status_code == 200, path
        assert alice_job["id"] not in response.text and "no-such-model" not in response.text, path
    shell = httpx.get(f"{service.url}/jobs/{alice_job['id']}")
    assert "no-such-model" not in shell.text and "Content-Security-Policy" in shell.headers
    assert httpx.get(service.url + "/static/..%2Fapp.py").status_code == 404

    page.add_init_script(
        f"sessionStorage.setItem('slimformer.apiKey', {json.dumps(service.keys['bob'])})"
    )
    page.goto(service.url + "/")
    expect(page.locator("#jobs-empty")).to_be_visible()
    assert alice_job["id"] not in page.content()
    page.goto(f"{service.url}/jobs/{alice_job['id']}")
    expect(page.locator("#banner")).to_have_text(f"no job {alice_job['id']}")
    assert "no-such-model" not in page.content()
    page.screenshot(path=SHOTS / "7-other-key.png", full_page=True)


def test_the_form_and_the_timeline_come_from_the_spec_facts(service, page):
    """No copy of the spec in the pages: the choices, ranges, accepted files and stages are the
    ones GET /v1/spec/facts reads from slimformer/spec/."""
    from playwright.sync_api import expect

    from slimformer.spec import STAGE_TABLE, UPLOAD_FORMATS, spec_fields, stages_for

    fields = spec_fields()
    page.add_init_script(
        f"sessionStorage.setItem('slimformer.apiKey', {json.dumps(service.keys['alice'])})"
    )
    page.goto(service.url + "/submit")
    methods = page.locator("input[name='method']")
    expect(methods).to_have_count(len(fields["method"].choices))
    assert [m.get_attribute("value") for m in methods.all()] == fields["method"].choices
    expect(
        page.locator(f"input[name='method'][value='{fields['method'].default}']")
    ).to_be_checked()
    for name in ("model.task", "prune.layout", "prune.importance", "prune.schedule"):
        values = page.locator(f"select[name='{name}'] option").evaluate_all(
            "options => options.map(o => o.value).filter(Boolean)"
        )
        assert values == fields[name].choices, name
    assert page.locator("select[name='prune.schedule']").input_value() == "one_shot"
    assert page.get_attribute("#train-file", "accept") == ",".join(UPLOAD_FORMATS)
    expect(page.locator(".upload-formats")).to_contain_text(".txt")
    heads = page.locator("input[name='prune.heads']")
    assert (heads.get_attribute("min"), heads.get_attribute("max")) == ("0", "1")
    assert heads.get_attribute("title") == fields["prune.heads"].description
    page.check("input[name='method'][value='distill']")  # the stage table: distill prunes nothing
    expect(page.locator("#prune-section")).to_be_hidden()
    expect(page.locator("#distill-section")).to_be_visible()
    page.check("input[name='method'][value='prune_distill']")
    expect(page.locator("#prune-section")).to_be_visible()
    expect(page.locator("#distill-section")).to_be_visible()

    spec = {
        "model": {"id": "acme/no-such-model"},
        "dataset": {"hub_id": "glue"},
        "method": "distill",
        "distill": {"student": {"layers": 1}},
    }
    job = service.submit(spec)
    page.goto(f"{service.url}/jobs/{job['id']}")
    items = page.locator("#timeline li")
    expect(items).to_have_count(len(stages_for(spec)))
    assert [i.get_attribute("data-stage") for i in items.all()] == stages_for(spec)
    does = {stage.name: stage.does for stage in STAGE_TABLE}
    expect(items.first).to_have_attribute("title", does["downloading"])
    assert not page.problems, "\n".join(page.problems)


def test_a_causal_lm_jobs_page_shows_both_models_generations(service, page, tmp_path):
    from playwright.sync_api import expect

    from testkit.tiny_models import save_tiny_causal_lm, write_story_txt

    service.hub.add_repo("acme/tiny-lm", save_tiny_causal_lm(tmp_path / "lm", num_hidden_layers=4))
    upload = service.upload(write_story_txt(tmp_path / "stories.txt"))
    prompt = "Story 3: the cat sat"
    spec = {
        "model": {"id": "acme/tiny-lm"},
        "dataset": {"upload_id": upload["upload_id"]},
        "prune": {"heads": 0.25},
        "evaluation": {"latency": False, "max_samples": 4, "prompts": [prompt], "new_tokens": 6},
    }
    job = service.submit(spec)
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    page.goto(service.url + "/")
    page.fill("#key-input", service.keys["alice"])
    page.click("#key-form button[type=submit]")
    page.goto(f"{service.url}/jobs/{job['id']}")
    section = page.locator("#generations")
    expect(section).to_be_visible()
    rows = section.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first.locator("td").nth(0)).to_have_text(prompt)
    expect(rows.first.locator("td").nth(2)).to_contain_text("(same: ")
    expect(page.locator("#card")).to_contain_text("Generations side by side")
    page.screenshot(path=SHOTS / "5-llm-generations.png", full_page=True)
    assert not page.problems, "\n".join(page.problems)
