"""The command line's spec flags are made from the spec's fields: the same names as always, the
field's choices, range, default and description, one check (the field's). No model is loaded."""

from __future__ import annotations

import argparse
import json
from typing import get_args

import pytest

from slimformer.cli import flags
from slimformer.cli.local import DISTILL_FLAGS, PRUNE_FLAGS, _spec_data, _validated
from slimformer.cli.parser import build_parser
from slimformer.cli.remote import SUBMIT_FLAGS, _submit_spec
from slimformer.errors import InvalidSpec
from slimformer.spec import (
    PRUNE_DEFAULTS,
    DistillSpec,
    ExportSpec,
    JobSpec,
    ModelSpec,
    PruneSpec,
    spec_fields,
    upload_suffixes,
)

# Every option of the commands that take spec flags: docs/cli.md, the README and scripts use these
# names, so none may change or go.
OPTIONS = {
    "prune": {
        "--help", "--base-model", "--allow-new-head", "--data", "--eval-data", "--text-column",
        "--text-pair-column", "--label-column", "--max-samples", "--eval-samples", "--task",
        "--no-latency", "--onnx", "--onnx-int8", "--tasks", "--task-limit", "--new-tokens",
        "--gguf", "--quantize",
        "--targets", "--seed", "--out",
        "--overwrite", "--heads", "--ffn", "--whole-mlps", "--macs-budget", "--layout",
        "--ranking", "--importance", "--layers", "--depth-importance", "--keep-first-layers",
        "--keep-last-layers", "--bias-compensation", "--reconstruction", "--schedule", "--step",
        "--metric-floor", "--calibration-samples",
    },
    "distill": {
        "--help", "--base-model", "--allow-new-head", "--data", "--eval-data", "--text-column",
        "--text-pair-column", "--label-column", "--max-samples", "--eval-samples", "--task",
        "--no-latency", "--onnx", "--onnx-int8", "--tasks", "--task-limit", "--new-tokens",
        "--gguf", "--quantize",
        "--targets", "--seed", "--out",
        "--overwrite", "--student-layers", "--student", "--layer-selection", "--temperature",
        "--alpha", "--hidden-loss", "--epochs", "--max-steps", "--max-minutes", "--learning-rate",
    },
    "submit": {
        "--help", "--server", "--api-key", "--debug", "--json", "--model", "--revision", "--task",
        "--data", "--hub-dataset", "--eval-data", "--hub-config", "--split", "--eval-split",
        "--text-column", "--text-pair-column", "--label-column", "--max-samples", "--method",
        "--heads", "--ffn", "--whole-mlps", "--macs-budget", "--layout", "--ranking",
        "--importance", "--schedule", "--step", "--metric-floor", "--calibration-samples",
        "--keep-first-layers", "--keep-last-layers", "--layers", "--depth-importance",
        "--bias-compensation", "--reconstruction", "--student-layers", "--student",
        "--layer-selection", "--temperature", "--alpha", "--hidden-loss", "--epochs",
        "--max-steps", "--max-minutes", "--learning-rate", "--eval-samples", "--no-latency",
        "--onnx", "--onnx-int8", "--tasks", "--task-limit", "--new-tokens", "--gguf", "--quantize",
        "--targets",
        "--publish",
        "--public", "--seed",
        "--hub-token-env", "--wait",
    },
}  # fmt: skip
COMMAND_FLAGS = {"prune": PRUNE_FLAGS, "distill": DISTILL_FLAGS, "submit": SUBMIT_FLAGS}


@pytest.fixture(scope="module")
def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser({})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub.choices[name] for name in OPTIONS}


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_flag_keeps_its_name(commands, command):
    assert set(_actions(commands[command])) - {"-h"} == OPTIONS[command]


def test_every_prune_and_distill_setting_has_its_flag():
    prune = {f.path for f in flags.PRUNE}
    assert prune == {f"prune.{name}" for name in PruneSpec.model_fields}
    distill = {f.path for f in (*flags.DISTILL, *flags.STUDENT, flags.LAYER_SELECTION)}
    assert distill == {p for p in spec_fields() if p.startswith("distill.")}


@pytest.mark.parametrize("command", sorted(COMMAND_FLAGS))
def test_flag_choices_are_the_spec_literals(commands, command):
    actions = _actions(commands[command])
    checked = 0
    for flag in COMMAND_FLAGS[command]:
        field, action = flag.field, actions[flag.option]
        if flag.kind == "value" and field.choices:
            assert list(action.choices) == field.choices, flag.option
            checked += 1
        elif flag.kind == "on_off":
            assert list(action.choices) == ["on", "off"], flag.option
    assert checked >= 3
    # and the spec's Literal types are what those choices are
    assert spec_fields()["prune.layout"].choices == list(
        get_args(get_args(PruneSpec.model_fields["layout"].annotation)[0])
    )
    assert spec_fields()["model.task"].choices == list(
        get_args(get_args(ModelSpec.model_fields["task"].annotation)[0])
    )
    assert spec_fields()["export.targets"].choices == list(
        get_args(get_args(ExportSpec.model_fields["targets"].annotation)[0])
    )


@pytest.mark.parametrize("command", sorted(COMMAND_FLAGS))
def test_help_shows_the_field_description_range_and_default(commands, command):
    actions = _actions(commands[command])
    for flag in COMMAND_FLAGS[command]:
        field, text = flag.field, actions[flag.option].help.lower()
        if flag.option == "--method" and command == "submit":  # its default depends on the flags
            continue
        if field.range_text():
            assert f"range {field.range_text()}" in text, flag.option
        if flag.kind == "value" and field.default is not None:
            assert f"default {field.default}".lower() in text, flag.option
        if field.description and not flag.help:
            assert field.description.split()[1].lower() in text, flag.option


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser({}).parse_args(["prune", "m", "--data", "d.csv", "--out", "o", *argv])


