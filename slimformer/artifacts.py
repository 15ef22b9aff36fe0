"""Writing model folders that reload, and never leaving a half-written one behind.

Also the one place that knows slimformer's own modelling code: per-layer artifacts ship a copy of
``slimformer/modeling/modeling_slimformer.py``, and a copy whose SHA-256 is in
:data:`KNOWN_MODELING_DIGESTS` is ours, so slimformer can take such a model as input again
(loading it with the installed code, never the copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from torch import nn

from slimformer.errors import InvalidSpec
from slimformer.modeling import modeling_slimformer

BUNDLED_MODELING_FILE = Path(modeling_slimformer.__file__)
MODELING_MODULE = BUNDLED_MODELING_FILE.stem  # "modeling_slimformer", as auto_map names it

# SHA-256 of every modeling_slimformer.py slimformer shipped in per_layer artifacts -> the version.
# A change to that file must add its new digest here (a test checks the installed file is listed),
# so models written by every shipped version stay loadable as inputs.
KNOWN_MODELING_DIGESTS: dict[str, str] = {
    "e2d8ce71efad77bdcdeaf46ed66bdd3f7e05e05c333a393f4b7d0bc531767022": "0.1.0",
    # config.projection_bias: zero biases for FLAP's bias compensation
    "67a69a634a300a2a99d08cbf2e3f5ea0825e7ba7a7eb169ca41da852f548b075": "0.1.0+bias",
    # the nemotron_nas layout: attention removed whole, DeciLM config and model classes
    "f0a858393aba65135a01ce19d27a4d3e77b9551a8bdb7755cb39b188d94deebe": "0.1.0+nemotron",
    # config.json lets stock transformers read the config (AutoTokenizer without remote code)
    "10f512411c1179790b6c67a3a00812ceeba74f99849b17528f1bebc5f6414d32": "0.1.0+stock-config",
}

_umask_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_own_auto_map(auto_map: Mapping | None) -> bool:
    """Every entry of a config's ``auto_map`` names a class of slimformer's modelling file."""
    if not auto_map:
        return False
    for target in auto_map.values():
        if not isinstance(target, str):
            return False
        module, _, name = target.partition(".")
        if module != MODELING_MODULE or not name.startswith("Slimformer"):
            return False
        if not hasattr(modeling_slimformer, name):
            return False
    return True


def is_own_modeling_file(path: str | Path) -> bool:
    """``path`` is a copy of a modelling file slimformer shipped (its SHA-256 is a known digest)."""
    path = Path(path)
    return path.is_file() and file_sha256(path) in KNOWN_MODELING_DIGESTS


def config_reads_without_code(folder: str | Path) -> bool:
    """Whether stock transformers reads the folder's ``config.json`` without remote code, so
    ``AutoTokenizer.from_pretrained(folder)`` needs none: no ``auto_map``, or a per_layer config
    that lets stock classes read its global sizes
    (:data:`~slimformer.modeling.modeling_slimformer.GLOBAL_ACCESS_FLAG`)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return not config.get("auto_map") or bool(config.get(modeling_slimformer.GLOBAL_ACCESS_FLAG))


def _umask() -> int:
    """The process umask (reading it means setting it: done under a lock, restored at once)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_modes() -> tuple[int, int]:
    """(folder mode, file mode) a plain ``mkdir`` / ``open`` would give: 0o777 and 0o666 less the
    umask."""
    mask = _umask()
    return 0o777 & ~mask, 0o666 & ~mask


def _apply_default_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes the umask asks for (mkdtemp makes 0o700)."""
    dir_mode, file_mode = default_modes()
    folder.chmod(dir_mode)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(dir_mode if path.is_dir() else file_mode)


@contextlib.contextmanager
def atomic_folder(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; it becomes ``out_dir`` only if the block
    succeeds.

    A failure (or a cancellation) removes the temporary folder, so ``out_dir`` is either absent,
    untouched, or complete. The finished folder and its files get the modes the umask asks for
    (like ``mkdir``), so a colleague or a service user can read what the umask lets them read.
    """
    out = Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidSpec(
            f"output folder {out} already exists and is not empty; choose another or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _apply_default_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def save_model_folder(
    model: nn.Module, tokenizer, folder: str | Path, *, weights: bool = True
) -> None:
    """``save_pretrained`` of model and tokenizer, plus the bundled modelling code for per-layer
    configs. ``weights=False`` writes everything but the weights (a model whose layers were
    written one at a time: :mod:`slimformer.streaming.writer`)."""
    folder = Path(folder)
    model.save_pretrained(folder, **({} if weights else {"state_dict": {}}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if isinstance(model, modeling_slimformer.SlimformerDeciLMForCausalLM):
        # the name vLLM and llama.cpp know Nemotron-NAS by (transformers goes by auto_map)
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config["architectures"] = ["DeciLMForCausalLM"]
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if getattr(model.config, "auto_map", None):
        target = folder / BUNDLED_MODELING_FILE.name
        # copyfile, not copy2: the installed file's mode (often read-only) is not the folder's
        shutil.copyfile(BUNDLED_MODELING_FILE, target)
        target.chmod(default_modes()[1])
