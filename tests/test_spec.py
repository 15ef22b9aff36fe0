import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from slimformer.spec import JobSpec, job_spec_schema

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"model": {"id": "org/model"}, "dataset": {"hub_id": "org/data"}, "prune": {"heads": 0.5}}


def _errors(data, **context):
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(data, context=context or None)
    return [(".".join(map(str, e["loc"])), e["msg"]) for e in err.value.errors()]


def test_defaults_fill_a_minimal_spec():
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.method == "prune" and spec.model.revision == "main"
    # null prune settings take the task's defaults (PruneSpec.resolved): Michel's for classifiers,
    # and the per_layer layout (no serving target names another)
    assert spec.prune.importance is None and spec.prune.calibration_samples is None
    assert spec.prune.layout is None
    resolved = spec.prune.resolved("text-classification")
    assert resolved.importance == "michel" and resolved.calibration_samples == 512
    assert resolved.layout == "per_layer"
    assert (
        spec.evaluation.latency is True and spec.evaluation.onnx is False and spec.publish is None
    )


def test_unknown_fields_are_rejected_with_their_path():
    errors = _errors(MINIMAL | {"prune": {"heads": 0.5, "head": 0.3}})
    assert errors == [("prune.head", "Extra inputs are not permitted")]
    assert _errors(MINIMAL | {"colour": "blue"})[0][0] == "colour"


@pytest.mark.parametrize("value", [1.0, -0.1, 2])
def test_fractions_outside_zero_one(value):
    errors = _errors(MINIMAL | {"prune": {"heads": value}})
    assert errors[0][0] == "prune.heads"


def test_exactly_one_data_source():
    assert "exactly one data source" in _errors(MINIMAL | {"dataset": {}})[0][1]
    both = _errors(MINIMAL | {"dataset": {"hub_id": "a/b", "upload_id": "u1"}})
    assert "got hub_id, upload_id" in both[0][1]


def test_local_paths_only_on_the_command_line():
    local = MINIMAL | {"dataset": {"path": "train.csv"}}
    assert JobSpec.model_validate(local, context={"local_files": True}).dataset.path == "train.csv"
    assert "command line only" in _errors(local, local_files=False)[0][1]
    folder = MINIMAL | {"model": {"id": "../models/x"}}
    assert JobSpec.model_validate(folder).model.id == "../models/x"
    assert "not a Hub model id" in _errors(folder, local_files=False)[0][1]


def test_method_needs_its_section():
    assert "needs something to remove" in _errors({**MINIMAL, "prune": {}})[0][1]
    assert "needs distill.student" in _errors({**MINIMAL, "method": "distill"})[0][1]
    spec = JobSpec.model_validate(
        {**MINIMAL, "method": "distill", "distill": {"student": {"layers": 3}}}
    )
    assert spec.distill.student.layers == 3
    assert (
        "exactly one" in _errors({**MINIMAL, "method": "distill", "distill": {"student": {}}})[0][1]
    )
    assert (
        "leave distill.student unset"
        in _errors({**MINIMAL, "method": "prune_distill", "distill": {"student": {"layers": 2}}})[
            0
        ][1]
    )


def test_publish_repo_must_name_an_owner():
    assert "not a Hub repo id" in _errors(MINIMAL | {"publish": {"repo_id": "just-a-name"}})[0][1]
    assert (
        JobSpec.model_validate(MINIMAL | {"publish": {"repo_id": "me/slim"}}).publish.private
        is True
    )


def test_the_documented_schema_is_the_code_schema():
    documented = json.loads((ROOT / "docs" / "job-spec.schema.json").read_text())
    assert documented == job_spec_schema(), (
        "regenerate docs/job-spec.schema.json (see docs/job-spec.md)"
    )


def test_example_specs_are_valid():
    import yaml

    for path in (ROOT / "examples").glob("*.yaml"):
        JobSpec.model_validate(yaml.safe_load(path.read_text()))
