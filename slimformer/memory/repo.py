"""A job's estimate from what a repo says before its weights move: ``config.json`` and the dtype
of its weights (by name, by the Hub's parameter counts, or from the safetensors headers)."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path

from slimformer.memory.estimate import MemoryEstimate, Path_, estimate_job_memory

# bytes per weight by dtype name: safetensors' (model_info().safetensors.parameters) and torch's
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


def _dtype_name(name: str) -> str:
    return str(name).removeprefix("torch.")


def checkpoint_dtype(dtype: str | Mapping[str, int] | None, config: Mapping | None = None) -> str:
    """The dtype most weights are stored in: ``dtype`` itself when a name; the dtype holding most
    parameters when a count by dtype (the Hub's ``model_info(...).safetensors.parameters``, or
    :func:`safetensors_parameters`); else the config's ``dtype`` / ``torch_dtype``; else float32.
    """
    if isinstance(dtype, Mapping) and dtype:
        return _dtype_name(max(dtype, key=lambda name: dtype[name]))
    if isinstance(dtype, str) and dtype:
        return _dtype_name(dtype)
    config = config or {}
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else {}
    for source in (config, text):
        for key in ("dtype", "torch_dtype"):
            if isinstance(source.get(key), str):
                return _dtype_name(source[key])
    return "float32"


def dtype_bytes(name: str) -> int:
    """Bytes per weight of a safetensors or torch dtype name; 4 for one not known."""
    return DTYPE_BYTES.get(_dtype_name(name), 4)


def safetensors_parameters(folder: str | os.PathLike) -> dict[str, int]:
    """Parameters by safetensors dtype (``{"BF16": 1235814400}``) of a local folder's
    ``*.safetensors`` files, from their headers alone (no weight is read)."""
    counts: dict[str, int] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                raise ValueError(f"{file.name}: not a safetensors file (header of {size} bytes)")
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + math.prod(entry["shape"])
    return counts


def estimate_for_repo(
    config: Mapping,
    dtype: str | Mapping[str, int] | None,
    *,
    calibration_windows: int,
    eval_windows: int,
    window_tokens: int = 512,
    path: Path_,
    method: str,
    distill: bool = False,
    reconstruction: bool | None = None,
    spill_states: bool = False,
    downstream_tasks: bool = False,
    quantize: tuple[str, ...] = (),
) -> MemoryEstimate:
    """:func:`estimate_job_memory` from what a repo says before its weights are downloaded: its
    ``config.json`` and the dtype of its weights (a name, the Hub's ``safetensors.parameters`` by
    dtype, or None for the config's own ``dtype``).

    Example (in the recipe, before the download)::

        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        config = json.loads(Path(hf_hub_download(repo_id, "config.json", ...)).read_text())
        stats = info.safetensors.parameters if info.safetensors else None
        check_fits(estimate_for_repo(config, stats, calibration_windows=32, eval_windows=64,
                                     path="streamed", method="obs"))
    """
    return estimate_job_memory(
        config,
        dtype_bytes=dtype_bytes(checkpoint_dtype(dtype, config)),
        calibration_windows=calibration_windows,
        eval_windows=eval_windows,
        window_tokens=window_tokens,
        path=path,
        method=method,
        distill=distill,
        reconstruction=reconstruction,
        spill_states=spill_states,
        downstream_tasks=downstream_tasks,
        quantize=quantize,
    )