@pytest.mark.parametrize(
    ("path", "bad"),
    [(p, v) for p, v in (("prune.heads", "1"), ("prune.step", "0"), ("distill.temperature", "21"))]
    + [("prune.calibration_samples", "0"), ("prune.metric_floor", "1.5"), ("seed", "-1")],
)
def test_one_range_check_the_fields(capsys, path, bad):
    """Out of range is refused at parsing, with the field's own range in the message."""
    flag = next(f for f in (*PRUNE_FLAGS, *DISTILL_FLAGS) if f.path == path)
    command = "distill" if path.startswith("distill") else "prune"
    argv = [command, "m", "--data", "d.csv", "--out", "o", flag.option, bad]
    if command == "distill":
        argv += ["--student-layers", "1"]
    with pytest.raises(SystemExit) as exit_info:
        build_parser({}).parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag.option}: {bad} is not" in err and flag.field.range_text() in err


def test_values_are_converted_by_the_field():
    args = _parse("--heads", "0.5", "--whole-mlps", "2", "--gguf", "Q8_0,f16", "--layers", "1")
    assert (args.heads, args.whole_mlps, args.gguf, args.layers) == (0.5, 2, ["q8_0", "f16"], 1.0)


def test_unset_flags_leave_the_spec_defaults():
    spec = _validated(_spec_data(_parse("--heads", "0.5"), "prune", PRUNE_FLAGS), PRUNE_FLAGS)
    defaults = PruneSpec()
    for name in PruneSpec.model_fields:
        if name != "heads":
            assert getattr(spec.prune, name) == getattr(defaults, name), name
    assert spec.seed == 0 and spec.evaluation.latency is True
    assert spec.prune.resolved("text-classification").importance == PRUNE_DEFAULTS["importance"]


def test_switches_and_on_off_flags():
    args = _parse("--heads", "0.5", "--no-latency", "--onnx-int8", "--bias-compensation", "off")
    spec = _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)
    assert spec.evaluation.latency is False and spec.evaluation.onnx_int8 is True
    assert spec.prune.bias_compensation is False and spec.prune.reconstruction is None


def test_a_spec_error_names_the_flag_that_set_the_field():
    args = _parse("--heads", "0.5", "--base-model", "a/b/c")
    named = r"^--base-model \(model.base_model\): .*not a Hub model id"
    with pytest.raises(InvalidSpec, match=named):
        _validated(_spec_data(args, "prune", PRUNE_FLAGS), PRUNE_FLAGS)


def test_every_distill_setting_reaches_the_spec():
    args = build_parser({}).parse_args(
        ["distill", "t", "--data", "d.csv", "--out", "o", "--student-layers", "2"]
        + ["--temperature", "4", "--alpha", "0.3", "--hidden-loss", "mse", "--max-steps", "7"]
        + ["--learning-rate", "0.001", "--layer-selection", "importance", "--epochs", "2"]
    )
    spec = _validated(_spec_data(args, "distill", DISTILL_FLAGS), DISTILL_FLAGS)
    expected = DistillSpec(
        student={"layers": 2, "layer_selection": "importance"},
        temperature=4,
        alpha=0.3,
        hidden_loss="mse",
        max_steps=7,
        learning_rate=0.001,
        epochs=2,
    )
    assert spec.distill == expected


def _submit(*argv: str) -> dict:
    return _submit_spec(build_parser({}).parse_args(["submit", *argv]))[0]


def test_submit_lays_the_flags_over_the_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(
        json.dumps(
            {
                "model": {"id": "acme/tiny"},
                "dataset": {"hub_id": "glue", "config": "sst2"},
                "prune": {"heads": 0.5, "ffn": 0.25},
                "publish": {"repo_id": "acme/small", "private": False},
            }
        )
    )
    data = _submit(str(path), "--ffn", "0.5", "--reconstruction", "on", "--temperature", "3")
    assert data["prune"] == {"heads": 0.5, "ffn": 0.5, "reconstruction": True}
    assert data["distill"] == {"temperature": 3.0} and data["publish"]["private"] is False
    assert data["dataset"] == {"hub_id": "glue", "config": "sst2"}
    data = _submit(str(path), "--hub-dataset", "imdb")
    assert data["dataset"] == {"hub_id": "imdb"}  # another source replaces the file's
    JobSpec.model_validate(data)


def test_submit_without_a_file():
    data = _submit("--model", "acme/tiny", "--hub-dataset", "glue", "--student-layers", "2")
    assert data["method"] == "distill" and data["distill"] == {"student": {"layers": 2}}
    data = _submit("--model", "acme/tiny", "--hub-dataset", "glue", "--heads", "0.5", "--public")
    assert data["method"] == "prune" and "publish" not in data  # --public alone publishes nothing
    data = _submit("--model", "a/b", "--hub-dataset", "g", "--heads", "0.5", "--publish", "a/c")
    assert data["publish"] == {"repo_id": "a/c"}  # private unless --public: the spec's default
    assert JobSpec.model_validate(data).publish.private is True


def test_the_data_flags_name_the_upload_formats(commands):
    for command, how in (("prune", "read here"), ("submit", "uploaded to the service")):
        text = _actions(commands[command])["--data"].help
        assert upload_suffixes() in text and how in text
