"""Plain text for causal language models: ``.txt`` files, packing into fixed-length windows, and
the next-token loss streamed over chunks of positions.

**Files.** A ``.txt`` file holds one document per block of lines; blocks are separated by one or
more blank lines (a line of only whitespace is blank). Lines inside a block keep their newlines.
WikiText-2's paragraphs and headings, or one story per block, read naturally this way.

**Packing** (the protocol of language-model evaluation: the Hugging Face perplexity guide, and the
WikiText-2 numbers of GPTQ, Wanda, FLAP and LLM-Pruner): every document is tokenised without
special tokens, the documents are concatenated with the EOS token between them, and the token
stream is cut into windows of ``seq_len`` tokens that start every ``stride`` tokens (``stride =
seq_len`` by default: disjoint windows). Only whole windows are kept (a stream shorter than one
window is one shorter window). With ``stride < seq_len`` a window's first ``seq_len - stride``
tokens are context only (label -100): every token is predicted at most once.

**Streamed loss.** A causal LM's logits are ``batch x sequence x vocabulary`` floats: 3.2 GB in
float32 for 32 windows of 512 tokens and a 49k vocabulary. :func:`next_token_stats` and
:func:`next_token_loss` run the model's body once, then apply the output head and the
cross-entropy to ``chunk_size`` positions at a time (under activation checkpointing when a
gradient is needed), so at most ``chunk_size x vocabulary`` logits exist at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from slimformer.errors import DatasetError

DEFAULT_SEQ_LEN = 512  # tokens per window for causal-LM calibration and evaluation
DEFAULT_CHUNK = 512  # positions whose logits exist at once
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_TOKENIZE_BLOCK = 256  # documents tokenised per call


def read_documents(
    path: str | Path,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
) -> list[str]:
    """The documents of a ``.txt`` file: blocks of lines separated by blank lines, stripped.

    A text file has no columns: naming a pair or label column (or a text column other than
    ``text``) is an error rather than something silently ignored.

    Raises:
        DatasetError: a missing, empty, blank or undecodable file; a column named for it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist", details={"file": str(path)})
    named = {"text pair": text_pair_column, "label": label_column}
    if text_column not in (None, "text"):
        named["text"] = text_column
    named = {what: column for what, column in named.items() if column}
    if named:
        what, column = next(iter(named.items()))
        raise DatasetError(
            f"{path.name} is plain text (one document per blank-line-separated block) and has no "
            f"{what} column {column!r}; use a CSV, JSON lines or Parquet file for columns",
            details={"file": str(path), "column": column},
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"{path.name} is not UTF-8 text ({err.reason} at byte {err.start})",
            details={"file": str(path)},
        ) from err
    documents = split_documents(text)
    if not documents:
        raise DatasetError(f"{path.name} holds no text", details={"file": str(path)})
    return documents


def split_documents(text: str) -> list[str]:
    """Blocks of ``text`` separated by blank lines, stripped; empty blocks dropped."""
    text = text.replace("\r\n", "\n")
    return [block.strip() for block in _BLANK_LINES.split(text) if block.strip()]


