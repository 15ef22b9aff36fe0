"""w8a8's SmoothQuant-style smoothing (slimformer.engines.block_quantizers.smooth_layer): it moves
activation outliers into the weights without changing what the float model computes, so that int8
per-token activations lose less. Runs in slimformer's own environment (the function needs only
torch)."""

from __future__ import annotations

import pytest
import torch

from slimformer.engines.block_quantizers import smooth_layer
from testkit.tiny_models import VOCAB, tiny_model


def _model_with_outliers():
    """A tiny Llama whose norms feed q/k/v and gate/up a few channels 40 times larger than the
    rest (what real LLMs do), the readers' columns shrunk to match: the same function as before."""
    torch.manual_seed(0)
    model = tiny_model("llama", "causal-lm", hidden_size=64, head_dim=16, intermediate_size=128)
    model = model.float().eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, readers in (
                (layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                (layer.post_attention_layernorm, ("gate_proj", "up_proj")),
            ):
                norm.weight[[3, 17]] *= 40
                parent = layer.self_attn if readers[0] == "q_proj" else layer.mlp
                for name in readers:
                    getattr(parent, name).weight[:, [3, 17]] /= 40
    return model


def smooth(model, windows: list[list[int]], alpha: float) -> int:
    """Each layer smoothed in turn on what the whole model feeds it (the engine runs each block
    on its calibration states; a float model's function does not change, so neither do the
    later layers' inputs)."""

    def forward():
        with torch.no_grad():
            for window in windows:
                model(input_ids=torch.tensor([window]))

    return sum(smooth_layer(layer, forward, alpha) for layer in model.model.layers)


def _windows(count: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (count, 32), generator=gen).tolist()


def _int8_per_token(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
    return (x / scale).round().clamp(-128, 127) * scale


def _activation_error(model, windows) -> float:
    """Relative error per-token int8 rounding leaves in the inputs of q_proj and gate_proj (the
    readers of the norms given outliers)."""
    errors = []

    def hook(module, args):
        x = args[0].float()
        errors.append(float((_int8_per_token(x) - x).norm() / x.norm()))

    names = ("q_proj", "gate_proj")
    hooks = [
        m.register_forward_pre_hook(hook) for n, m in model.named_modules() if n.endswith(names)
    ]
    with torch.no_grad():
        for window in windows:
            model(input_ids=torch.tensor([window]))
    for h in hooks:
        h.remove()
    return sum(errors) / len(errors)


def test_smoothing_keeps_the_float_model_and_shrinks_int8_activation_error():
    model, probe = _model_with_outliers(), torch.tensor(_windows(2, seed=5))
    with torch.no_grad():
        before = model(input_ids=probe).logits
    error_before = _activation_error(model, _windows(4, seed=6))
    groups = smooth(model, _windows(8, seed=7), alpha=0.5)
    assert groups == 3 * len(model.model.layers)  # q/k/v, gate/up and down in every layer
    with torch.no_grad():
        after = model(input_ids=probe).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # the outlier channels are tamed in the norms' output: half the rounding error or less
    assert _activation_error(model, _windows(4, seed=6)) < error_before / 2


def test_layers_without_attention_are_smoothed_where_they_can_be():
    """A layer whose attention was removed (nemotron_nas: its input norm an Identity) keeps only
    the FFN's groups; nothing fails."""
    model = _model_with_outliers()
    model.model.layers[0].input_layernorm = torch.nn.Identity()
    with torch.no_grad():
        before = model(input_ids=torch.tensor(_windows(1, seed=1))).logits
    groups = smooth(model, _windows(4, seed=2), alpha=0.5)
    assert groups == 3 * len(model.model.layers) - 1
    with torch.no_grad():
        after = model(input_ids=torch.tensor(_windows(1, seed=1))).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_a_migration_strength_outside_0_to_1_is_refused(alpha):
    with pytest.raises(ValueError, match="smoothing"):
        smooth(_model_with_outliers(), _windows(1, seed=0), alpha=alpha)


def _logprob_gap(a: dict, b: dict) -> float:
    pairs = [
        (x, y)
        for wa, wb in zip(a["logprobs"], b["logprobs"], strict=True)
        for x, y in zip(wa, wb, strict=True)
    ]
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def test_a_smoothed_w8a8_folder_stays_closer_to_the_float_model(tmp_path):
    """End to end in the gptq engine: on a model with outlier channels, the w8a8 folder written
    with smoothing (the default) predicts closer to the bfloat16 model than plain
    round-to-nearest, and the record says which was used."""
    from slimformer.engines import EngineMissing, engine_python
    from slimformer.engines.quantize import W8A8_SMOOTHING, quantize_folder, quantized_scores

    try:
        engine_python("gptq")
    except EngineMissing as err:
        pytest.skip(f"the gptq engine is not built (make engines): {err}")
    folder = tmp_path / "model"
    _model_with_outliers().save_pretrained(folder)
    calibration, probe = _windows(8, seed=7), _windows(2, seed=8)
    base = quantized_scores(folder, None, probe=probe)["probe"]
    gaps = {}
    for smoothing in (W8A8_SMOOTHING, 0):
        out = tmp_path / f"w8a8-{smoothing}"
        record = quantize_folder(
            folder, "w8a8", calibration, blocks="model.layers", out=out, smoothing=smoothing
        )
        assert record["smoothing"] == (smoothing or None)
        gaps[smoothing] = _logprob_gap(quantized_scores(out, None, probe=probe)["probe"], base)
    assert gaps[W8A8_SMOOTHING] < gaps[0] / 2, gaps
