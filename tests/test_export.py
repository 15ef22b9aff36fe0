import numpy as np
import onnxruntime as ort
import pytest
import torch

from slimformer.errors import ExportError
from slimformer.export import export_onnx
from slimformer.importance import score_importance
from slimformer.pruning import PruningTarget, plan_pruning, prune_model
from testkit.tiny_models import tiny_batch, tiny_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("family", "head"), [("bert", "classification"), ("llama", "causal-lm"), ("gpt2", "base")]
)
def test_per_layer_model_exports_to_onnx_with_dynamic_shapes(family, head, tmp_path):
    model = tiny_model(family, head)
    batch = tiny_batch(family, head=head)
    prune_model(
        model,
        plan_pruning(
            model, score_importance(model, [batch]), PruningTarget(heads=0.5, ffn=0.3, whole_mlps=1)
        ),
    )
    info = export_onnx(model, batch, tmp_path / "m.onnx")
    assert info["max_abs_diff"] <= 1e-4
    # another batch size and length than the one traced
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    ids = torch.randint(3, 100, (2, 7))
    mask = torch.ones_like(ids)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    got = session.run(None, feeds)[0]
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask)[0].numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_export_failure_is_an_export_error(tmp_path):
    model = tiny_model("bert")
    with pytest.raises(ExportError, match="ONNX export failed"):
        export_onnx(
            model,
            {"input_ids": torch.zeros(2, 4, dtype=torch.long)},
            tmp_path / "missing" / "m.onnx",
        )
