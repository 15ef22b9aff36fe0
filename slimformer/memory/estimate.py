"""How much memory a job needs, from the model's ``config.json`` alone, before any weight moves.

:func:`estimate_job_memory` adds up what a job holds at its peak. Pure arithmetic on the config
(no torch import), so a worker can refuse a job before downloading it.

Two paths (``B`` = bytes per weight on disk, ``W`` = parameters, ``V`` = vocabulary, ``h`` =
hidden size, ``f`` = FFN width, ``q`` = query heads x head_dim, ``T`` = window tokens):

Streamed (decoder LLMs, layer by layer; the peak is one layer's work on top of what stays):

- ``resident``: embeddings, the untied LM head and the final norm, in the checkpoint's dtype
  (``(V h (2 if untied) + h) B``). Assumed: the head stays in that dtype and each chunk's logits
  are upcast to float32 (``head_in_float32=True`` adds a float32 copy of the head: ``4 V h``).
- ``layer_float32``: the largest decoder layer, read from its shard and computed in float32, and
  its pruned copy while refitting: ``2 x 4 x layer parameters``.
- ``grams``: the Gram matrices of one layer's output projections' inputs, float32:
  ``4 ((f + 1)^2 + (q + 1)^2)`` (OBS, or any method with reconstruction; 0 otherwise).
- ``solve``: the float64 copy of the largest of them, damped, factored and solved in place
  (:func:`slimformer.reconstruction.damped_block`; LAPACK writes the Cholesky factor over it, so
  no second copy: 1.07 copies measured on a 6,000-wide Gram), and the output projection's weight
  in float64: ``copies x 8 (f + 1)^2 + 8 h f`` with :data:`SOLVE_FLOAT64_COPIES` = 1.
- ``calibration_states``: the calibration hidden states flowing layer to layer, float32:
  ``4 windows T h``.
- ``eval_states``: the side-by-side evaluation's two sets (original and compressed):
  ``2 x 4 x eval_windows T h``. Both sets of states are kept in files, one window of each in
  memory, when they would take more than :data:`STATES_SHARE` of the available memory or the job
  would not fit otherwise (:func:`states_go_to_files`): then ``windows`` counts 1.
- ``head_chunk``: the float32 logits of one chunk of :data:`HEAD_CHUNK_TOKENS` tokens:
  ``4 x 1024 V``. A layer's own activations over such a chunk are smaller and never live at the
  same time (the head runs after the layers), so this term bounds both.
- ``runtime``: :data:`STREAMED_RUNTIME_BYTES` (0.6 GiB): Python, torch, transformers, tokenizers,
  the data. Measured as the peak less the other parts: 0.50 GB on SmolLM2-135M with the defaults,
  0.63 GB on the 1B shape (``bench/llm_memory.py``); with 0.7 GiB the estimate lay 5–27% above
  the measured peaks (SmolLM2 at 16 evaluation windows the 27%), with 0.6 GiB 0.5–15% (SmolLM2,
  1B, 3B and 8B shapes, ``docs/benchmarks.md``).

In memory (encoders, distillation, Michel importance; today's path for every job):

- ``weights``: :data:`IN_MEMORY_WEIGHT_COPIES` (2.45) x the float32 weights: the model, the
  original's copy for the side-by-side evaluation, and transient copies while loading and pruning.
  Fitted to ``bench/llm_memory.py`` (``--heads .25 --ffn .25``, OBS, 4 windows, float32; peak RSS
  of the command): 1.1B (TinyLlama shape) measured 14.97 GiB, estimated 15.12 (+1%); 0.5B (402M)
  measured 6.91, estimated 7.63 (+10%); SmolLM2-135M measured 2.20, estimated 2.70 (+23%: the
  fixed runtime dominates).
- ``grams``: every layer's Gram matrices (they are kept for the refit); ``solve`` and ``head_chunk``
  as above; ``runtime`` :data:`RUNTIME_BYTES` (1 GiB, fitted with the weights' factor). The number
  of windows does not change the peak (losses and statistics are summed per batch).
- ``backward`` (Michel, distillation): activations kept for a backward pass over a micro-batch of
  :data:`HEAD_CHUNK_TOKENS` tokens, ``4 x 1024 x layers (2 h + f)``, plus, when distilling, the
  teacher's and the gradient's logits (2 more head chunks).
- ``optimizer`` (distillation): AdamW's gradients and two moments, ``3 x 4 W`` (the student is at
  most the original).

Quantized copies (``export.quantize``), both paths: ``quantizer``, the quantizing engine's process
once the folder is written (:func:`quantizer_bytes`: a causal LM block by block from the written
files, the embeddings and head resident; an encoder whole), less what the job gives back by then
(layer by layer, the layer's work and any downstream model; in memory nothing: the models stay).
Llama-3.1-8B's shape: 7.1 GiB for gptq-int4, 4.7 for w8a8 (the job streams within 8.35 GiB; with
gptq-int4 it needs 9.6, its resident parts waiting beside the engine).

What the models need (real configs; OBS; checkpoint dtype as published; 32 calibration and 64
evaluation windows of 512 tokens, the causal-LM defaults; in brackets 16 and 16), GiB:

| model        | checkpoint             | params | streamed  | in memory |
|--------------|------------------------|-------:|----------:|----------:|
| SmolLM2-135M | float32, V 49152, tied |   135M | 1.0 (0.9) |       2.6 |
| Qwen2.5-0.5B | bf16, V 151936, tied   |   494M | 1.7 (1.5) |       8.1 |
| Llama-3.2-1B | bf16, V 128256, tied   |  1.24B | 3.2 (2.7) |      17.3 |
| Llama-3.2-3B | bf16, V 128256, tied   |  3.21B | 4.1 (3.5) |      39.1 |
| Llama-3.1-8B | bf16, V 128256, untied |  8.03B | 8.4 (7.5) |     102.9 |

The 8B's streamed peak is the resident embeddings and head (1.96), one layer twice in float32
(1.63), its Gram matrices (0.83) and their solve (1.97: one float64 copy of the FFN's 14,337-wide
Gram matrix and the down projection), the calibration (0.25) and evaluation (1.0) states, a head
chunk and the runtime (0.6); with 16 evaluation windows, or its states in files, under 8 GiB.

"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from slimformer.families import FAMILIES

GIB = 1024**3
HEAD_CHUNK_TOKENS = 256  # tokens whose logits are computed at once (LM head, backward batches)
RUNTIME_BYTES = GIB  # in memory: Python, torch, tokenizers, the data (fitted with the weights')
STREAMED_RUNTIME_BYTES = int(0.6 * GIB)  # layer by layer: the same, measured (0.50-0.63 GB)
# the quantizing engine's process before any model (Python, torch, transformers, and optimum with
# gptqmodel for GPTQ or compressed-tensors for W8A8): measured 0.50 and 0.40 GiB before any model;
# with what else a model brings that is not counted below (allocator slack, the probe's logits),
# fitted so that the measured peaks of SmolLM2's and Llama-3.2-1B's shapes are covered
# (bench/quantize_memory.py: 0.74 / 0.66 and 2.28 / 1.42 GiB, estimated 0.75 / 0.67 and 2.39 / 1.46)
ENGINE_RUNTIME_BYTES = {"gptq-int4": int(0.58 * GIB), "w8a8": int(0.47 * GIB)}
# the quantizing engine's block-by-block work: copies of the largest linear's float32 Hessian
# gptqmodel keeps while it solves (the matrix, its Cholesky inverse, a damped retry), float32
# copies of that linear's weights (the weights, their quantized values, the error), the bytes of
# finished blocks waiting to be written (the engine's shard size)
GPTQ_HESSIAN_COPIES = 3
GPTQ_WEIGHT_COPIES = 4
QUANTIZER_SHARD_BYTES = 512 * 1024**2
IN_MEMORY_WEIGHT_COPIES = 2.45  # float32 copies of the weights at the in-memory peak (fitted)
# float64 copies of the largest Gram matrix alive while it is solved: one, factored in place
SOLVE_FLOAT64_COPIES = 1.0
# the share of the available memory the streamed path's hidden states may take before they are
# kept in files (one window of each set in memory)
STATES_SHARE = 0.25
GRAM_METHODS = frozenset({"obs"})  # importance methods that measure Gram matrices
BACKWARD_METHODS = frozenset({"michel"})  # importance methods with a backward pass

Path_ = Literal["streamed", "in_memory"]

# families whose MLP has one up projection (no gate): BERT-like encoders and GPT-2, with biases
# everywhere and learned position embeddings; the registry says which
_UNGATED = frozenset(f.name for f in FAMILIES.values() if len(f.up_projections) == 1)
_ENCODERS = frozenset(f.name for f in FAMILIES.values() if not f.decoder)
# config key aliases (DistilBERT, GPT-2)
_KEYS = {
    "hidden": ("hidden_size", "dim", "n_embd"),
    "ffn": ("intermediate_size", "hidden_dim", "n_inner"),
    "layers": ("num_hidden_layers", "n_layers", "n_layer"),
    "heads": ("num_attention_heads", "n_heads", "n_head"),
}


def _get(config: Mapping, name: str):
    for key in _KEYS[name]:
        if config.get(key) is not None:
            return config[key]
    return None


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a config: sizes of the largest layer, the vocabulary, the
    head. Per-layer configs (a pruned ``per_layer`` or Nemotron-NAS model) are read at their
    top-level sizes, an upper bound."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    gated: bool = True  # SwiGLU MLP: gate, up and down projections
    biases: bool = False  # every projection has a bias (BERT-like, GPT-2)
    causal: bool = True  # a causal LM: its evaluation computes logits over the vocabulary
    positions: int = 0  # learned position (and token type) embeddings (BERT-like, GPT-2)

    @classmethod
    def from_config(cls, config: Mapping) -> ModelShape:
        """Read a ``config.json`` dict (a multimodal one's ``text_config``)."""
        if _get(config, "hidden") is None and isinstance(config.get("text_config"), Mapping):
            config = {**config["text_config"], "architectures": config.get("architectures")}
        model_type = config.get("model_type", "")
        sizes = {name: _get(config, name) for name in ("hidden", "layers", "heads")}
        if missing := [name for name, value in sizes.items() if not value]:
            raise ValueError(f"config.json gives no {', '.join(missing)} size")
        hidden, layers, heads = sizes["hidden"], sizes["layers"], sizes["heads"]
        ffn = _get(config, "ffn") or 4 * hidden
        architectures = config.get("architectures") or []
        causal = model_type not in _ENCODERS and (
            not architectures or any("CausalLM" in a or "LMHead" in a for a in architectures)
        )
        positions = 0
        if model_type in _UNGATED:
            positions = config.get("max_position_embeddings") or config.get("n_positions") or 0
            positions += config.get("type_vocab_size") or 0
        return cls(
            hidden=hidden,
            ffn=ffn,
            layers=layers,
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            vocab=config.get("vocab_size") or 0,
            tied=bool(config.get("tie_word_embeddings", True)),
            gated=model_type not in _UNGATED,
            biases=model_type in _UNGATED,
            causal=causal,
            positions=positions,
        )

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    def layer_parameters(self) -> int:
        """Weights of one decoder layer: q, k, v, o, the MLP's projections and the norms."""
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * (2 * self.q_width + 2 * kv)
        mlp = (3 if self.gated else 2) * self.hidden * self.ffn
        norms = 2 * self.hidden * (2 if self.biases else 1)
        biases = (self.q_width + 2 * kv + 2 * self.hidden + self.ffn) if self.biases else 0
        return attention + mlp + norms + biases

    def embedding_parameters(self) -> int:
        """Token (and position) embeddings and the final norm."""
        return (self.vocab + self.positions) * self.hidden + self.hidden

    def head_parameters(self) -> int:
        """The LM head's own weights: none when tied to the embeddings or not a causal LM."""
        return 0 if self.tied or not self.causal else self.vocab * self.hidden

    def parameters(self) -> int:
        return (
            self.layers * self.layer_parameters()
            + self.embedding_parameters()
            + self.head_parameters()
        )

    def gram_bytes(self) -> int:
        """One layer's Gram matrices, float32: the inputs of o_proj and down_proj, with a 1."""
        return 4 * ((self.ffn + 1) ** 2 + (self.q_width + 1) ** 2)


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's estimated peak memory: ``total_bytes`` and what makes it up (``breakdown``, bytes
    by part), with the inputs it was computed from (so :func:`check_fits` can say what fits)."""

    total_bytes: int
    breakdown: dict[str, int]
    path: Path_
    shape: ModelShape
    job: dict = field(default_factory=dict)  # dtype_bytes, windows, method, distill

    def to_dict(self) -> dict:
        """For reports and cards: bytes, GiB and the assumptions behind them."""
        return {
            "path": self.path,
            "total_bytes": self.total_bytes,
            "total_gib": round(self.total_bytes / GIB, 2),
            "breakdown": dict(self.breakdown),
            "parameters": self.shape.parameters(),
            **self.job,
        }


def estimate_job_memory(
    config: Mapping | ModelShape,
    *,
    dtype_bytes: int,
    calibration_windows: int,
    eval_windows: int,
    window_tokens: int,
    path: Path_,
    method: str,
    distill: bool = False,
    reconstruction: bool | None = None,
    head_in_float32: bool = False,
    solve_copies: float = SOLVE_FLOAT64_COPIES,
    spill_states: bool = False,
    downstream_tasks: bool = False,
    quantize: tuple[str, ...] = (),
) -> MemoryEstimate:
    """The peak memory of a job on ``config`` (a ``config.json`` dict, or its :class:`ModelShape`);
    see the module's docstring for each part and the numbers of common models.

    Args:
        dtype_bytes: bytes per weight in the checkpoint (2 for bfloat16; see :func:`dtype_bytes`).
        calibration_windows, eval_windows, window_tokens: the job's data (windows of packed text).
        path: ``streamed`` (layer by layer) or ``in_memory``.
        method: the importance method (``obs`` measures Gram matrices; ``michel`` needs a backward
            pass, so the in-memory path).
        distill: the job distils (in memory: teacher, student and AdamW's state).
        reconstruction: the refit measures Gram matrices; None: for ``obs`` only (the spec's
            default).
        head_in_float32: the streamed path keeps a float32 copy of the LM head.
        solve_copies: float64 copies of the largest Gram matrix alive while it is solved
            (:data:`SOLVE_FLOAT64_COPIES`).
        spill_states: the streamed path keeps its hidden states in files, one window of each
            set in memory (:func:`states_go_to_files`).
        downstream_tasks: the job runs lm-eval tasks; layer by layer that loads each model
            whole, in the checkpoint's dtype, after the layers are done (``downstream_model``:
            what that needs beyond the layer's work, which is over by then).
        quantize: ``export.quantize``'s methods (``quantizer``: :func:`quantizer_bytes`).

    Raises:
        ValueError: a streamed job that distils or uses Michel importance (both need the whole
            model), or a config without the sizes.

    Example::

        estimate_job_memory(config, dtype_bytes=2, calibration_windows=32, eval_windows=64,
                            window_tokens=512, path="streamed", method="obs").total_bytes / GIB
    """
    shape = config if isinstance(config, ModelShape) else ModelShape.from_config(config)
    if path not in ("streamed", "in_memory"):
        raise ValueError(f"path is 'streamed' or 'in_memory', not {path!r}")
    if path == "streamed" and (distill or method in BACKWARD_METHODS or not shape.causal):
        raise ValueError(
            "only the pruning of a causal LM without michel importance streams: distillation, "
            "michel and encoders need the whole model (estimate them with path='in_memory')"
        )
    job = {
        "dtype_bytes": dtype_bytes,
        "calibration_windows": calibration_windows,
        "eval_windows": eval_windows,
        "window_tokens": window_tokens,
        "method": method,
        "distill": distill,
        "reconstruction": method in GRAM_METHODS or bool(reconstruction),
        "head_in_float32": head_in_float32,
        "solve_copies": solve_copies,
        "spill_states": spill_states and path == "streamed",
        "downstream_tasks": downstream_tasks,
        "quantize": list(quantize),
    }
    parts = _streamed_parts if path == "streamed" else _in_memory_parts
    runtime = STREAMED_RUNTIME_BYTES if path == "streamed" else RUNTIME_BYTES
    breakdown = {**parts(shape, job), "runtime": runtime}
    return MemoryEstimate(sum(breakdown.values()), breakdown, path, shape, job)


def _solve_and_head(shape: ModelShape, job: dict) -> tuple[int, int]:
    """The float64 copies of the largest Gram matrix while it is solved, and one head chunk."""
    largest_gram = max(shape.ffn + 1, shape.q_width + 1) ** 2
    weight64 = 8 * shape.hidden * max(shape.ffn, shape.q_width)  # the projection in float64
    solve = math.ceil(job["solve_copies"] * 8 * largest_gram) + weight64
    solve = solve if job["reconstruction"] else 0
    head_chunk = 4 * HEAD_CHUNK_TOKENS * shape.vocab if shape.causal else 0
    return solve, head_chunk


def _streamed_parts(shape: ModelShape, job: dict) -> dict[str, int]:
    solve, head_chunk = _solve_and_head(shape, job)
    state = 4 * job["window_tokens"] * shape.hidden  # one window's hidden states, float32
    head32 = 4 * shape.vocab * shape.hidden if job["head_in_float32"] else 0
    spilled = job.get("spill_states", False)
    resident = shape.embedding_parameters() + shape.head_parameters()
    parts = {
        "resident": resident * job["dtype_bytes"] + head32,
        "layer_float32": 2 * 4 * shape.layer_parameters(),
        "grams": shape.gram_bytes() if job["reconstruction"] else 0,
        "solve": solve,
        "calibration_states": (1 if spilled else job["calibration_windows"]) * state,
        "eval_states": 2 * (1 if spilled else job["eval_windows"]) * state,
        "head_chunk": head_chunk,
    }
    if job.get("downstream_tasks"):  # one whole model once the layers are done
        layer_work = sum(v for k, v in parts.items() if k != "resident")
        whole = job["dtype_bytes"] * shape.parameters()  # loaded in the checkpoint's dtype
        parts["downstream_model"] = max(0, whole - layer_work)
    if job.get("quantize"):  # another process, once the layers (and any tasks) are done
        given_back = sum(v for k, v in parts.items() if k != "resident")
        parts["quantizer"] = max(0, quantizer_bytes(shape, job) - given_back)
    return parts


def _in_memory_parts(shape: ModelShape, job: dict) -> dict[str, int]:
    solve, head_chunk = _solve_and_head(shape, job)
    weights32 = 4 * shape.parameters()
    backward = 0
    if job["distill"] or job["method"] in BACKWARD_METHODS:
        backward = 4 * HEAD_CHUNK_TOKENS * shape.layers * (2 * shape.hidden + shape.ffn)
        backward += 2 * head_chunk if job["distill"] else 0
    return {
        "weights": math.ceil(IN_MEMORY_WEIGHT_COPIES * weights32),
        "grams": shape.layers * shape.gram_bytes() if job["reconstruction"] else 0,
        "solve": solve,
        "head_chunk": head_chunk,
        "backward": backward,
        "optimizer": 3 * weights32 if job["distill"] else 0,
        # another process, beside the models the job still holds
        "quantizer": quantizer_bytes(shape, job) if job.get("quantize") else 0,
    }


def quantizer_bytes(shape: ModelShape, job: dict) -> int:
    """The quantizing engine's peak for the costliest of ``job["quantize"]``.

    A causal LM is quantized block by block from the written folder's files
    (``slimformer/engines/block_stream.py``): the engine's runtime (:data:`ENGINE_RUNTIME_BYTES`),
    what lies outside the blocks (embeddings, head) in bf16, one block as read from the file and in
    its working dtype, that block's quantized copy and the copy waiting to be written (at most
    :data:`QUANTIZER_SHARD_BYTES` of finished blocks), the calibration states of a block's inputs
    and outputs, and for GPTQ the largest linear's Hessian (float32, ``n x n`` for ``n`` inputs)
    with :data:`GPTQ_HESSIAN_COPIES` copies and :data:`GPTQ_WEIGHT_COPIES` float32 copies of its
    weights. W8A8 works on a block in float32 while it smooths (its states too). Measured in
    ``bench/quantize_memory.py`` (docs/serving.md).

    An encoder (GPTQ only) is quantized whole: the file as read, a bf16 working copy, the 4-bit
    copy and a block's calibration states."""
    weights, file_bytes = shape.parameters(), job["dtype_bytes"]
    windows, tokens = job["calibration_windows"], job["window_tokens"]
    if not shape.causal:
        states = 2 * 2 * windows * tokens * shape.hidden
        working = 2 * weights if file_bytes != 2 else 0
        runtime = ENGINE_RUNTIME_BYTES["gptq-int4"]
        return runtime + file_bytes * weights + working + weights // 2 + states
    outside = shape.embedding_parameters() + shape.head_parameters()
    block = shape.layer_parameters()
    widest = max(shape.hidden, shape.ffn, shape.q_width)
    needs = []
    for method in job["quantize"]:
        gptq = method == "gptq-int4"
        work = 2 if gptq else 4  # bytes per value while quantizing
        written = (block // 2 if gptq else block) * shape.layers + 2 * outside
        read = (file_bytes + work if file_bytes != work else work) * block
        quantized = 2 * (
            block // 2 if gptq else block
        )  # its copy, and the one waiting to be written
        solve = 0
        if gptq:
            solve = 4 * widest * (GPTQ_HESSIAN_COPIES * widest + GPTQ_WEIGHT_COPIES * shape.hidden)
        during = (
            2 * outside
            + max(read, 2 * block + quantized + solve)
            + 2 * windows * tokens * shape.hidden * work
            + min(QUANTIZER_SHARD_BYTES, written)
        )
        needs.append(ENGINE_RUNTIME_BYTES[method] + during)
    return max(needs)


def states_go_to_files(estimate: MemoryEstimate, available: int | None) -> bool:
    """Whether a streamed job should keep its hidden states in files: when they would take more
    than :data:`STATES_SHARE` of the ``available`` memory, or the job would not fit with them in
    memory. Never when the available memory is unknown or the job holds the whole model."""
    if estimate.path != "streamed" or available is None:
        return False
    states = estimate.breakdown["calibration_states"] + estimate.breakdown["eval_states"]
    return states > STATES_SHARE * available or estimate.total_bytes > available


def whole_model_bytes(shape: ModelShape, dtype_bytes: int, batch_tokens: int) -> int:
    """What loading one whole model in its checkpoint's dtype and running a forward pass over
    ``batch_tokens`` tokens need (the layer-by-layer path's whole-model measurements: latency,
    generations): the weights; per token a layer's widest activations (``3 f + 6 h`` values in
    that dtype, the MLP's three and the attention's six being live together); the float32 logits
    of one position per sequence of 128 tokens (latency keeps the last position's only)."""
    per_token = 3 * shape.ffn + 6 * max(shape.hidden, shape.q_width)
    logits = 4 * shape.vocab * max(1, batch_tokens // 128)
    return dtype_bytes * (shape.parameters() + batch_tokens * per_token) + logits
