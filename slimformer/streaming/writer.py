"""Writing a pruned model whose layers were staged one at a time: the config, tokenizer and
modelling code as ``save_pretrained`` writes them, and the weights streamed into safetensors
shards (one ``model.safetensors`` up to ``SHARD_BYTES``, else numbered shards and an index), a
layer at a time."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from slimformer.artifacts import save_model_folder
from slimformer.streaming.checkpoint import INDEX, SINGLE
from slimformer.streaming.model import StreamedModel

SHARD_BYTES = 5 * 10**9
_CODES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
}


def _entries(sm: StreamedModel, dtype: torch.dtype) -> list[tuple[str, tuple, int | None]]:
    """``(name, shape, layer or None)`` of every tensor to save, in the state dict's order; a
    tied head is saved once, as the embeddings (as ``save_pretrained`` does)."""
    prefix = sm.layers_name + "."
    tied = sm.model.get_output_embeddings().weight is sm.model.get_input_embeddings().weight
    out = []
    for name, tensor in sm.model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        layer = int(name[len(prefix) :].split(".")[0]) if name.startswith(prefix) else None
        out.append((name, tuple(tensor.shape), layer))
    return out


def _nbytes(shape: tuple, dtype: torch.dtype) -> int:
    count = 1
    for n in shape:
        count *= n
    return count * torch.empty(0, dtype=dtype).element_size()


def _shards(entries: list, dtype: torch.dtype) -> list[list]:
    """Entries grouped into shards of at most ``SHARD_BYTES`` (a layer never split)."""
    shards, current, size, last_layer = [], [], 0, object()
    for entry in entries:
        nbytes = _nbytes(entry[1], dtype)
        new_unit = entry[2] is None or entry[2] != last_layer
        if current and new_unit and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
        last_layer = entry[2]
    if current:
        shards.append(current)
    return shards


def _write_shard(path: Path, entries: list, dtype: torch.dtype, tensor_of) -> int:
    """One safetensors file, its tensors written one by one (never all in memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in entries:
        nbytes = _nbytes(shape, dtype)
        header[name] = {
            "dtype": _CODES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name, shape, layer in entries:
            tensor = tensor_of(name, shape, layer).to(dtype).contiguous()
            if tuple(tensor.shape) != shape:
                raise RuntimeError(f"{name}: staged shape {tuple(tensor.shape)}, expected {shape}")
            fh.write(tensor.view(torch.uint8).numpy().tobytes())
    return offset


def write_folder(sm: StreamedModel, staging: Path, folder: Path, tokenizer) -> None:
    """Write the pruned model: the skeleton's config (its layout already applied), ``tokenizer``,
    the bundled modelling code where the layout needs it, and the weights from ``staging``.

    A parameter a layer gained after it was staged (a zero output bias that the layout gives every
    layer) is written as zeros.
    """
    from safetensors import safe_open

    dtype = sm.checkpoint.dtype
    save_model_folder(sm.model, tokenizer, folder, weights=False)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = sm.model.state_dict()
    prefix = sm.layers_name + "."
    opened: dict[int, object] = {}

    def tensor_of(name: str, shape: tuple, layer: int | None) -> torch.Tensor:
        if layer is None:
            return state[name]
        if layer not in opened:
            opened.clear()  # one staged layer open at a time
            opened[layer] = safe_open(staging / f"layer-{layer:05d}.safetensors", "pt")
        handle = opened[layer]
        local = name[len(prefix) :].split(".", 1)[1]
        if local in handle.keys():
            return handle.get_tensor(local)
        return torch.zeros(shape, dtype=dtype)

    entries = _entries(sm, dtype)
    shards = _shards(entries, dtype)
    if len(shards) == 1:
        _write_shard(folder / SINGLE, shards[0], dtype, tensor_of)
        return
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        total += _write_shard(folder / file, shard, dtype, tensor_of)
        weight_map |= {name: file for name, _, _ in shard}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
