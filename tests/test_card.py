"""The evaluation card as a person reads it: numbers, where the base model came from, and a "how to
load it" snippet that runs as written for every task and layout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimformer.card import (
    CURVE,
    HEATMAP,
    _origin_text,
    base_hub_id,
    build_card,
    format_change,
    format_metric,
    format_number,
    format_relative,
    format_speedup,
    load_snippet,
)
from slimformer.report import SCHEMA_FILE, BaseModelInfo, CompressionReport


@pytest.mark.parametrize(
    ("before", "after", "metric", "expected"),
    [
        (0.49, 0.555, "accuracy", "+6.50 pt"),
        (0.9, 0.9, "macro_f1", "+0.00 pt"),
        (12.5, 25.0, "perplexity", "×2.00"),
        (10.0, 59694780.69, "perplexity", "×5,969,478"),
        (20.0, 300.0, "perplexity", "×15.0"),
        (0.81, 0.7912, "pearson", "-0.019"),
        (1.0, 0.99995, "cosine_to_original", "-5.0e-05"),
        (None, 0.5, "accuracy", ""),
    ],
)
def test_changes_are_points_factors_or_differences(before, after, metric, expected):
    assert format_change(before, after, metric) == expected


@pytest.mark.parametrize(
    ("value", "metric", "expected"),
    [
        (0.87654, "accuracy", "87.65%"),
        (5969478.069, "perplexity", "5,969,478"),
        (123.456, "perplexity", "123.5"),
        (12.3456, "perplexity", "12.35"),
        (1.23456, None, "1.235"),
        (0.123456, "pearson", "0.1235"),
        (1234567, None, "1,234,567"),
        (None, None, "—"),
        (float("inf"), "perplexity", "∞"),
    ],
)
def test_values_have_separators_and_sensible_digits(value, metric, expected):
    assert format_metric(value, metric) == expected


def test_sizes_change_by_a_signed_percentage():
    assert format_relative(1000, 625) == "-37.5%" and format_relative(None, 5) == ""
    assert format_number(0) == "0"


def _base(**fields) -> BaseModelInfo:
    required = {"revision": None, "task": "text-generation", "family": "llama", "license": None}
    return BaseModelInfo.model_validate(required | fields)


def test_the_origin_line_links_only_hub_ids():
    local = _base(id="smollm2-135m-instruct", hub_id=None, source="local", commit=None)
    assert base_hub_id(local) is None and "huggingface.co" not in _origin_text(local)
    assert "--base-model" in _origin_text(local)
    given = _base(id="acme/x", hub_id="acme/x", source="given", commit=None)
    assert _origin_text(given).startswith(
        "[`acme/x`](https://huggingface.co/acme/x), as given with"
    )
    hub = _base(id="acme/x", hub_id="acme/x", source="hub", revision="v1", commit="a" * 40)
    assert "at revision `v1` (commit `aaaa" in _origin_text(hub)
    # reports written before hub_id existed: a Hub model had a commit, a local folder none
    assert base_hub_id(_base(id="acme/x", commit="b" * 40)) == "acme/x"
    assert base_hub_id(_base(id="models/x", commit=None)) is None


def _folder(tmp_path: Path, name: str, model: str, data: Path, **spec_parts) -> Path:
    from slimformer.pipeline import run
    from slimformer.spec import JobSpec

    body = {
        "model": {"id": model},
        "dataset": {"path": str(data)},
        "evaluation": {"latency": False},
    }
    spec = JobSpec.model_validate(body | spec_parts, context={"local_files": True})
    return run(spec, tmp_path / f"work-{name}", out_dir=tmp_path / name).folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_classifier_folder, minilm_path) -> dict[str, Path]:
    """Results of each task in each layout the family can express."""
    from test_cli_first_run import save_tiny_causal_lm, save_tiny_encoder

    from testkit.tiny_models import write_reviews_csv

    tmp = tmp_path_factory.mktemp("cards")
    data = write_reviews_csv(tmp / "reviews.csv")
    lm = save_tiny_causal_lm(tmp / "lm")
    encoder = save_tiny_encoder(tmp / "encoder", minilm_path)
    prune = {"heads": 0.5, "ffn": 0.3}
    ffn_only = {"ffn": 0.3, "layout": "uniform"}
    return {
        "classifier-per_layer": _folder(
            tmp, "classifier-per_layer", tiny_classifier_folder, data, prune=prune
        ),
        "classifier-uniform": _folder(
            tmp, "classifier-uniform", tiny_classifier_folder, data, prune=ffn_only
        ),
        "causal-lm-per_layer": _folder(
            tmp, "causal-lm-per_layer", str(lm), data, prune={"heads": 0.25, "ffn": 0.3}
        ),
        "causal-lm-uniform": _folder(
            tmp,
            "causal-lm-uniform",
            str(lm),
            data,
            prune={"heads": 0.5, "ffn": 0.3, "layout": "uniform"},
        ),
        "encoder-per_layer": _folder(tmp, "encoder-per_layer", str(encoder), data, prune=prune),
        "encoder-uniform": _folder(tmp, "encoder-uniform", str(encoder), data, prune=ffn_only),
        "classifier-distilled": _folder(
            tmp,
            "classifier-distilled",
            tiny_classifier_folder,
            data,
            method="distill",
            distill={"student": {"layers": 1}, "max_steps": 2},
        ),
    }


# keys later versions added to the report: one written before them lacks them all
LATER_KEYS = {
    "base_model": ("hub_id", "source", "folder_name", "new_head", "own_code"),
    "data": ("unused_label_column", "calibration_source", "calibration_protocol"),
    "evaluation": ("generation", "protocol", "torch_version"),
    "pruning": ("removed_attention", "reconstruction", "removed_layers", "original_layers"),
    "artifacts": ("targets", "vllm", "gguf", "config_reads_without_code"),
}
LATER_EVALUATION_KEYS = {
    "original": ("embedding_parameters",),
    "compressed": ("embedding_parameters",),
    "ratios": ("non_embedding_parameters",),
}


def test_a_stored_report_loads_and_rebuilds_the_card_its_job_wrote(folders, tmp_path):
    """compression_report.json read back is a valid report (the model and the published schema)
    and the card built from it is, byte for byte, the card the job wrote."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    for name, folder in folders.items():
        stored = json.loads((folder / "compression_report.json").read_text())
        jsonschema.validate(stored, schema)
        report = CompressionReport.model_validate(stored)
        (tmp_path / name).mkdir()
        build_card(report, tmp_path / name)
        for file in ("README.md", HEATMAP, CURVE):
            wrote, rebuilt = folder / file, tmp_path / name / file
            assert wrote.is_file() == rebuilt.is_file(), (name, file)
            assert not wrote.is_file() or wrote.read_bytes() == rebuilt.read_bytes(), (name, file)


