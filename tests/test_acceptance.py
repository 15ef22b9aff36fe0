"""Acceptance on the benchmark model: `slimformer compress` writes a folder that loads with
transformers in a fresh process, whose card renders, and whose reported accuracy equals a separate
evaluation of the saved model."""

import json
import re
import subprocess
import sys

import pytest
import yaml
from markdown_it import MarkdownIt

from slimformer.cli import main

pytestmark = pytest.mark.slow

EVALUATE = """
import csv, json, sys, torch, transformers
folder, data, rows, remote = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
model = transformers.AutoModelForSequenceClassification.from_pretrained(\
folder, trust_remote_code=remote).eval()
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
with open(data, newline="") as f:
    reader = csv.DictReader(f, delimiter="\\t", quoting=csv.QUOTE_NONE)
    examples = [(r["sentence"], int(r["label"])) for r in reader][:rows]
hits = 0
with torch.no_grad():
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        enc = tokenizer([t for t, _ in chunk], padding=True, truncation=True, max_length=128, \
return_tensors="pt")
        pred = model(**enc).logits.argmax(-1)
        hits += int((pred == torch.tensor([y for _, y in chunk])).sum())
print(json.dumps({"accuracy": hits / len(examples), \
"slimformer": any(m.startswith("slimformer") for m in sys.modules)}))
"""


def _spec(shared_dir, tmp_path, body: dict):
    base = {
        "model": {"id": str(shared_dir / "models" / "minilm-l6-sst2")},
        "dataset": {
            "path": str(shared_dir / "data" / "sst2" / "train.tsv"),
            "eval_path": str(shared_dir / "data" / "sst2" / "validation.tsv"),
            "max_samples": 512,
        },
        "evaluation": {"max_samples": 200, "latency": False},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base | body))
    return path


@pytest.mark.parametrize(
    "body",
    [
        {"method": "prune", "prune": {"heads": 0.5, "ffn": 0.5, "calibration_samples": 256}},
        {"method": "distill", "distill": {"student": {"layers": 3}, "max_steps": 12}},
    ],
    ids=["prune", "distill"],
)
def test_compress_writes_a_folder_that_reloads_renders_and_reports_honestly(
    shared_dir, tmp_path, body, capsys
):
    out = tmp_path / "out"
    assert main(["compress", str(_spec(shared_dir, tmp_path, body)), "--out", str(out)]) == 0
    report = json.loads((out / "compression_report.json").read_text())
    remote = report["artifacts"]["per_layer"]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            EVALUATE,
            str(out),
            str(shared_dir / "data" / "sst2" / "validation.tsv"),
            "200",
            "1" if remote else "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["slimformer"] is False
    assert measured["accuracy"] == pytest.approx(
        report["evaluation"]["compressed"]["metrics"]["accuracy"], abs=1e-9
    )

    # the card renders: markdown to HTML, with the side-by-side table and images that exist
    body_md = re.sub(r"^---\n.*?\n---\n", "", (out / "README.md").read_text(), flags=re.S)
    html = MarkdownIt("commonmark").enable("table").render(body_md)
    assert "<table>" in html and "Parameters" in html
    for image in re.findall(r'<img src="([^"]+)"', html):
        assert (out / image).is_file(), image
    if body["method"] == "prune":
        assert 'src="head_importance.png"' in html
