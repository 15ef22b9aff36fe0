"""Runs inside the gptq engine environment (imported by ``gptq_engine.py``): a causal LM quantized
one block at a time from its files (:class:`block_stream.BlockStream`), written block by block.

* :func:`gptq_int4`: ``optimum.gptq``'s own quantizer (built from transformers' ``GPTQConfig`` as
  transformers builds it) and its steps, block by block: each linear's Hessian gathered from the
  block's calibration inputs with gptqmodel's ``GPTQ`` (true-sequential: one linear at a time,
  each seeing the ones before it quantized), the block's outputs with its quantized weights as the
  next block's inputs, the block's linears packed by optimum's quant-linear kernel and written.
  optimum's ``quantize_model`` does the same steps over a model loaded whole and packs every
  block at the end; the tensors written are the same (``tests/test_quantize.py``).
* :func:`w8a8`: SmoothQuant-style smoothing from the block's float32 calibration activations
  (:func:`smooth_layer`), int8 weights per output channel (round to nearest) with dynamic int8
  activations per token, compressed by compressed-tensors into its ``int-quantized`` format.

Each also carries the probe windows through the quantized blocks, so the written model's outputs
are known without holding it whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the engine imports block_stream from this folder (it runs as a script there)
    from block_stream import BlockStream, ShardWriter


@torch.no_grad()
def _run(block: nn.Module, args: list[tuple], kwargs: list[dict]) -> list:
    return [block(*a, **k) for a, k in zip(args, kwargs, strict=True)]


def _write_block(writer: ShardWriter, stream: BlockStream, index: int, block: nn.Module) -> None:
    prefix = f"{stream.prefix}{index}."
    writer.add({prefix + name: t for name, t in block.state_dict().items()})


def _write_outside(writer: ShardWriter, stream: BlockStream, dtype: torch.dtype) -> None:
    writer.add({n: t.to(dtype) if t.is_floating_point() else t for n, t in stream.outside.items()})


@torch.no_grad()
def gptq_int4(request: dict, quantizer, writer: ShardWriter) -> dict:
    """Quantize ``request["model"]`` into ``writer`` with optimum's ``quantizer`` (a
    ``GPTQQuantizer``). Answers the probe's logits and the written quantization config (as
    optimum states it once it has quantized a model)."""
    from block_stream import BlockStream, primary
    from gptqmodel.quantization import GPTQ
    from optimum.gptq.utils import get_layers

    quantizer.format = "gptq_v2"  # as optimum's quantize_model: gptqmodel's internal format
    quantizer.select_quant_linear(device_map={"": torch.device("cpu")}, pack=True)
    stream = BlockStream(request, torch.bfloat16)
    calibration = _windows(request["calibration"])
    args, kwargs = stream.first_inputs(calibration)
    probe_args, probe_kwargs = stream.first_inputs(request["probe"])
    as_tuple = False
    for index in range(len(stream)):
        block = stream.load(index)
        layers = get_layers(block)
        subsets = quantizer.modules_in_block_to_quantize or [[name] for name in layers]
        if not quantizer.true_sequential:
            subsets = [sum(subsets, [])]
        found: dict = {}
        for subset in subsets:
            gptq = {name: GPTQ(layers[name], qcfg=quantizer.quantizeConfig) for name in subset}
            hooks = []
            for name in subset:
                gptq[name].quantizer.configure(
                    bits=quantizer.bits, sym=quantizer.sym, perchannel=True
                )
                hooks.append(layers[name].register_forward_hook(_gather(gptq[name])))
            _run(block, args, kwargs)
            for hook in hooks:
                hook.remove()
            for name in subset:  # sets the layer's weight to its quantized values
                scale, zero, g_idx = gptq[name].fasterquant(
                    percdamp=quantizer.damp_percent,
                    group_size=quantizer.group_size,
                    actorder=quantizer.desc_act,
                )[:3]
                found[name] = (scale, zero, g_idx)
                gptq[name].free()
        outputs = _run(block, args, kwargs)
        as_tuple = isinstance(outputs[0], (tuple, list))
        args = [(primary(out), *a[1:]) for out, a in zip(outputs, args, strict=True)]
        quantizer._replace_by_quant_layers(block, list(found))
        packed = get_layers(block, [quantizer.quant_linear])
        for name, (scale, zero, g_idx) in found.items():
            packed[name].pack(layers[name], scale, zero, g_idx)
        _write_block(writer, stream, index, block)  # before a forward pass: it repacks
        # the probe through the packed kernels, as a reload runs them
        quantizer.post_init_model(block)
        block.eval()  # the new quant linears start in training mode, a kernel path of its own
        probe = _run(block, probe_args, probe_kwargs)
        probe_args = [(primary(out), *a[1:]) for out, a in zip(probe, probe_args, strict=True)]
        del layers, packed, found
        stream.free(index)
    _write_outside(writer, stream, torch.bfloat16)
    logits = stream.head([a[0] for a in probe_args], request["probe"], as_tuple=as_tuple)
    return {"logits": logits, "config": quantizer.to_dict()}


def _gather(gptq):
    def hook(module, inputs, output):
        gptq.add_batch(inputs[0].data, output.data)

    return hook


def _windows(path: str) -> list[list[int]]:
    import json
    from pathlib import Path

    return json.loads(Path(path).read_text())


# the linears that read one module's output, in llama-like blocks: (that module, its readers)
SMOOTHED = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)


def smoothing_pairs(layer: nn.Module) -> list:
    """(source, [linears]) where dividing the source's output channels by a scale and multiplying
    the linears' input columns by it leaves the float model unchanged: a norm's weight (and bias)
    before q/k/v or gate/up, and ``up_proj``'s rows before ``down_proj`` (SwiGLU multiplies
    ``up_proj``'s output elementwise). Layers without these modules (attention removed, other
    families) are left as they are."""
    pairs = []
    for source_name, reader_names in SMOOTHED:
        try:
            source = layer.get_submodule(source_name)
            readers = [layer.get_submodule(name) for name in reader_names]
        except AttributeError:
            continue
        linear = all(isinstance(m, nn.Linear) for m in readers)
        if linear and isinstance(getattr(source, "weight", None), torch.Tensor):
            pairs.append((source, readers))
    return pairs


@torch.no_grad()
def smooth_layer(layer: nn.Module, forward, alpha: float) -> int:
    """SmoothQuant on one block: per input channel j of each group of linears that read one
    module's output, s_j = max|x_j|^alpha / max|W_:j|^(1-alpha) over what ``forward()`` (the
    calibration run through the block) feeds them; the linears' columns are multiplied by s and
    the source's output divided by it, moving activation outliers (which per-token int8 rounds
    badly) into the weights (which per-channel int8 holds). The float block computes the same
    function. Answers how many groups were smoothed."""
    if not 0 < alpha <= 1:
        raise ValueError(f"smoothing strength {alpha} is outside (0, 1]")
    pairs = smoothing_pairs(layer)
    peaks: dict = {}

    def record(module, args):
        x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float()
        peaks[module] = torch.maximum(peaks[module], x) if module in peaks else x

    hooks = [readers[0].register_forward_pre_hook(record) for _, readers in pairs]
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()
    for source, readers in pairs:
        weight_peak = torch.stack([m.weight.abs().amax(0).float() for m in readers]).amax(0)
        scale = peaks[readers[0]].clamp(min=1e-5).pow(alpha) / weight_peak.clamp(min=1e-5).pow(
            1 - alpha
        )
        scale = scale.clamp(min=1e-5)
        for module in readers:
            module.weight.copy_((module.weight.float() * scale).to(module.weight.dtype))
        if isinstance(source, nn.Linear):  # up_proj: its output rows
            source.weight.copy_((source.weight.float() / scale[:, None]).to(source.weight.dtype))
            if source.bias is not None:
                source.bias.copy_((source.bias.float() / scale).to(source.bias.dtype))
        else:  # a norm: its elementwise weight (and bias)
            source.weight.copy_((source.weight.float() / scale).to(source.weight.dtype))
            if getattr(source, "bias", None) is not None:
                source.bias.copy_((source.bias.float() / scale).to(source.bias.dtype))
    return len(pairs)


def _into(outputs: list, block: nn.Module, args: list[tuple], kwargs: list[dict]):
    """The calibration run through ``block``, its outputs kept in ``outputs``."""
    return lambda: outputs.extend(_run(block, args, kwargs))


def _freeze_int8(block: nn.Module) -> None:
    """Each quantized linear's per-channel scale and zero point from its (bfloat16) weights."""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.utils import calculate_qparams

    for module in block.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None:
            continue
        weight = module.weight.float()
        scale, zero = calculate_qparams(
            weight.amin(1, keepdim=True), weight.amax(1, keepdim=True), scheme.weights
        )
        module.weight_scale.copy_(scale.to(module.weight_scale.dtype))
        module.weight_zero_point.copy_(zero.to(module.weight_zero_point.dtype))
        module.quantization_status = QuantizationStatus.FROZEN


