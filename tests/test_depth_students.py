"""A layer-dropped causal-LM student starts where depth pruning ends: by default it keeps the
layers ``prune --layers`` keeps (block influence on the same calibration text), and the card says
which layers and the held-out metric before and after training."""

from __future__ import annotations

import pytest

from slimformer.spec import JobSpec
from testkit.tiny_models import save_tiny_causal_lm, write_story_txt


@pytest.fixture(scope="module")
def six_layers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-depth")
    save_tiny_causal_lm(folder, num_hidden_layers=6, max_position_embeddings=256)
    return folder, write_story_txt(folder.parent / "stories-depth.txt")


def _spec(folder, data, **body) -> JobSpec:
    base = {
        "model": {"id": str(folder)},
        "dataset": {"path": str(data)},
        "evaluation": {"latency": False, "max_samples": 4, "new_tokens": 0},
    }
    return JobSpec.model_validate(base | body, context={"local_files": True})


def test_a_causal_lm_student_keeps_the_layers_depth_pruning_keeps(six_layers, tmp_path):
    from slimformer.pipeline import run

    folder, data = six_layers
    pruned = run(_spec(folder, data, prune={"layers": 2, "heads": 0}), tmp_path / "prune").report
    dropped = pruned["pruning"]["removed_layers"]
    distill = {"student": {"layers": 4}, "max_steps": 80, "epochs": 20}
    out = tmp_path / "out"
    report = run(
        _spec(folder, data, method="distill", distill=distill), tmp_path / "distill", out_dir=out
    ).report
    student = report["distillation"]["student"]
    assert student["layer_selection"] == "block_influence"
    removed = sorted(set(range(6)) - set(student["kept_layers"]))
    assert removed == dropped and len(dropped) == 2
    card = (out / "README.md").read_text()
    assert f"The student kept the teacher's layers {student['kept_layers']}" in card
    assert "before training" in card


def test_an_encoder_student_still_keeps_evenly_spaced_layers():
    from slimformer.spec.distill import StudentSpec

    assert StudentSpec(layers=3).selection_for("text-classification") == "even"
    assert StudentSpec(layers=3).selection_for("text-generation") == "block_influence"
    assert StudentSpec(layers=3, layer_selection="even").selection_for("text-generation") == "even"
