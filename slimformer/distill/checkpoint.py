"""Checkpoints of a training run: the file format, atomic saves, RNG states and the run's progress.

A checkpoint (``checkpoint.pt``, format :data:`CHECKPOINT_FORMAT`) holds the weights, optimizer and
schedule, every RNG state (python, numpy, torch, CUDA) and a :class:`_RunState`, so that a resumed
run ends with the same weights as an uninterrupted one. It also holds a fingerprint of the data,
settings, student shapes and teacher it was written for, so that it is never resumed by another run.
Files are replaced atomically: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimformer.data import TextData
from slimformer.distill.config import DistillConfig
from slimformer.errors import InvalidSpec, SlimformerError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Config fields that may change between a run and its resumption without changing the weights.
_RESUMABLE_CHANGES = ("max_minutes", "checkpoint_every", "kl_chunk_size", "device")


def _rng_state() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np.array(np_state["key"], dtype=np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``.

    Readers see old or new, never half.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _cpu_copy(obj):
    """A detached CPU copy of a (nested) state dict, so later training steps cannot change it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _fingerprint(
    student: nn.Module,
    teacher: nn.Module | None,
    train: TextData,
    config: DistillConfig,
    task: str,
) -> dict:
    """What a checkpoint must have been written for: the same data, config, student shapes and
    teacher.
    """
    digest = hashlib.sha256()
    for i, text in enumerate(train.texts):
        digest.update(text.encode("utf-8", "replace") + b"\0")
        if train.pairs is not None:
            digest.update(train.pairs[i].encode("utf-8", "replace") + b"\0")
        if train.labels is not None:
            digest.update(str(train.labels[i]).encode() + b"\0")
    shapes = hashlib.sha256(
        json.dumps([(k, list(v.shape)) for k, v in student.state_dict().items()]).encode()
    ).hexdigest()
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE_CHANGES}
    return {
        "task": task,
        "data": digest.hexdigest(),
        "rows": len(train),
        "student": shapes,
        "teacher": None if teacher is None else sum(p.numel() for p in teacher.parameters()),
        "config": settings,
    }


def _read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SlimformerError(f"the checkpoint {path} cannot be read: {err}") from err


def _write_checkpoint(payload: dict, ckdir: Path, best_step: int | None) -> None:
    """Replace the checkpoint in ``ckdir``, and delete the best weights it no longer names."""
    _atomic_save(payload, ckdir / CHECKPOINT_FILE)
    for path in ckdir.glob("best-*.pt"):
        if path.name != f"best-{best_step}.pt":
            path.unlink(missing_ok=True)


def _save_best(ckdir: Path, step: int, metric: float, weights: dict) -> None:
    """Write the weights of an evaluated best beside the checkpoint that will name it."""
    _atomic_save({"step": step, "metric": metric, "student": weights}, ckdir / f"best-{step}.pt")


def _load_best(ckdir: Path, step: int) -> dict:
    """The student weights saved by :func:`_save_best` for ``step``."""
    path = ckdir / f"best-{step}.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["student"]


def _check_fingerprint(payload: dict, fingerprint: dict, ckdir: Path | None) -> None:
    """Refuse a checkpoint of another format, or written for another run than ``fingerprint``'s."""
    same_format = payload.get("format") == CHECKPOINT_FORMAT
    if same_format and payload.get("fingerprint") == fingerprint:
        return
    old = payload.get("fingerprint") or {}
    new = fingerprint
    differ = sorted(k for k in set(old) | set(new) if k != "config" and old.get(k) != new.get(k))
    old_config = old.get("config", {})
    new_config = new["config"]
    differ += [f"config.{k}" for k in sorted(new_config) if old_config.get(k) != new_config[k]]
    raise InvalidSpec(
        f"the checkpoint in {ckdir} was written for another run (differs in: {', '.join(differ)}); "
        "use another checkpoint_dir or the same data, student and settings",
        details={"checkpoint_dir": str(ckdir), "differs": differ},
    )


@dataclass
class _RunState:
    """Everything about a run's progress that a checkpoint holds besides tensors."""

    step: int = 0
    # micro-batches consumed since the start: epoch = micro // per_epoch, position = the rest
    micro: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    stale_evals: int = 0
    history: list = field(default_factory=list)
    health: list = field(default_factory=list)
    seconds: float = 0.0
    rolled_back: bool = False
    gradients_checked: bool = False
    plateau_noted: bool = False
    finished: bool = False
    stopped_because: str = ""
    # the schedule: total planned steps, warm-up steps, steps between evaluations; fitted:
    # re-planned to the time budget
    plan_total: int = 0
    plan_warmup: int = 0
    plan_eval_every: int = 1
    plan_fitted: bool = False
    replanned: bool = False  # re-planned from measured times at least once
    # measured costs: optimizer steps after the first (summed), the first step, the latest
    # evaluation and checkpoint, evaluations done after the initial one
    step_seconds: float = 0.0
    timed_steps: int = 0
    first_step_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    evals_done: int = 0
