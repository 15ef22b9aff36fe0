"""Runs inside the gptq engine environment, imported by ``gptq_engine.py`` from its own folder (it
imports nothing of slimformer's): a written causal LM read one decoder block at a time from its
safetensors files and written block by block into new ones, so the quantizing process holds the
embeddings, the final norm and the head, one block, and the calibration states — never the whole
model (a model loaded whole for quantizing would undo what layer-by-layer compression saved).

* :class:`BlockStream`: the model's skeleton on the meta device (parameters only; buffers such as
  rotary frequencies are real), everything outside the blocks loaded, the first block's inputs
  captured the way ``optimum.gptq`` captures them (a pre-hook that stops the model's own forward),
  blocks materialised from the files and given back, and the head's outputs for the probe;
* :class:`ShardWriter`: the written tensors in safetensors files of at most ``max_bytes``, with the
  index transformers reads when there is more than one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

SHARD_BYTES = 512 * 1024**2  # written tensors wait in memory until a file is full


class _Stop(Exception):
    """Raised by the capture hook once the first block's inputs are recorded."""


class Checkpoint:
    """The tensors of a folder's safetensors files, read by name (pages mapped, not copied)."""

    def __init__(self, folder: Path) -> None:
        self.files: dict[str, Path] = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(path, "pt") as handle:
                for key in handle.keys():
                    self.files[key] = path

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.files if n.startswith(prefix)]

    def read(self, names: Iterable[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for path, keys in by_file.items():
            with safe_open(path, "pt") as handle:
                for key in keys:
                    tensor = handle.get_tensor(key)
                    out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        return out


class ShardWriter:
    """Tensors written in the order given, a new file past ``max_bytes``; :meth:`close` names the
    files as transformers does (``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` with
    ``model.safetensors.index.json``)."""

    def __init__(self, out: Path, max_bytes: int = SHARD_BYTES) -> None:
        self.out, self.max_bytes = Path(out), max_bytes
        self.out.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():  # copies: a forward pass may repack them later
            self.pending[name] = tensor.detach().clone(memory_format=torch.contiguous_format)
            self.pending_bytes += tensor.numel() * tensor.element_size()
        if self.pending_bytes >= self.max_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f"part-{len(self.written):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.pending)))
        self.total += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        if len(self.written) == 1:
            self.written[0][0].rename(self.out / "model.safetensors")
            return
        count, weight_map = len(self.written), {}
        for i, (path, names) in enumerate(self.written):
            name = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            path.rename(self.out / name)
            weight_map |= dict.fromkeys(names, name)
        index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


class BlockStream:
    """``request["model"]``'s causal LM with only what lies outside its blocks in memory, in
    ``dtype``; ``request["block_name"]`` names the block list."""

    def __init__(self, request: dict, dtype: torch.dtype) -> None:
        import transformers
        from accelerate import init_empty_weights

        self.folder, self.dtype = Path(request["model"]), dtype
        self.checkpoint = Checkpoint(self.folder)
        remote = request["trust_remote_code"]
        config = transformers.AutoConfig.from_pretrained(self.folder, trust_remote_code=remote)
        config.use_cache = False  # as optimum.gptq: no cache among the captured inputs
        auto = getattr(transformers, request["auto_class"])
        with init_empty_weights(include_buffers=False):
            model = auto.from_config(config, trust_remote_code=remote, dtype=dtype)
        self.model = model.eval()
        self.block_name = request["block_name"]
        self.blocks = model.get_submodule(self.block_name)
        self.prefix = self.block_name + "."
        outside = [n for n in self.checkpoint.names() if not n.startswith(self.prefix)]
        self.outside = self.checkpoint.read(outside, dtype)
        self._assign()

    def _assign(self) -> None:
        model = self.model
        params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        for name, tensor in self.outside.items():
            if name in params:
                _set_parameter(model, name, tensor)
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is None:
            return
        name = next(n for n, m in model.named_modules() if m is head) + ".weight"
        if name not in self.outside:  # tied: the file holds the embeddings only
            head.weight = embed.weight

    def __len__(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def first_inputs(
        self, windows: list[list[int]], dtype: torch.dtype | None = None
    ) -> tuple[list[tuple], list[dict]]:
        """The first block's positional arguments and keyword arguments for each window, as the
        model's own forward computes them (embeddings, position embeddings, the mask); in
        ``dtype`` (default the stream's) as a model loaded in it computes them: the embeddings'
        output is cast to it, so what follows from them (rotary tables) is computed in it."""
        args_seen, kwargs_seen = [], []
        embed = self.model.get_input_embeddings()
        cast = embed.register_forward_hook(lambda module, inputs, out: out.to(dtype or out.dtype))

        def capture(module, args, kwargs):
            if "hidden_states" in kwargs:
                args = (kwargs.pop("hidden_states"), *args)
            args_seen.append(args)
            kwargs_seen.append(dict(kwargs))
            raise _Stop

        handle = self.blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            for window in windows:
                ids = torch.tensor([window])
                try:
                    self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
                except _Stop:
                    pass
        finally:
            handle.remove()
            cast.remove()
        return args_seen, kwargs_seen

    def load(self, index: int, dtype: torch.dtype | None = None) -> nn.Module:
        """Block ``index`` with its tensors from the files (in ``dtype``, default the stream's)."""
        prefix = f"{self.prefix}{index}."
        tensors = self.checkpoint.read(self.checkpoint.names(prefix), dtype or self.dtype)
        block = self.blocks[index]
        block.load_state_dict({n[len(prefix) :]: t for n, t in tensors.items()}, assign=True)
        return block.eval()

    def free(self, index: int, *, keep_modules: bool = False) -> None:
        """Give block ``index``'s tensors back: its modules stay, on the meta device, with
        ``keep_modules`` (what they say of themselves is still read), else the block is dropped
        whole (GPTQ's kernels keep tensors of their own beside their parameters and buffers,
        about 17 MB a block of SmolLM2's shape)."""
        if keep_modules:
            self.blocks[index].to("meta")
        else:
            self.blocks[index] = nn.Module()

    @torch.no_grad()
    def head(
        self, states: list[torch.Tensor], windows: list[list[int]], *, as_tuple: bool = False
    ) -> list[torch.Tensor]:
        """The model's outputs (logits) for ``windows`` whose last block's outputs are
        ``states``: the model's own forward with its blocks replaced by a replay of them
        (answering a tuple where the real blocks do, ``as_tuple``)."""
        real = list(self.blocks)
        last = len(real) - 1
        outputs = []
        try:
            for window, state in zip(windows, states, strict=True):
                replay = [_Replay(state if i == last else None, as_tuple) for i in range(len(real))]
                for i, module in enumerate(replay):
                    self.blocks[i] = module
                ids = torch.tensor([window])
                outputs.append(
                    self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                )
        finally:
            for i, module in enumerate(real):
                self.blocks[i] = module
        return outputs


class _Replay(nn.Module):
    """Stands for a block when the head runs: passes its input on, or answers ``state``."""

    def __init__(self, state: torch.Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.state, self.as_tuple = state, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.state is None else self.state
        return (out,) if self.as_tuple else out


def primary(output) -> torch.Tensor:
    """A block's hidden states, whether it answers them alone or first in a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output
