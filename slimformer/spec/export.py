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
