"""A causal LM whose decoder layers stay on disk until used: a meta-device skeleton with the
embeddings, the final norm and the LM head resident, one layer materialised at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from slimformer.architectures import ModelAdapter, family_of
from slimformer.memory import HEAD_CHUNK_TOKENS
from slimformer.streaming.checkpoint import Checkpoint
from slimformer.text import next_token_positions

# families whose model forward is the plain decoder loop this module replays (one causal mask,
# rotary position embeddings computed once, then each layer)
STREAMED_FAMILIES = ("llama",)
HEAD_TOKENS = HEAD_CHUNK_TOKENS  # positions whose logits exist at once (the estimate counts them)
HEAD_ROWS = 32_768  # vocabulary rows of the head cast to float32 at once
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def give_freed_memory_back() -> None:
    """Make glibc serve every allocation of 1 MiB or more by its own mapping, returned to the
    system when freed. By default glibc raises that threshold as large blocks are freed and then
    keeps such blocks in its heap: on a 1B model each layer loaded and freed left about 80 MB
    behind (1.3 GB over 16 layers). No effect off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        pass


def can_stream(config) -> bool:
    """Whether a causal LM of this config can be compressed layer by layer."""
    return (
        not getattr(config, "auto_map", None)
        and not config.to_dict().get("per_layer_config")
        and family_of(config).name in STREAMED_FAMILIES
    )


@dataclass
class HeadStats:
    """Next-token statistics summed over batches (as :class:`~slimformer.text.NextTokenStats`)."""

    nll_sum: float = 0.0
    tokens: int = 0
    hits: int = 0

    def add(self, other: HeadStats) -> None:
        self.nll_sum += other.nll_sum
        self.tokens += other.tokens
        self.hits += other.hits


class StreamedModel:
    """``folder``'s causal LM with only the embeddings, norm and head in memory.

    ``model`` is the transformers model on the meta device (its layers take their real tensors in
    :meth:`load_layer` and give them back in :meth:`free_layer`); a plan and a layout act on it as
    on a loaded model, since they read shapes only.
    """

    def __init__(self, folder: str | Path, config=None) -> None:
        give_freed_memory_back()
        self.folder = Path(folder)
        self.checkpoint = Checkpoint(folder)
        config = config or transformers.AutoConfig.from_pretrained(self.folder)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        self.model = model.eval()
        self.adapter = ModelAdapter(model)
        first = self.adapter.layers[0]
        self.layers_name = next(n for n, m in model.named_modules() if m is first).rsplit(".", 1)[0]
        self._load_resident()

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def _load_resident(self) -> None:
        """Everything outside the decoder layers, in the checkpoint's dtype (the head and the
        embeddings are the largest tensors a layer-by-layer job keeps)."""
        model, prefix = self.model, self.layers_name + "."
        names = [n for n in self.checkpoint.names() if not n.startswith(prefix)]
        tensors = self.checkpoint.read(names, dtype=self.checkpoint.dtype)
        state = {n: t for n, t in tensors.items() if n in dict(model.named_parameters())}
        for name, tensor in state.items():
            _set_parameter(model, name, tensor)
        if model.config.tie_word_embeddings or "lm_head.weight" not in state:
            model.lm_head.weight = model.get_input_embeddings().weight
        base = model.base_model
        # non-persistent buffers (rotary frequencies) are computed, not stored: build them here
        if hasattr(base, "rotary_emb"):
            base.rotary_emb = type(base.rotary_emb)(config=model.config)

    def layer_names(self, index: int) -> list[str]:
        return self.checkpoint.names(f"{self.layers_name}.{index}.")

    def load_layer(self, index: int) -> nn.Module:
        """Layer ``index`` with its tensors from the checkpoint, in float32."""
        prefix = f"{self.layers_name}.{index}."
        tensors = self.checkpoint.read(self.layer_names(index), dtype=torch.float32)
        layer = self.adapter.layers[index]
        layer.load_state_dict({n[len(prefix) :]: t for n, t in tensors.items()}, assign=True)
        return layer.eval()

    def free_resident(self) -> None:
        """Give back what stays in memory (embeddings, norm, head) once the stream is over; every
        shape stays (on the meta device)."""
        self.model.to("meta")

    def free_layer(self, index: int) -> None:
        """Give layer ``index``'s memory back; its shapes stay (on the meta device)."""
        self.adapter.layers[index].to("meta")

    @torch.inference_mode()
    def embed(self, batch: dict) -> torch.Tensor:
        return self.model.get_input_embeddings()(batch["input_ids"]).float()

    @torch.inference_mode()
    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """One decoder layer on ``hidden`` as the model's own forward runs it."""
        from transformers.masking_utils import create_causal_mask

        positions = torch.arange(hidden.shape[1]).unsqueeze(0)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=batch.get("attention_mask"),
            cache=None,
            position_ids=positions,
        )
        rotary = self.model.base_model.rotary_emb(hidden, position_ids=positions)
        out = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
        return out[0] if isinstance(out, tuple) else out

    @torch.inference_mode()
    def head_stats(
        self, hidden: torch.Tensor, batch: dict, greedy: list | None = None
    ) -> HeadStats:
        """Summed NLL and greedy hits of the next tokens after the final norm and the head, on
        ``HEAD_TOKENS`` positions and ``HEAD_ROWS`` vocabulary rows at a time; greedy tokens are
        appended to ``greedy`` when given."""
        targets, real = next_token_positions(batch)
        normed = self.model.base_model.norm(hidden)[:, :-1][real]
        target = targets[real]
        head = self.model.get_output_embeddings().weight
        stats = HeadStats(tokens=len(target))
        for start in range(0, len(target), HEAD_TOKENS):
            rows, wanted = normed[start : start + HEAD_TOKENS], target[start : start + HEAD_TOKENS]
            logits = torch.cat(
                [
                    nn.functional.linear(rows, head[v0 : v0 + HEAD_ROWS].float())
                    for v0 in range(0, head.shape[0], HEAD_ROWS)
                ],
                dim=1,
            )
            stats.nll_sum += float(nn.functional.cross_entropy(logits, wanted, reduction="sum"))
            chosen = logits.argmax(-1)
            stats.hits += int((chosen == wanted).sum())
            if greedy is not None:
                greedy.append(chosen)
            del logits
        return stats


def _set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, nn.Parameter(tensor, requires_grad=False))


def footprint(model: nn.Module, seq_len: int) -> dict:
    """Parameters, bytes of the weights in float32 (as they are computed, like a model held in
    memory) and MACs for ``seq_len`` tokens, of a model whose layers may be on the meta device."""
    from slimformer.models import count_macs

    params = {id(p): p for p in model.parameters()}.values()  # a tied head counts once
    count = sum(p.numel() for p in params)
    return {"parameters": count, "weight_bytes": 4 * count, "macs": count_macs(model, seq_len)}
