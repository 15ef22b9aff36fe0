"""How much memory a job needs, from the model's ``config.json`` alone, before any weight moves.

- :mod:`~slimformer.memory.estimate`: :func:`estimate_job_memory` adds up what a job holds at its
  peak (each part and the numbers of common models are in that module's docstring);
- :mod:`~slimformer.memory.repo`: the same from a repo's metadata (:func:`estimate_for_repo`);
- :mod:`~slimformer.memory.available`: what this process may use (:func:`available_memory_bytes`);
- :mod:`~slimformer.memory.fits`: :func:`check_fits` compares the two and raises
  :class:`~slimformer.errors.InsufficientMemory` with what would fit instead.

Torch-free, so a worker can refuse a job before downloading it.
"""

from slimformer.memory.available import (
    CGROUP_ROOT,
    MEMORY_LIMIT_ENV,
    available_memory,
    available_memory_bytes,
    cgroup_memory_room,
    room_now,
)
from slimformer.memory.estimate import (
    BACKWARD_METHODS,
    GIB,
    GRAM_METHODS,
    HEAD_CHUNK_TOKENS,
    IN_MEMORY_WEIGHT_COPIES,
    RUNTIME_BYTES,
    SOLVE_FLOAT64_COPIES,
    STATES_SHARE,
    STREAMED_RUNTIME_BYTES,
    MemoryEstimate,
    ModelShape,
    estimate_job_memory,
    states_go_to_files,
    whole_model_bytes,
)
from slimformer.memory.fits import check_fits
from slimformer.memory.repo import (
    DTYPE_BYTES,
    checkpoint_dtype,
    dtype_bytes,
    estimate_for_repo,
    safetensors_parameters,
)

__all__ = [
    "BACKWARD_METHODS",
    "CGROUP_ROOT",
    "DTYPE_BYTES",
    "GIB",
    "GRAM_METHODS",
    "HEAD_CHUNK_TOKENS",
    "IN_MEMORY_WEIGHT_COPIES",
    "MEMORY_LIMIT_ENV",
    "RUNTIME_BYTES",
    "SOLVE_FLOAT64_COPIES",
    "STATES_SHARE",
    "STREAMED_RUNTIME_BYTES",
    "MemoryEstimate",
    "ModelShape",
    "available_memory",
    "available_memory_bytes",
    "room_now",
    "cgroup_memory_room",
    "check_fits",
    "checkpoint_dtype",
    "dtype_bytes",
    "estimate_for_repo",
    "estimate_job_memory",
    "safetensors_parameters",
    "states_go_to_files",
    "whole_model_bytes",
]