def test_a_report_of_the_first_version_still_loads_and_makes_a_card(folders, tmp_path):
    """Before ``hub_id`` and ``source`` a Hub model was one with a commit."""
    stored = json.loads((folders["classifier-per_layer"] / "compression_report.json").read_text())
    for key, later in LATER_KEYS.items():
        for name in later:
            stored[key].pop(name, None)
    for key, later in LATER_EVALUATION_KEYS.items():
        for name in later:
            stored["evaluation"][key].pop(name, None)
    del stored["execution"]
    stored["base_model"] |= {"id": "acme/tiny-bert", "revision": "main", "commit": "c" * 40}
    report = CompressionReport.model_validate(stored)
    assert base_hub_id(report.base_model) == "acme/tiny-bert" and report.base_model.new_head == []
    card = build_card(report, tmp_path).text
    assert "[`acme/tiny-bert`](https://huggingface.co/acme/tiny-bert) at revision `main`" in card
    assert "## What was removed" in card
    # without the embeddings' count only the share of all parameters can be given; without the
    # config's reading the tokenizer line keeps trust_remote_code, as those cards said
    assert "non-embedding" not in card.lower()
    assert 'AutoTokenizer.from_pretrained("path/to/this/folder", trust_remote_code=True)' in card


def _summary_and_rows(folder: Path) -> tuple[str, dict[str, list[str]]]:
    card = (folder / "README.md").read_text()
    summary = card.split("\n# ", 1)[1].split("\n\n")[1]
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4:
            rows[cells[0]] = cells[1:]
    return summary, rows


