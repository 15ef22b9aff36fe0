"""Whether a job fits: :func:`check_fits` compares an estimate with what this process may use and
raises :class:`~slimformer.errors.InsufficientMemory` naming what would fit instead."""

from __future__ import annotations

import math

from slimformer.errors import InsufficientMemory
from slimformer.memory.available import available_memory
from slimformer.memory.estimate import GIB, MemoryEstimate, estimate_job_memory


def _variant(estimate: MemoryEstimate, **changes) -> MemoryEstimate | None:
    """The same job with some inputs changed; None when that job cannot run."""
    job = {"path": estimate.path, **estimate.job, **changes}
    try:
        return estimate_job_memory(estimate.shape, **job)
    except ValueError:
        return None


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _what_fits(estimate: MemoryEstimate, available: int) -> list[str]:
    """Changes to the job that would bring it under ``available`` bytes."""
    fits = []
    job = estimate.job
    # the quantizing engine's part is what it needs less what the job gave back, evaluation states
    # among them: fewer windows would not lower the peak then
    quantizer = estimate.breakdown.get("quantizer", 0)
    if estimate.path == "streamed" and estimate.breakdown["eval_states"] and not quantizer:
        per_window = estimate.breakdown["eval_states"] // job["eval_windows"]
        room = available - (estimate.total_bytes - estimate.breakdown["eval_states"])
        windows = room // per_window if per_window else 0
        if 1 <= windows < job["eval_windows"]:
            fits.append(f"{windows} evaluation windows instead of {job['eval_windows']}")
    if estimate.path == "in_memory":
        streamed = _variant(estimate, path="streamed")
        if streamed is not None and streamed.total_bytes <= available:
            fits.append(f"the streamed path ({_gib(streamed.total_bytes)})")
    if job["reconstruction"]:
        plain = _variant(estimate, method="activations", reconstruction=False)
        if plain is not None and plain.total_bytes <= available:
            fits.append(
                f"importance activations without reconstruction ({_gib(plain.total_bytes)}, "
                "no Gram matrices)"
            )
    return fits


def check_fits(estimate: MemoryEstimate, available: int | None = None) -> None:
    """Raise :class:`~slimformer.errors.InsufficientMemory` when ``estimate`` needs more than
    ``available`` bytes (default: :func:`available_memory`; unknown memory passes).

    The message names both in GiB (one decimal), the largest parts, and what would fit: fewer
    evaluation windows, the streamed path, a method without Gram matrices, a machine with N GiB.
    """
    source = "given"
    if available is None:
        available, source = available_memory()
        if available is None:
            return
    needed = estimate.total_bytes
    if needed <= available:
        return
    largest = sorted(estimate.breakdown.items(), key=lambda kv: -kv[1])[:3]
    parts = ", ".join(f"{name} {_gib(n)}" for name, n in largest)
    options = [
        *_what_fits(estimate, available),
        f"a machine with {math.ceil(needed / GIB)} GiB free",
    ]
    where = "" if source == "given" else f" ({source})"
    path = estimate.path.replace("_", "-")
    raise InsufficientMemory(
        f"this job needs about {_gib(needed)} of memory at its peak ({path} path; {parts}), but "
        f"{_gib(available)} is available{where}; it would fit with " + "; or ".join(options),
        details={
            "needed_bytes": needed,
            "available_bytes": available,
            "breakdown": dict(estimate.breakdown),
            "path": estimate.path,
            "available_from": source,
        },
    )
