"""Loading text data (CSV, TSV, JSON lines, Parquet) with ``datasets``, mapping columns and labels, batching.

Every failure names the file and the column: a missing column lists the columns the file has.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from slimformer.errors import DatasetError

logger = logging.getLogger(__name__)

TEXT_COLUMN_GUESSES = ("text", "sentence", "sentence1", "content", "review", "question")
PAIR_COLUMN_GUESSES = ("text_pair", "sentence2", "question2")
LABEL_COLUMN_GUESSES = ("label", "labels", "score")
FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class TextData:
    """Texts (and optional second texts and labels) in file order."""

    texts: list[str]
    pairs: list[str] | None = None
    labels: list | None = None
    source: str = ""
    text_column: str = ""
    text_pair_column: str | None = None
    label_column: str | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> TextData:
        pick = lambda values: None if values is None else [values[i] for i in indices]  # noqa: E731
        return TextData(
            [self.texts[i] for i in indices], pick(self.pairs), pick(self.labels), self.source,
            self.text_column, self.text_pair_column, self.label_column,
        )

    def head(self, n: int | None) -> TextData:
        return self if n is None or n >= len(self) else self.subset(list(range(n)))


def read_table(path: str | Path):
    """A ``datasets.Dataset`` of a local CSV/TSV/JSONL/Parquet file."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {path} does not exist", details={"file": str(path)})
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(
            f"{path.name}: unsupported file type {path.suffix!r}; use CSV, TSV, JSON lines or Parquet",
            details={"file": str(path)},
        )
    if path.stat().st_size == 0:
        raise DatasetError(f"{path.name} is empty", details={"file": str(path)})
    kwargs = {}
    if path.suffix.lower() == ".tsv":
        # GLUE-style TSV: quotes are text, not field delimiters
        kwargs = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    datasets.disable_progress_bars()
    try:
        table = datasets.load_dataset(kind, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for bad files
        raise DatasetError(f"{path.name} could not be read as {kind}: {err}", details={"file": str(path)}) from err
    if len(table) == 0:
        raise DatasetError(f"{path.name} has no rows", details={"file": str(path)})
    return table


def _pick(columns: list[str], wanted: str | None, guesses: tuple[str, ...], what: str, source: str,
          required: bool) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise DatasetError(
                f"{source}: no {what} column {wanted!r}; the file has columns {', '.join(columns)}",
                details={"file": source, "column": wanted, "columns": columns},
            )
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    if required:
        raise DatasetError(
            f"{source}: cannot tell which column holds the {what}; name it (columns: {', '.join(columns)})",
            details={"file": source, "columns": columns},
        )
    return None


def table_to_text_data(
    table,
    *,
    source: str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    labels: bool = True,
) -> TextData:
    """Map a ``datasets.Dataset``'s columns to texts, pairs and labels."""
    columns = list(table.column_names)
    text_col = _pick(columns, text_column, TEXT_COLUMN_GUESSES, "text", source, required=True)
    pair_col = _pick(columns, text_pair_column, PAIR_COLUMN_GUESSES, "text pair", source, required=False)
    label_col = _pick(columns, label_column, LABEL_COLUMN_GUESSES, "label", source, required=False) if labels else None
    if max_samples is not None:
        table = table.select(range(min(max_samples, len(table))))

    def strings(col: str) -> list[str]:
        values = table[col]
        bad = [i for i, v in enumerate(values) if v is None]
        if bad:
            raise DatasetError(
                f"{source}: column {col!r} is empty in {len(bad)} row(s), first at row {bad[0] + 1}",
                details={"file": source, "column": col},
            )
        return [str(v) for v in values]

    texts = strings(text_col)
    pairs = strings(pair_col) if pair_col else None
    label_values = None
    if label_col:
        label_values = list(table[label_col])
        missing = [i for i, v in enumerate(label_values) if v is None]
        if missing:
            raise DatasetError(
                f"{source}: label column {label_col!r} is empty in {len(missing)} row(s), first at row {missing[0] + 1}",
                details={"file": source, "column": label_col},
            )
    return TextData(texts, pairs, label_values, source, text_col, pair_col, label_col)


def load_text_file(
    path: str | Path,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    labels: bool = True,
) -> TextData:
    """Read a local data file and map its columns (guessing ``text``/``sentence``/``label`` when not named).

    Raises:
        DatasetError: missing or empty file, unreadable content, a named column that does not exist.
    """
    table = read_table(path)
    return table_to_text_data(
        table, source=Path(path).name, text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, max_samples=max_samples, labels=labels,
    )


def encode_labels(data: TextData, config) -> list:
    """Labels as the model expects them: class ids (strings mapped through ``label2id``) or floats."""
    if data.labels is None:
        raise DatasetError(f"{data.source} has no label column")
    num_labels = getattr(config, "num_labels", 2)
    if num_labels == 1 or getattr(config, "problem_type", None) == "regression":
        try:
            return [float(v) for v in data.labels]
        except (TypeError, ValueError) as err:
            raise DatasetError(f"{data.source}: column {data.label_column!r} must hold numbers for a regression model") from err
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    out, unknown = [], set()
    for value in data.labels:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            unknown.add(repr(value))
            continue
        if isinstance(value, str) and value in label2id:
            out.append(label2id[value])
            continue
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            unknown.add(str(value))
            continue
        if str(as_int) != str(value).strip() and float(value) != as_int:
            unknown.add(str(value))
        elif 0 <= as_int < num_labels:
            out.append(as_int)
        else:
            unknown.add(str(value))
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in sorted(label2id.items(), key=lambda kv: kv[1]))
        raise DatasetError(
            f"{data.source}: labels {', '.join(sorted(unknown)[:5])} in column {data.label_column!r} do not match "
            f"the model's {num_labels} labels ({known})",
            details={"file": data.source, "column": data.label_column, "unknown": sorted(unknown)[:20]},
        )
    return out


def make_batches(
    tokenizer,
    data: TextData,
    *,
    task: str,
    config=None,
    batch_size: int = 32,
    max_length: int = 128,
    with_labels: bool = True,
    shuffle: bool = False,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Tokenised batches. Causal-LM batches carry ``labels`` = input ids with padding masked."""
    if len(data) == 0:
        raise DatasetError(f"{data.source or 'the data'} has no rows")
    order = list(range(len(data)))
    if shuffle:
        random.Random(seed).shuffle(order)
    labels = None
    if with_labels and task == "text-classification" and data.labels is not None:
        labels = encode_labels(data, config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [data.texts[i] for i in idx]
        pairs = [data.pairs[i] for i in idx] if data.pairs is not None else None
        enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if labels is not None:
            dtype = torch.float if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor([labels[i] for i in idx], dtype=dtype)
        elif with_labels and task == "text-generation":
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        batches.append(batch)
    return batches
