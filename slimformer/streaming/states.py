"""The hidden states that flow from layer to layer, one tensor per window: in memory, or spilled
to one file per window when they would take too much of it (then only the window being computed
is in memory)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch


class HiddenStates:
    """``states[i]`` is window ``i``'s hidden states; ``states[i] = t`` replaces them.

    With ``folder`` each window lives in ``folder/window-NNNNN.pt`` and is read when asked for
    (the files are the only copy); without it, in a list.
    """

    def __init__(self, tensors: Iterable[torch.Tensor], folder: Path | None = None) -> None:
        self.folder = folder
        self._memory: list[torch.Tensor] = []
        self._count = 0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        for tensor in tensors:
            self._count += 1
            if folder is None:
                self._memory.append(tensor)
            else:
                self[self._count - 1] = tensor

    @property
    def spilled(self) -> bool:
        return self.folder is not None

    def __len__(self) -> int:
        return self._count

    def _file(self, index: int) -> Path:
        assert self.folder is not None
        return self.folder / f"window-{index:05d}.pt"

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self._count:
            raise IndexError(index)
        if self.folder is None:
            return self._memory[index]
        return torch.load(self._file(index), weights_only=True)

    def __setitem__(self, index: int, tensor: torch.Tensor) -> None:
        if self.folder is None:
            self._memory[index] = tensor
            return
        part = self._file(index).with_suffix(".part")
        torch.save(tensor.detach().contiguous(), part)
        part.replace(self._file(index))  # a window is never half-written

    def copy(self, folder: Path | None = None) -> HiddenStates:
        """Another set with the same tensors (in ``folder`` when these are spilled)."""
        if self.folder is None:
            return HiddenStates(list(self._memory))
        if folder is None:
            raise ValueError("spilled hidden states are copied into a folder")
        shutil.copytree(self.folder, folder, dirs_exist_ok=True)
        other = HiddenStates((), folder)
        other._count = self._count
        return other

    def release(self) -> None:
        """Forget the tensors (and delete their files)."""
        self._memory.clear()
        self._count = 0
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
