"""Serving engines outside PyTorch: GGUF export with llama.cpp's own tools, and measurements in
llama.cpp and vLLM.

Each engine lives in a virtual environment of its own (vLLM pins its own transformers; llama.cpp is
compiled from source), built by ``deploy/engines/<name>.sh`` (``make engines``) under
``$SLIMFORMER_ENGINES`` (default ``~/.cache/slimformer/engines``). slimformer never imports an
engine: it runs the engine's Python in a subprocess with a short script of ours and reads JSON back
(:mod:`~slimformer.engines.runtime`). Inside :func:`kept_engines`, vLLM measurements share one such
process instead of starting one each (importing vLLM and shutting it down take most of a call on a
small model).

GGUF files are written by llama.cpp's converter (``convert_hf_to_gguf.py``, which ships with the
llama.cpp source inside llama-cpp-python's source distribution): F16 and Q8_0 directly, Q4_K_M by
llama.cpp's quantizer (``llama_model_quantize``) from the F16 file
(:mod:`~slimformer.engines.llama_cpp`). The converter reads stock configs (the ``uniform`` layout
and depth-pruned models of the Llama, Mistral and Qwen2/3 families) and the ``nemotron_nas``
layout (``DeciLMForCausalLM``, per-layer shapes in ``block_configs``), which vLLM also serves
(:mod:`~slimformer.engines.vllm`).

Quantized copies of a written folder (``export.quantize``) are made in the ``gptq`` engine:
``gptq-int4`` through transformers' ``GPTQConfig`` (optimum.gptq over gptqmodel) and ``w8a8`` in
compressed-tensors' format, each reloaded in a fresh process before it counts
(:mod:`~slimformer.engines.quantize`; the engine's own script is
:mod:`~slimformer.engines.gptq_engine`).
"""

from slimformer.engines.llama_cpp import (
    GGUF_TYPES,
    check_gguf_convertible,
    export_gguf,
    llama_cpp_scores,
)
from slimformer.engines.quantize import QUANTIZED_DIR, quantize_folder
from slimformer.engines.runtime import (
    ENGINES,
    EngineMissing,
    engine_python,
    engines_home,
    kept_engines,
)
from slimformer.engines.vllm import VLLM_NO_INT4, vllm_scores, vllm_serves_int4

__all__ = [
    "ENGINES",
    "GGUF_TYPES",
    "QUANTIZED_DIR",
    "EngineMissing",
    "check_gguf_convertible",
    "engine_python",
    "engines_home",
    "export_gguf",
    "kept_engines",
    "llama_cpp_scores",
    "quantize_folder",
    "vllm_scores",
    "vllm_serves_int4",
    "VLLM_NO_INT4",
]