def window_length(config, wanted: int = DEFAULT_SEQ_LEN) -> int:
    """``wanted`` tokens, or fewer when the model's positions end sooner."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(wanted, int(limit)) if limit else wanted


@dataclass
class PackedText:
    """Windows of a packed token stream, ready for a causal LM (see the module docstring)."""

    input_ids: torch.Tensor  # [windows, seq_len]
    labels: torch.Tensor  # [windows, seq_len]; -100 where a token is context only
    seq_len: int
    stride: int
    documents: int  # documents that went into the windows (the last one possibly in part)
    stream_tokens: int  # tokens of the stream the windows cover
    eos_token_id: int | None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def predicted_tokens(self) -> int:
        """Next-token predictions the windows make (each token at most once)."""
        return int((self.labels[:, 1:] != -100).sum())

    def protocol(self) -> dict:
        """How the text was packed, for reports and cards."""
        return {
            "packing": "concatenated documents, EOS between them, fixed-length windows",
            "seq_len": self.seq_len,
            "stride": self.stride,
            "windows": len(self),
            "documents": self.documents,
            "tokens": self.stream_tokens,
            "predicted_tokens": self.predicted_tokens,
            "eos_between_documents": self.eos_token_id is not None,
            "source": self.source,
        }

    def head(self, n: int | None) -> PackedText:
        """The first ``n`` windows."""
        if n is None or n >= len(self):
            return self
        last = (n - 1) * self.stride + self.seq_len
        return PackedText(
            self.input_ids[:n],
            self.labels[:n],
            self.seq_len,
            self.stride,
            self.documents,
            min(self.stream_tokens, last),
            self.eos_token_id,
            self.source,
            dict(self.extra),
        )

    def batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        """Batches of ``batch_size`` windows: ``input_ids``, ``attention_mask`` (all ones),
        ``labels``."""
        out = []
        for start in range(0, len(self), batch_size):
            ids = self.input_ids[start : start + batch_size]
            out.append(
                {
                    "input_ids": ids,
                    "attention_mask": torch.ones_like(ids),
                    "labels": self.labels[start : start + batch_size],
                }
            )
        return out


def pack_texts(
    tokenizer,
    texts: Iterable[str],
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    stride: int | None = None,
    max_windows: int | None = None,
    source: str = "",
) -> PackedText:
    """Tokenise ``texts`` (one document each), join them with EOS and cut the stream into windows.

    Tokenising stops once ``max_windows`` windows are full, so a large corpus costs only what is
    used. Empty documents are skipped.

    Args:
        tokenizer: a Hugging Face tokenizer; its ``eos_token_id`` separates documents (none: plain
            concatenation).
        texts: documents in order.
        seq_len: tokens per window.
        stride: tokens between window starts; ``seq_len`` (disjoint windows) by default.
        max_windows: keep at most this many windows.
        source: where the text came from (reported in :meth:`PackedText.protocol`).

    Returns:
        :class:`PackedText`.

    Raises:
        DatasetError: no text, or a stride or length out of range.

    Example:
        >>> packed = pack_texts(tokenizer, read_documents("wikitext2/test.txt"), seq_len=512)
        >>> batches = packed.batches(4)
    """
    stride = seq_len if stride is None else stride
    _check_windows(seq_len, stride, max_windows)
    eos = tokenizer.eos_token_id
    needed = None if max_windows is None else (max_windows - 1) * stride + seq_len
    stream, documents = _token_stream(tokenizer, texts, eos, needed)
    if len(stream) < 2:
        raise DatasetError(
            f"{source or 'the text'} holds fewer than 2 tokens: nothing to predict",
            details={"source": source},
        )
    input_ids, labels, seq_len_used, covered = _windows(stream, seq_len, stride, max_windows)
    return PackedText(
        input_ids, labels, seq_len_used, min(stride, seq_len_used), documents, covered, eos, source
    )


def _check_windows(seq_len: int, stride: int, max_windows: int | None) -> None:
    """Raises DatasetError unless ``seq_len >= 2``, ``1 <= stride <= seq_len`` and
    ``max_windows`` (when given) is at least 1."""
    if seq_len < 2 or not 1 <= stride <= seq_len:
        raise DatasetError(
            f"windows need seq_len >= 2 and 1 <= stride <= seq_len, got {seq_len} and {stride}",
            details={"seq_len": seq_len, "stride": stride},
        )
    if max_windows is not None and max_windows < 1:
        raise DatasetError(f"max_windows must be at least 1, got {max_windows}")


def _token_stream(
    tokenizer, texts: Iterable[str], eos: int | None, needed: int | None
) -> tuple[list[int], int]:
    """The non-empty documents' tokens (no special tokens) joined with ``eos``, and how many
    documents that stream holds.

    Documents are tokenised ``_TOKENIZE_BLOCK`` at a time, and no more are read or added once the
    stream holds ``needed`` tokens (None: all of them).
    """
    stream: list[int] = []
    documents = 0
    block: list[str] = []
    for text in texts:
        if needed is not None and len(stream) >= needed:
            break
        if text and text.strip():
            block.append(text)
            if len(block) == _TOKENIZE_BLOCK:
                documents += _append_block(tokenizer, block, stream, eos, needed)
    if block and (needed is None or len(stream) < needed):
        documents += _append_block(tokenizer, block, stream, eos, needed)
    return stream, documents


def _append_block(
    tokenizer, block: list[str], stream: list[int], eos: int | None, needed: int | None
) -> int:
    """Tokenise ``block`` and append its documents to ``stream`` (``eos`` before each but the
    stream's first) until the stream holds ``needed`` tokens; empty ``block``. Returns how many
    documents were appended."""
    added = 0
    ids = tokenizer(block, add_special_tokens=False)["input_ids"]
    for doc in ids:
        if needed is not None and len(stream) >= needed:
            break
        if stream and eos is not None:
            stream.append(eos)
        stream.extend(doc)
        added += 1
    block.clear()
    return added


def _windows(
    stream: list[int], seq_len: int, stride: int, max_windows: int | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(input_ids, labels, window length, tokens of the stream covered) of the windows cut from
    ``stream``: whole windows every ``stride`` tokens, or one short window of the whole stream;
    labels -100 on each window's first ``seq_len - stride`` tokens after the first window."""
    tokens = torch.tensor(stream, dtype=torch.long)
    if len(tokens) < seq_len:  # one short window
        starts = [0]
        seq_len_used = len(tokens)
    else:
        starts = list(range(0, len(tokens) - seq_len + 1, stride))
        seq_len_used = seq_len
    if max_windows is not None:
        starts = starts[:max_windows]
    input_ids = torch.stack([tokens[s : s + seq_len_used] for s in starts])
    labels = input_ids.clone()
    overlap = seq_len_used - stride
    if overlap > 0:
        labels[1:, :overlap] = -100  # seen (and predicted) in the window before
    covered = starts[-1] + seq_len_used
    return input_ids, labels, seq_len_used, covered


# -- the streamed next-token loss -----------------------------------------------------------------


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(body, output head) of a causal LM: the base model returning hidden states, and the
    projection to the vocabulary (``get_output_embeddings()``)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output head")
    return model.base_model, head


def final_hidden(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The final hidden states [B, T, d] of a causal LM (after its last norm); no KV cache."""
    body, _ = lm_parts(model)
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return body(**inputs, use_cache=False).last_hidden_state


def next_token_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets [B, T-1] for positions 0..T-2, and which of them count.

    Targets are ``labels`` (causal-LM batches carry the input ids there, -100 where a token is
    padding or context only) or the input ids. A position counts when its target is not -100 and
    both it and the token it predicts are real (attention mask 1).
    """
    ids = batch["input_ids"]
    labels = batch.get("labels")
    targets = labels[:, 1:] if labels is not None and labels.shape == ids.shape else ids[:, 1:]
    real = targets != -100
    mask = batch.get("attention_mask")
    if mask is not None:
        real = real & mask[:, 1:].bool() & mask[:, :-1].bool()
    return targets, real


@dataclass
class NextTokenStats:
    """Next-token statistics of one batch (summed, so batches add up)."""

    nll_sum: float
    tokens: int
    hits: int
    greedy: torch.Tensor | None = None  # greedy token at every counted position


def _chunks(n: int, chunk_size: int) -> Iterable[tuple[int, int]]:
    for start in range(0, n, chunk_size):
        yield start, min(n, start + chunk_size)


@torch.inference_mode()
def next_token_stats(
    model: nn.Module,
    batch: dict,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    keep_greedy: bool = False,
    head_hook=None,
) -> NextTokenStats:
    """Summed NLL, greedy hits and (optionally) greedy tokens of one batch, the head applied to
    ``chunk_size`` positions at a time.

    ``head_hook`` (tests) is called with each chunk's logits.
    """
    _, head = lm_parts(model)
    targets, real = next_token_positions(batch)
    hidden = final_hidden(model, batch)[:, :-1][real]
    target = targets[real]
    del real
    nll, hits, greedy = 0.0, 0, []
    for start, end in _chunks(len(target), chunk_size):
        logits = head(hidden[start:end]).float()
        if head_hook is not None:
            head_hook(logits)
        nll += float(F.cross_entropy(logits, target[start:end], reduction="sum"))
        best = logits.argmax(-1)
        hits += int((best == target[start:end]).sum())
        if keep_greedy:
            greedy.append(best.cpu())
        del logits
    return NextTokenStats(
        nll,
        int(len(target)),
        hits,
        torch.cat(greedy)
        if keep_greedy and greedy
        else (torch.empty(0, dtype=torch.long) if keep_greedy else None),
    )


def _chunk_loss(
    hidden: torch.Tensor, targets: torch.Tensor | None, head: nn.Module
) -> torch.Tensor:
    """Summed cross-entropy of one chunk; against its own greedy tokens when ``targets`` is None."""
    logits = head(hidden)
    logits = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if targets is None:
        targets = logits.detach().argmax(-1)
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def next_token_loss(
    model: nn.Module,
    batch: dict,
    *,
    greedy_targets: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch, differentiable, without a batch x sequence x
    vocabulary tensor.

    Args:
        model: a causal LM.
        batch: ``input_ids``, ``attention_mask``, ``labels`` (see :func:`next_token_positions`).
        greedy_targets: the targets are the model's own greedy next tokens (the label-free loss of
            :mod:`slimformer.importance`) instead of the labels.
        chunk_size: positions whose logits exist at once; each chunk runs under activation
            checkpointing when a gradient is needed, so its logits are freed at once and
            recomputed in the backward pass.
    """
    _, head = lm_parts(model)
    targets, real = next_token_positions(batch)
    hidden = final_hidden(model, batch)[:, :-1][real]
    target = targets[real]
    total = (
        hidden.new_zeros(
            (), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32
        )
        + 0.0 * hidden.sum()
    )
    grad = torch.is_grad_enabled() and hidden.requires_grad
    for start, end in _chunks(len(target), chunk_size):
        args = (hidden[start:end], None if greedy_targets else target[start:end], head)
        if grad:
            part = activation_checkpoint(_chunk_loss, *args, use_reentrant=False)
        else:
            part = _chunk_loss(*args)
        total = total + part
    return total / max(1, len(target))