def test_the_card_gives_the_share_of_all_and_of_the_non_embedding_parameters(folders):
    """A causal LM's embeddings are never pruned: the card states both shares, as the report
    counts them (the table's rows and the first sentence)."""
    report = json.loads((folders["causal-lm-per_layer"] / "compression_report.json").read_text())
    evaluation = report["evaluation"]
    original, compressed = evaluation["original"], evaluation["compressed"]
    assert original["embedding_parameters"] == compressed["embedding_parameters"] > 0
    kept = [side["parameters"] - side["embedding_parameters"] for side in (original, compressed)]
    assert evaluation["ratios"]["non_embedding_parameters"] == pytest.approx(kept[1] / kept[0])
    assert evaluation["ratios"]["non_embedding_parameters"] < evaluation["ratios"]["parameters"]
    summary, rows = _summary_and_rows(folders["causal-lm-per_layer"])
    assert rows["Non-embedding parameters"] == [
        format_number(kept[0]),
        format_number(kept[1]),
        format_relative(*kept),
    ]
    shares = evaluation["ratios"]
    assert (
        f"{shares['parameters']:.0%} of the parameters "
        f"({shares['non_embedding_parameters']:.0%} of the non-embedding ones)"
    ) in summary


RUN_SNIPPETS = textwrap.dedent("""
    import io, json, sys, contextlib
    results = {}
    for name, code in json.load(open(sys.argv[1])).items():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        results[name] = out.getvalue().strip()
    results["slimformer imported"] = any(m.startswith("slimformer") for m in sys.modules)
    print(json.dumps(results))
""")


def test_every_cards_load_snippet_runs_as_written(folders, tmp_path):
    snippets = {}
    for name, folder in folders.items():
        card = (folder / "README.md").read_text()
        code = re.search(r"## How to load it\n\n```python\n(.*?)```", card, re.S)[1]
        per_layer = (folder / "modeling_slimformer.py").is_file()
        assert ("trust_remote_code=True" in code) == per_layer, name
        # the first line a user types: the tokenizer loads with stock transformers
        assert 'AutoTokenizer.from_pretrained("path/to/this/folder")' in code, name
        # and the card says what the model does without its code
        refused = "refuses these weights with a size-mismatch report" in " ".join(card.split())
        assert refused == per_layer, name
        snippets[name] = code.replace("path/to/this/folder", str(folder))
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))
    run = subprocess.run(
        [sys.executable, "-c", RUN_SNIPPETS, str(tmp_path / "snippets.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert results.pop("slimformer imported") is False
    assert results["classifier-per_layer"] in ("negative", "positive")
    assert results["encoder-uniform"] == "torch.Size([1, 32])"
    assert all(results.values()), results


def test_a_snippet_for_a_published_model_names_the_repo():
    code = load_snippet("text-generation", "acme/lm-pruned", per_layer=True)
    assert code.count('from_pretrained("acme/lm-pruned", trust_remote_code=True)') == 2
    code = load_snippet(
        "text-generation", "acme/lm-pruned", per_layer=True, tokenizer_needs_code=False
    )
    assert 'AutoModelForCausalLM.from_pretrained("acme/lm-pruned", trust_remote_code=True)' in code
    assert 'AutoTokenizer.from_pretrained("acme/lm-pruned")' in code
    assert "model.generate" in code
    pairs = load_snippet("text-classification", "acme/c", per_layer=False, pairs=True)
    assert '["a second sentence"]' in pairs and "trust_remote_code" not in pairs


def test_a_slower_model_is_called_slower_not_a_fraction_faster():
    assert format_speedup(1.98) == "×1.98 faster"
    assert format_speedup(1 / 1.05) == "×1.05 slower"


def test_formatting_imports_neither_torch_nor_the_card():
    """The command line and the API format metrics with ``slimformer.formatting``: importing it
    must stay cheap and torch-free."""
    code = (
        "import sys, slimformer.formatting; "
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'slimformer.card') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_finished_jobs_table_is_the_cards_table(folders):
    """What a worker keeps for the API and the dashboard is the card's side-by-side table, so a
    perplexity change reads as a factor in both, never as a difference."""
    from slimformer.card.tables import _table
    from workers.runner import summarise

    stored = json.loads((folders["classifier-per_layer"] / "compression_report.json").read_text())
    evaluation = stored["evaluation"]
    evaluation["primary_metric"] = "perplexity"
    evaluation["original"]["metrics"] = {"perplexity": 28.65}
    evaluation["compressed"]["metrics"] = {"perplexity": 39.63}
    report = CompressionReport.model_validate(stored)
    rows = summarise(stored)["table"]
    assert [(r["name"], r["original"], r["compressed"], r["change"]) for r in rows] == _table(
        report.evaluation, report.artifacts
    )
    assert rows[0] == {
        "name": "Perplexity",
        "original": "28.65",
        "compressed": "39.63",
        "change": "×1.38",
        "primary": True,
    }
    assert not any(r["primary"] for r in rows[1:])
