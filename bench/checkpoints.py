"""Random-weight Llama checkpoints in the shapes of real models, written tensor by tensor.

``write_random_checkpoint(folder, "8b")`` writes what ``from_pretrained`` and slimformer's streamed
path read (safetensors shards, ``model.safetensors.index.json``, ``config.json``,
``generation_config.json``) and SmolLM2's tokenizer files, so that WikiText-2 feeds every shape.
The writer never holds the model: each shard's header is computed from the shapes alone, then each
tensor is drawn in slices of rows and its bytes appended to the shard, so its peak memory is one
slice (at most :data:`SLICE_BYTES`) above the interpreter's, whatever the model's size. The files
are ordinary safetensors (read back with ``safetensors.safe_open``).

Weights are normal with std 0.02 (activations stay finite through 32 layers), norms are 1; every
shape gets SmolLM2's 49,152-token vocabulary. Bench scripts import it as ``from checkpoints import
write_random_checkpoint`` (``bench/`` is their ``sys.path[0]``).

    python bench/checkpoints.py 1b /tmp/llama-1b     # writes one, prints its folder and parameters
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import sys
from pathlib import Path

import torch

SMOLLM2 = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "slimformer-fixtures/smollm2-135m"
)
VOCAB = 49152  # SmolLM2's tokenizer, for every shape
STD = 0.02
SLICE_BYTES = 64 * 1024**2  # a tensor is drawn and written this many bytes at a time

# Llama configs in the shapes of real models (vocabulary: SmolLM2's)
SHAPES: dict[str, dict] = {
    "135m": dict(  # SmolLM2-135M
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(  # Qwen2.5-0.5B as a Llama
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "1b": dict(  # Llama-3.2-1B
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
    ),
    "3b": dict(  # Llama-3.2-3B
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    ),
    "8b": dict(  # Llama-3.1-8B
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=False,
    ),
}

_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def tensors_of(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every weight of a LlamaForCausalLM with this config, in file order."""
    h, f = shape["hidden_size"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    names = [("model.embed_tokens.weight", (VOCAB, h))]
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)),
            (p + "mlp.down_proj.weight", (h, f)),
        ]
    names.append(("model.norm.weight", (h,)))
    if not shape["tie_word_embeddings"]:
        names.append(("lm_head.weight", (VOCAB, h)))
    return names


def _shards(tensors, item_bytes: int, shard_bytes: float) -> list[list[tuple[str, tuple]]]:
    """Tensors grouped into shards of at most ``shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list] = [[]]
    size = 0
    for name, dims in tensors:
        nbytes = math.prod(dims) * item_bytes
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, dims))
        size += nbytes
    return shards


def _write_tensor(out, name: str, dims: tuple, dtype: torch.dtype, generator) -> None:
    """Append one tensor's bytes: ones for a norm, else normal(0, STD) drawn in slices of rows."""
    if len(dims) == 1:
        out.write(torch.ones(dims, dtype=dtype).view(torch.uint8).numpy().tobytes())
        return
    rows, cols = dims
    item = torch.empty((), dtype=dtype).element_size()
    step = max(1, SLICE_BYTES // (cols * item))
    for start in range(0, rows, step):
        block = torch.empty((min(step, rows - start), cols), dtype=torch.float32)
        block.normal_(0.0, STD, generator=generator)
        out.write(memoryview(block.to(dtype).view(torch.uint8).numpy()))
        del block


def write_random_checkpoint(
    folder: str | os.PathLike,
    shape: str | dict,
    *,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: float = 2e9,
    tokenizer_from: str | os.PathLike = SMOLLM2,
    seed: int = 0,
) -> int:
    """Write a random-weight Llama of ``shape`` (a name in :data:`SHAPES` or a Llama config's
    sizes) to ``folder``, one tensor at a time; returns its number of parameters.

    Args:
        dtype: the weights' dtype on disk (``config.json``'s ``dtype``).
        shard_bytes: most bytes per ``model-0000i-of-0000n.safetensors`` shard.
        tokenizer_from: a folder whose tokenizer files are copied (SmolLM2-135M's, built by
            ``../shared/models/make-smollm2``).
    """
    import transformers

    sizes = SHAPES[shape] if isinstance(shape, str) else dict(shape)
    source = Path(tokenizer_from)
    if not (source / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer in {source}: build SmolLM2's folder with ../shared/models/make-smollm2"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    item = torch.empty((), dtype=dtype).element_size()
    tensors = tensors_of(sizes)
    shards = _shards(tensors, item, shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dims in shard:
            nbytes = math.prod(dims) * item
            header[name] = {
                "dtype": _SAFETENSORS_DTYPES[dtype],
                "shape": list(dims),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = file
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes
        partial = folder / (file + ".partial")
        with open(partial, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            for name, dims in shard:
                _write_tensor(out, name, dims, dtype, generator)
        partial.rename(folder / file)
        total += offset
    index_file = folder / "model.safetensors.index.json"
    index_file.write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
        **sizes,
    )
    config.save_pretrained(folder)
    transformers.GenerationConfig.from_model_config(config).save_pretrained(folder)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    return sum(math.prod(dims) for _, dims in tensors)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: python bench/checkpoints.py {{{','.join(SHAPES)}}} FOLDER")
    count = write_random_checkpoint(sys.argv[2], sys.argv[1])
    print(sys.argv[2], f"{count:,} parameters")
