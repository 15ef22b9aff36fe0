"""A model folder's safetensors weights, read a tensor at a time from memory-mapped files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimformer.errors import ModelLoadError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class Checkpoint:
    """The tensors of one model folder (``model.safetensors`` or shards with an index) by name.

    Nothing is read until :meth:`read` asks for names; each file is opened once per call.
    """

    def __init__(self, folder: str | Path) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / INDEX
        if index.is_file():
            self.files: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, "pt") as handle:
                self.files = dict.fromkeys(handle.keys(), SINGLE)
        else:
            raise ModelLoadError(
                f"{self.folder.name} has no safetensors weights ({SINGLE} or {INDEX})",
                details={"folder": self.folder.name},
            )
        self.dtype = self._dtype()

    def _dtype(self) -> torch.dtype:
        """The dtype of the weights on disk (the first floating tensor's)."""
        from safetensors import safe_open

        for name, file in self.files.items():
            with safe_open(self.folder / file, "pt") as handle:
                dtype = DTYPES.get(handle.get_slice(name).get_dtype())
            if dtype is not None:
                return dtype
        return torch.float32

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.files if n.startswith(prefix)]

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (cast to ``dtype`` when given), each file opened once."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for file, wanted in by_file.items():
            with safe_open(self.folder / file, "pt") as handle:
                for name in wanted:
                    tensor = handle.get_tensor(name)
                    out[name] = tensor if dtype is None else tensor.to(dtype)
        return out
