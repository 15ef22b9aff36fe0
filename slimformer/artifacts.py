"""Writing model folders that reload, and never leaving a half-written one behind."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from slimformer.errors import InvalidSpec
from slimformer.modeling import modeling_slimformer

BUNDLED_MODELING_FILE = Path(modeling_slimformer.__file__)


@contextlib.contextmanager
def atomic_folder(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; it becomes ``out_dir`` only if the block succeeds.

    A failure (or a cancellation) removes the temporary folder, so ``out_dir`` is either absent,
    untouched, or complete.
    """
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidSpec(f"output folder {out} already exists and is not empty; choose another or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def save_model_folder(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """``save_pretrained`` of model and tokenizer, plus the bundled modelling code for per-layer configs."""
    folder = Path(folder)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if getattr(model.config, "auto_map", None):
        shutil.copy2(BUNDLED_MODELING_FILE, folder / BUNDLED_MODELING_FILE.name)