@torch.no_grad()
def w8a8(request: dict, writer: ShardWriter) -> dict:
    """int8 weights per channel, dynamic int8 activations per token, in compressed-tensors'
    ``int-quantized`` format; smoothed first (strength ``request["smoothing"]``) on float32
    calibration states when asked. Answers the probe's logits, the number of groups smoothed
    and the compressor (whose config the folder's ``config.json`` gets)."""
    from block_stream import BlockStream, primary
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )

    alpha = request.get("smoothing")
    # the blocks and their calibration states in float32 while smoothing (bfloat16 matmuls are
    # slow on most CPUs; the scales are folded in before the one rounding to bfloat16); what lies
    # outside the blocks in bfloat16, as written (the embeddings' values are the same in both)
    stream = BlockStream(request, torch.bfloat16)
    calibration = _windows(request["calibration"]) if alpha else []
    args, kwargs = stream.first_inputs(calibration, torch.float32)
    probe_args, probe_kwargs = stream.first_inputs(request["probe"])
    config = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme("W8A8", ["Linear"])}
    )
    smoothed, as_tuple = 0, False
    for index in range(len(stream)):
        block = stream.load(index, torch.float32 if alpha else torch.bfloat16)
        if alpha:
            outputs: list = []
            smoothed += smooth_layer(block, _into(outputs, block, args, kwargs), alpha)
            args = [(primary(out), *a[1:]) for out, a in zip(outputs, args, strict=True)]
            for param in block.parameters():  # the weights only: buffers stay float32
                param.data = param.data.to(torch.bfloat16)
        apply_quantization_config(block, config, show_progress=False)
        _freeze_int8(block)
        probe = _run(block, probe_args, probe_kwargs)
        as_tuple = isinstance(probe[0], (tuple, list))
        probe_args = [(primary(out), *a[1:]) for out, a in zip(probe, probe_args, strict=True)]
        ModelCompressor(force_compression_format="int-quantized").compress_model(block)
        _write_block(writer, stream, index, block)
        stream.free(index, keep_modules=True)  # their schemes make the written config
    _write_outside(writer, stream, torch.bfloat16)
    logits = stream.head([a[0] for a in probe_args], request["probe"], as_tuple=as_tuple)
    # the blocks keep their schemes on the meta device: the config reads them (the head and
    # anything else outside the blocks is named in its ignore list, as for a whole model)
    compressor = ModelCompressor.from_pretrained_model(
        stream.model, quantization_format="int-quantized"
    )
    compressor.quantization_config.quantization_status = QuantizationStatus.COMPRESSED
    return {"logits": logits, "smoothed": smoothed, "compressor": compressor}
