"""The report's ``artifacts``: the written folder, its served files and quantized copies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from slimformer.report.base import Number, _Open, _optional


class OnnxInt8(_Open):
    """onnxruntime's dynamic int8 quantization of model.onnx."""

    path: str
    size_bytes: int
    float_size_bytes: int
    max_abs_diff: Number = Field(description="Largest output difference from the float graph")
    top1_agreement: Number | None = Field(
        None, description="Share of identical top-1 predictions on the first evaluation batch"
    )


class OnnxInfo(_Open):
    """The compressed model exported to ONNX."""

    path: str
    inputs: list[str]
    max_abs_diff: Number = Field(description="Largest output difference from PyTorch")
    int8: OnnxInt8 | None = _optional("The int8 graph (evaluation.onnx_int8)")


class VllmInfo(_Open):
    """The folder loaded by vLLM's CPU build."""

    perplexity: Number = Field(description="On the evaluation windows")
    next_token_accuracy: Number = Field(description="On the evaluation windows")
    load_seconds: Number
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class GgufFile(_Open):
    """A GGUF file written by llama.cpp's tools."""

    type: str = Field(description="The GGUF type, e.g. f16 or q8_0")
    file: str = Field(description="The path in the folder")
    size_bytes: int
    seconds: Number | None = _optional("Time to write it")
    perplexity: Number | None = _optional("In llama.cpp on the evaluation windows (causal LMs)")
    next_token_accuracy: Number | None = _optional("In llama.cpp on the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class QuantizedServed(_Open):
    """A quantized folder loaded by vLLM's CPU build."""

    perplexity: Number = Field(description="On the evaluation windows")
    next_token_accuracy: Number = Field(description="On the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    tokens_per_s: Number | None = _optional("One stream, when latency is on")


class QuantizedFolder(_Open):
    """A quantized copy of the model folder (export.quantize), reloaded in a fresh process."""

    method: Literal["gptq-int4", "w8a8"]
    path: str = Field(description="The folder, relative to the model folder")
    size_bytes: int = Field(description="Its weights on disk")
    seconds: Number = Field(description="Time to quantize and save it")
    peak_rss_bytes: int = Field(description="The quantizing process's peak resident memory")
    reload_agreement: Number = Field(
        description="The reload against the quantizing process on the probe windows: share of "
        "identical top-1 predictions (causal LMs) or cosine of the last hidden states"
    )
    group_size: int | None = _optional("gptq-int4: the group size")
    desc_act: bool | None = _optional("gptq-int4: act-order")
    damp_percent: Number | None = _optional(
        "gptq-int4: the Hessian dampening, a share of its mean diagonal"
    )
    clip_norm: Number | None = _optional(
        "gptq-int4: the norm of the rounding error each group's scale was searched to minimise "
        "(GPTQ's clipping search); 0: the scale fits the group's largest weight"
    )
    perplexity: Number | None = _optional("In transformers on the evaluation windows (causal LMs)")
    next_token_accuracy: Number | None = _optional("In transformers on the evaluation windows")
    measured_by: str | None = _optional("What measured it")
    vllm: QuantizedServed | None = _optional("The folder in vLLM (target vllm)")
    vllm_not_measured: str | None = _optional(
        "Why vLLM did not measure the folder though target vllm was asked (its CPU build has no "
        "4-bit kernel for a CPU without AVX-512)"
    )


def _files_required(schema: dict[str, Any]) -> None:
    schema["required"].append("files")


class ArtifactsInfo(_Open):
    """The folder: layout, sizes, served files."""

    # the card is built before ``files`` is known (it lists the card's own files); every written
    # report has it, so the schema requires it
    model_config = ConfigDict(json_schema_extra=_files_required)

    layout: Literal["per_layer", "uniform", "nemotron_nas"]
    per_layer: bool = Field(
        description="The folder ships modelling code (auto_map): per_layer and nemotron_nas"
    )
    config_reads_without_code: bool | None = _optional(
        "Stock transformers reads config.json without remote code, so the tokenizer loads without "
        "trust_remote_code (a per_layer folder allows it where a stock model class would be "
        "refused the weights; a nemotron_nas folder does not)"
    )
    targets: list[Literal["transformers", "vllm", "llama.cpp", "onnx"]] = Field(
        default_factory=list
    )
    vllm: VllmInfo | None = Field(
        None,
        description="The folder loaded by vLLM's CPU build: perplexity and next-token accuracy on "
        "the evaluation windows, load_seconds, tokens_per_s (one stream, when latency is on)",
    )
    gguf: list[GgufFile] | None = Field(
        None,
        description="GGUF files written by llama.cpp's tools, each with its size and (causal LMs) "
        "its perplexity in llama.cpp",
    )
    quantized: list[QuantizedFolder] | None = Field(
        None,
        description="Quantized copies of the folder (export.quantize), each with its size and "
        "(causal LMs) its perplexity in transformers and vLLM",
    )
    size_bytes: int
    original_size_bytes: int | None
    onnx: OnnxInfo | None
    files: list[str] | None = _optional("Every file in the folder")
