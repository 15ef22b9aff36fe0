import json

import pytest
import transformers

from slimformer.cli import main


def _prune(model, data, out, *extra):
    return main(
        ["prune", str(model), "--data", str(data), "--out", str(out), "--no-latency", *extra]
    )


def test_prune_writes_a_folder_that_reloads_and_prints_a_summary(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys
):
    out = tmp_path / "pruned"
    assert _prune(tiny_classifier_folder, labelled_csv, out, "--heads", "0.5", "--ffn", "0.3") == 0
    printed = capsys.readouterr().out
    assert "parameters" in printed and "accuracy" in printed and "trust_remote_code=True" in printed
    report = json.loads((out / "compression_report.json").read_text())
    assert report["pruning"]["heads_per_layer"] and sum(report["pruning"]["heads_per_layer"]) == 4
    evaluation = report["evaluation"]
    assert evaluation["compressed"]["parameters"] < evaluation["original"]["parameters"]
    assert report["importance"]["loss"] == "task"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, trust_remote_code=True
    )
    assert sum(p.numel() for p in model.parameters()) == evaluation["compressed"]["parameters"]
    assert (out / "README.md").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "modeling_slimformer.py").is_file()
    assert not list(tmp_path.glob(".pruned.partial-*"))


def test_uniform_ffn_pruning_loads_without_remote_code(
    tiny_classifier_folder, labelled_csv, tmp_path
):
    out = tmp_path / "uniform"
    assert (
        _prune(tiny_classifier_folder, labelled_csv, out, "--ffn", "0.5", "--layout", "uniform")
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 19 and "auto_map" not in config
    transformers.AutoModelForSequenceClassification.from_pretrained(out)


def test_iterative_schedule_from_the_command_line(tiny_classifier_folder, labelled_csv, tmp_path):
    out = tmp_path / "iter"
    assert (
        _prune(
            tiny_classifier_folder,
            labelled_csv,
            out,
            "--heads",
            "0.5",
            "--schedule",
            "iterative",
            "--step",
            "0.25",
            "--metric-floor",
            "0.01",
        )
        == 0
    )
    report = json.loads((out / "compression_report.json").read_text())
    assert len(report["pruning"]["curve"]) >= 3


def test_onnx_export_from_the_command_line(tiny_classifier_folder, labelled_csv, tmp_path):
    out = tmp_path / "onnx"
    assert _prune(tiny_classifier_folder, labelled_csv, out, "--heads", "0.5", "--onnx") == 0
    report = json.loads((out / "compression_report.json").read_text())
    assert (out / "model.onnx").is_file() and report["artifacts"]["onnx"]["max_abs_diff"] <= 1e-4


def test_onnx_int8_from_the_command_line_loads_alone_and_is_smaller(
    tiny_classifier_folder, labelled_csv, tmp_path
):
    import numpy as np
    import onnxruntime as ort

    out = tmp_path / "int8"
    assert _prune(tiny_classifier_folder, labelled_csv, out, "--ffn", "0.25", "--onnx-int8") == 0
    int8 = json.loads((out / "compression_report.json").read_text())["artifacts"]["onnx"]["int8"]
    assert int8["path"] == "model.int8.onnx" and 0.0 <= int8["top1_agreement"] <= 1.0
    float_size = (out / "model.onnx").stat().st_size + (out / "model.onnx.data").stat().st_size
    assert int8["float_size_bytes"] == float_size and int8["size_bytes"] < 0.4 * float_size
    session = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    logits = session.run(None, feed)[0]
    assert logits.shape == (2, 2) and np.isfinite(logits).all()
    card = (out / "README.md").read_text()
    assert "`model.int8.onnx` is onnxruntime's dynamic int8 quantization" in card
    assert f"{int8['top1_agreement']:.1%}" in card


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heads", "1.0"], "not a fraction in [0, 1)"),
        (["--heads", "-0.2"], "not a fraction in [0, 1)"),
        (["--ffn", "abc"], "'abc' is not a number"),
        (["--heads", "0.5", "--layout", "sideways"], "invalid choice: 'sideways'"),
    ],
)
def test_bad_arguments_are_rejected_before_anything_runs(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys, args, message
):
    with pytest.raises(SystemExit) as exit_info:
        _prune(tiny_classifier_folder, labelled_csv, tmp_path / "out", *args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _expect_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_column_is_one_clear_line_and_no_folder(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys
):
    code = _prune(
        tiny_classifier_folder,
        labelled_csv,
        tmp_path / "out",
        "--heads",
        "0.5",
        "--text-column",
        "review",
    )
    _expect_error(capsys, code, "reviews.csv", "'review'", "sentence, label")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_target_that_removes_every_head_is_refused(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys
):
    code = _prune(tiny_classifier_folder, labelled_csv, tmp_path / "out", "--heads", "0.9")
    _expect_error(capsys, code, "empty a layer's attention")
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_model(labelled_csv, tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    code = _prune(tmp_path / "notamodel", labelled_csv, tmp_path / "out", "--heads", "0.5")
    _expect_error(capsys, code, "is not a model folder", "config.json")


def test_unsupported_architecture(labelled_csv, tmp_path, capsys):
    folder = tmp_path / "t5"
    transformers.T5Config(
        d_model=16, num_layers=1, num_heads=2, d_ff=8, vocab_size=64
    ).save_pretrained(folder)
    code = _prune(folder, labelled_csv, tmp_path / "out", "--heads", "0.5")
    _expect_error(capsys, code, "'t5' is not supported", "bert", "llama")


def test_empty_data_file(tiny_classifier_folder, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    code = _prune(
        tiny_classifier_folder, tmp_path / "empty.csv", tmp_path / "out", "--heads", "0.5"
    )
    _expect_error(capsys, code, "empty.csv is empty")


def test_existing_output_folder_is_not_overwritten(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = _prune(tiny_classifier_folder, labelled_csv, out, "--heads", "0.5")
    _expect_error(capsys, code, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_a_failure_while_writing_leaves_no_folder(
    tiny_classifier_folder, labelled_csv, tmp_path, capsys, monkeypatch
):
    from slimformer.errors import ExportError
    from slimformer.recipe import serving

    def broken_export(*args, **kwargs):
        raise ExportError("ONNX export failed: simulated")

    monkeypatch.setattr(serving, "export_onnx", broken_export)
    code = _prune(
        tiny_classifier_folder, labelled_csv, tmp_path / "out", "--heads", "0.5", "--onnx"
    )
    _expect_error(capsys, code, "simulated")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.partial-*"))
