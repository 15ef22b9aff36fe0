"""Where the result goes: the targets it must load in and the files for serving engines
(``export``), and the Hub repo it is published to (``publish``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from slimformer.spec.base import _Strict, is_hub_id


class PublishSpec(_Strict):
    """Publish the result to the Hub (the token travels separately, never in the spec)."""

    repo_id: str = Field(..., description="Target repo, `org/name`.")
    private: bool = True
    create_pr: bool = False

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, value: str) -> str:
        if not is_hub_id(value) or "/" not in value:
            raise ValueError(f"{value!r} is not a Hub repo id (expected 'org/name')")
        return value


SERVING_TARGETS = ("vllm", "llama.cpp")
QuantizeMethod = Literal["gptq-int4", "w8a8"]


class ExportSpec(_Strict):
    """Where the result must load, and files for serving engines, written beside the model
    folder."""

    targets: list[Literal["transformers", "vllm", "llama.cpp", "onnx"]] = Field(
        default_factory=lambda: ["transformers"],
        description="Where the result must load; each target is checked by loading it there. "
        "transformers: the model folder (always written). vllm: vLLM's CPU build loads the folder "
        "and its perplexity is measured on the evaluation windows (causal LMs; `make engines`). "
        "llama.cpp: GGUF files (export.gguf, q8_0 when empty), each measured by llama.cpp. onnx: "
        "model.onnx checked with onnxruntime. vllm and llama.cpp read per-layer shapes only in the "
        "nemotron_nas layout, which an unset prune.layout then becomes.",
    )

    gguf: list[Literal["f16", "q8_0", "q4_k_m"]] = Field(
        default_factory=list,
        description="GGUF files for llama.cpp, written by llama.cpp's own converter and quantizer "
        "(the llama-cpp engine, `make engines`): a stock config (layout uniform, or layers "
        "dropped only) of the Llama, Mistral or Qwen2/3 family, or the nemotron_nas layout of a "
        "Llama; implies target llama.cpp. Causal LMs: each file's "
        "perplexity is measured by llama.cpp on the evaluation windows.",
    )

    quantize: list[QuantizeMethod] = Field(
        default_factory=list,
        description="Quantized copies of the written model, each a folder beside it "
        "(quantized/gptq-int4/, quantized/w8a8/) that transformers and vLLM load as it is, made "
        "in the gptq engine (`make engines`) and reloaded in a fresh process before they count. "
        "gptq-int4: 4-bit symmetric GPTQ through transformers' GPTQConfig (optimum over "
        "gptqmodel) on the job's calibration windows, group 32, Hessian dampening 0.01, each "
        "group's scale searched to minimise its rounding error (GPTQ's clipping search); pruning "
        "then keeps FFN widths multiples of 32 (heads are removed only where a head's dimension "
        "is one), and a width that is not one is refused before work. Encoders: BERT (the family "
        "whose GPTQ folder reloads; others are refused, pointing to --onnx-int8). w8a8: int8 "
        "weights per channel and int8 activations per token (compressed-tensors, what vLLM's CPU "
        "backend reads), smoothed first (SmoothQuant, strength 0.5, from the calibration "
        "windows, folded into the norms); decoders only. Causal LMs: each copy's perplexity is "
        "measured in transformers and, with target vllm, in vLLM.",
    )
